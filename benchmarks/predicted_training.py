"""Adversarial training on predicted gradients (``predicted_fgsm``) against FGSM-RS and PGD-AT on digits: cost
per epoch and robustness.

Data: scikit-learn's digits from ``sparring.data.load_data("digits")`` (1347 train / 450 test images, 8x8,
pixels in [0, 1]). Two models, each re-built from the seed before every run so each run does equal work:

* ``mlp``: ``build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(64,))``, the 64-64-10 MLP
  of the test suite and ``apgd_crosscheck.py``; the predictor reads its hidden ReLU (``net.2``, 64 units:
  10 x 65 = 650 residual features).
* ``deep_mlp``: ``hidden=(1024, 1024, 64)``: the same 64-unit layer before the head (``net.6``, same
  predictor size) behind two wide layers, so the attack's backward pass costs far more than the
  predictor: the regime in which prediction can save time.

Every method trains with ``sparring.train.Trainer`` for the same 15 epochs (batch 64, Adam lr 3e-3, no
weight decay, cyclic LR: the demo's digits settings; no validation pass) at L∞ ε = 0.2 (the demo's
digits budget):

* ``standard``: clean cross-entropy (``objective: standard``).
* ``fgsm_rs``: FGSM from a random start, α = 1.25 ε (``objective: fgsm_rs``, Wong et al. 2020).
* ``pgd_at``: PGD-10, α = ε/4, random start, last iterate (``objective: pgd_at``, Madry et al. 2018).
* ``predicted_fgsm``: FGSM-RS on predicted gradients with the objective's defaults (layer = the input
  of the last Linear, residual features, refit every 10 steps with decay 0.5, 512 warm-up examples of
  exact FGSM-RS for the calibration).
* ``predicted_fgsm_no_refit``: the same with ``refit_every=0`` (calibrated once, never refitted): the
  ablation that shows why the refits are needed.

Cost, two ways, because timings on a shared machine move by 15-40% (and more) between runs:

* headline (``summary.<case>.time_ratio_vs_fgsm_rs``, ``epoch_ms``): **lockstep** training: per seed, all
  methods train their own model side by side, batch by batch, the order rotating every batch, each step
  (objective + backward + Adam step, the cyclic LR) timed; a method's epoch time is the mean over the
  epochs (warm-up, calibration and refits included), its ratio to FGSM-RS the ratio of total times, the
  median over seeds. Paired within milliseconds, the ratios are insensitive to the machine's drift.
* ``trainer_*``: the wall-clock time of ``Trainer.fit`` divided by the epochs, the median over seeds x
  repeats; the methods alternate round-robin in one process (the order rotates every round) after one
  1-epoch warm-up run each (``paired_ratio_vs_fgsm_rs``: the median of the per-round ratios). This is the
  cost a user sees, but runs seconds to minutes apart, so it is noisier.

A per-call breakdown on the trained ``predicted_fgsm`` model times, for
batches of 64 and interleaved per call: the exact FGSM-RS attack (forward + input-gradient backward), the
predicted one (forward + predictor), one refit (``predictor.update``: forward + backward + ridge solve),
and the training update (forward + backward with weight gradients).

Robustness, on the whole test split, of each seed's model (training is deterministic given the seed, so
every repeat trains the same model; the first is evaluated): clean accuracy, PGD-20 (α = ε/8, random
start, best iterate) and APGD-CE (100 steps) accuracy at ε = 0.2, and their per-sample worst case. For
``predicted_fgsm``: the predictor's cosine with the true gradient at every refit (measured before it;
the calibration's held-out cosine first), its epoch means, and the final predictor's cosine and sign
agreement on test points at random starts.

Run: ``OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/predicted_training.py`` (``--quick``: the mlp case,
one seed, 3 epochs, no repeats; ``--cases``, ``--seeds``, ``--repeats``, ``--epochs``). Writes
``benchmarks/results/predicted_training.json`` (``predicted_training_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import accelerate
import torch
from _common import environment, log
from torch import Tensor, nn

from sparring.attacks import APGD, FGSM, PGD
from sparring.data import load_data
from sparring.gradients import Predicted
from sparring.models import build_model
from sparring.objectives import Objective, build
from sparring.objectives.predicted_fgsm import PredictedFGSM
from sparring.threat import LinfBall
from sparring.train import TrainConfig, Trainer, lr_factor

EPS = 0.2
BATCH = 64
EPOCHS = 15
RESULTS = Path(__file__).resolve().parent / "results"
CASES: dict[str, tuple[int, ...]] = {"mlp": (64,), "deep_mlp": (1024, 1024, 64)}
DEFAULT_REPEATS = {"mlp": 3, "deep_mlp": 2}
METHODS: dict[str, dict[str, Any]] = {
    "standard": {"name": "standard"},
    "fgsm_rs": {"name": "fgsm_rs"},
    "pgd_at": {"name": "pgd_at"},
    "predicted_fgsm": {"name": "predicted_fgsm"},
    "predicted_fgsm_no_refit": {"name": "predicted_fgsm", "refit_every": 0},
}


def fresh_model(hidden: tuple[int, ...], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=hidden)


def make_objective(method: str) -> Objective:
    settings = dict(METHODS[method])
    name = settings.pop("name")
    return build(name, **settings) if name == "standard" else build(name, threat=LinfBall(eps=EPS), **settings)


def train_once(hidden: tuple[int, ...], method: str, seed: int, epochs: int, data: Any) -> dict[str, Any]:
    """One Trainer run; the model, the objective and the timing of ``fit``."""
    train, _ = data
    model = fresh_model(hidden, seed)
    objective = make_objective(method)
    config = TrainConfig(epochs=epochs, batch_size=BATCH, optimizer="adam", lr=3e-3, weight_decay=0.0,
                         schedule="cyclic", seed=seed, progress=False)
    trainer = Trainer(model=model, objective=objective, train=(train.x, train.y), config=config)
    started = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - started
    return {"model": model.eval(), "objective": objective, "history": result.history, "fit_s": seconds,
            "epoch_s": seconds / epochs}


def lockstep(hidden: tuple[int, ...], seed: int, epochs: int, data: Any) -> dict[str, list[float]]:
    """Seconds per epoch of every method, the methods training side by side batch by batch (each its own
    model, objective and optimizer; the order rotates every batch), so that their times are paired within
    milliseconds and the machine's drift cancels in the ratios. Same algorithm as the Trainer runs (Adam,
    cyclic LR, the objective's per-example loss averaged) without the Trainer around it."""
    train, _ = data
    methods, n = list(METHODS), len(train.y)
    total = epochs * -(-n // BATCH)
    state = {}
    for method in methods:
        model = fresh_model(hidden, seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor("cyclic", step / total, (), 1.0))
        state[method] = (model, make_objective(method), optimizer, schedule, torch.Generator().manual_seed(seed))
    epoch_s: dict[str, list[float]] = {m: [] for m in methods}
    for epoch in range(epochs):
        spent = dict.fromkeys(methods, 0.0)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for i, idx in enumerate(order.split(BATCH)):
            x, y = train.x[idx], train.y[idx]
            for method in methods[i % len(methods):] + methods[: i % len(methods)]:
                model, objective, optimizer, schedule, generator = state[method]
                started = time.perf_counter()
                loss = objective(model.train(), x, y, generator=generator).loss.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                spent[method] += time.perf_counter() - started
        for method in methods:
            epoch_s[method].append(spent[method])
    return epoch_s


def evaluate(model: nn.Module, data: Any, seed: int) -> dict[str, float]:
    _, test = data
    x, y, threat = test.x, test.y, LinfBall(eps=EPS)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    pgd = PGD(steps=20)(model, x, y, threat, generator=torch.Generator().manual_seed(seed)).robust
    apgd = APGD(loss="ce")(model, x, y, threat, generator=torch.Generator().manual_seed(seed)).robust
    return {"clean_accuracy": float(clean.float().mean()), "pgd20_accuracy": float(pgd.float().mean()),
            "apgd_ce_accuracy": float(apgd.float().mean()),
            "worst_case_accuracy": float((clean & pgd & apgd).float().mean())}


def predictor_record(run: dict[str, Any], data: Any, seed: int) -> dict[str, Any]:
    objective: PredictedFGSM = run["objective"]
    _, test = data
    x = LinfBall(eps=EPS).random_start(test.x, torch.Generator().manual_seed(seed))
    refits = [h for h in objective.history if h["kind"] == "refit"]
    calibration = next(h for h in objective.history if h["kind"] == "calibration")
    return {
        "layer": objective.predictor.layer if objective.predictor else None,
        "calibrated_at_step": calibration["step"], "calibration_holdout_cosine": calibration["cosine"],
        "refits": len(refits), "steps": objective.steps,
        "refit_cosine_min": min((h["cosine"] for h in refits), default=None),
        "refit_cosine_median": statistics.median(h["cosine"] for h in refits) if refits else None,
        "refit_cosine_last": refits[-1]["cosine"] if refits else None,
        "epoch_mean_cosine": [r.get("train_predictor_cosine") for r in run["history"]],
        "final_test_fidelity": objective.predictor.fidelity(run["model"], x, test.y) if objective.predictor else None,
        "history": objective.history,
    }


def step_breakdown(run: dict[str, Any], data: Any, calls: int) -> dict[str, float]:
    """Median ms per call, interleaved: exact and predicted FGSM-RS, one refit, the training update."""
    model, objective = copy.deepcopy(run["model"]), run["objective"]
    predictor = copy.deepcopy(objective.predictor)
    train, _ = data
    threat, gen = LinfBall(eps=EPS), torch.Generator().manual_seed(0)
    exact = FGSM(random_start=True, rel_step=1.25, score=False)
    predicted = FGSM(gradients=Predicted(predictor), random_start=True, rel_step=1.25, score=False)

    def update(x: Tensor, y: Tensor) -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    work = {
        "exact_fgsm_rs_attack": lambda x, y: exact(model, x, y, threat, generator=gen),
        "predicted_fgsm_attack": lambda x, y: predicted(model, x, y, threat, generator=gen),
        "refit": lambda x, y: predictor.update(model, threat.random_start(x, gen), y, decay=objective.decay),
        "training_update": update,
    }
    times: dict[str, list[float]] = {name: [] for name in work}
    for i in range(calls + 1):  # call 0 is a warm-up
        idx = torch.arange(i * BATCH, (i + 1) * BATCH) % len(train.y)
        x, y = train.x[idx], train.y[idx]
        for name, fn in work.items():
            started = time.perf_counter()
            fn(x, y)
            if i:
                times[name].append(time.perf_counter() - started)
    return {f"{name}_ms": 1e3 * statistics.median(t) for name, t in times.items()}


def run_case(case: str, seeds: list[int], repeats: int, epochs: int, data: Any, calls: int) -> dict[str, Any]:
    hidden, methods = CASES[case], list(METHODS)
    for method in methods:  # warm-up: first-call costs (allocator, accelerate) are not timed
        train_once(hidden, method, seeds[0], 1, data)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    rounds: list[dict[str, float]] = []
    evaluated: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in seeds:
        for repeat in range(repeats):
            shift = (seed * repeats + repeat) % len(methods)
            times: dict[str, float] = {}
            for method in methods[shift:] + methods[:shift]:
                run = train_once(hidden, method, seed, epochs, data)
                times[method] = run["epoch_s"]
                log(f"[{case}] seed {seed} repeat {repeat} {method}: {1e3 * run['epoch_s']:.0f} ms/epoch")
                if repeat == 0:
                    record = {"seed": seed, **evaluate(run["model"], data, seed)}
                    if method.startswith("predicted"):
                        record["predictor"] = predictor_record(run, data, seed)
                        record["state"] = run
                    evaluated[method].append(record)
                runs[method].append({"seed": seed, "repeat": repeat, "epoch_s": run["epoch_s"]})
            rounds.append(times)
    paired: dict[str, list[list[float]]] = {m: [] for m in methods}
    for seed in seeds:
        log(f"[{case}] seed {seed}: lockstep timing")
        for method, times in lockstep(hidden, seed, epochs, data).items():
            paired[method].append(times)
    base = statistics.median(r["epoch_s"] for r in runs["fgsm_rs"])
    rows = []
    for method in methods:
        evals = evaluated[method]
        row: dict[str, Any] = {
            "case": case, "method": method, "objective": make_objective(method).describe(),
            "epoch_ms_median": 1e3 * statistics.median(r["epoch_s"] for r in runs[method]),
            "epoch_ms_min": 1e3 * min(r["epoch_s"] for r in runs[method]),
            "time_ratio_vs_fgsm_rs": statistics.median(r["epoch_s"] for r in runs[method]) / base,
            "paired_ratio_vs_fgsm_rs": statistics.median(r[method] / r["fgsm_rs"] for r in rounds),
            "runs": runs[method],
            # per seed: the mean epoch (warm-up, calibration and refits included); ratio: median over seeds
            "lockstep_epoch_ms": 1e3 * statistics.mean(sum(t) / len(t) for t in paired[method]),
            "lockstep_time_ratio_vs_fgsm_rs": statistics.median(
                sum(t) / sum(b) for t, b in zip(paired[method], paired["fgsm_rs"], strict=True)),
            "lockstep_epoch_s": paired[method],
        }
        for key in ("clean_accuracy", "pgd20_accuracy", "apgd_ce_accuracy", "worst_case_accuracy"):
            row[key] = statistics.mean(e[key] for e in evals)
            row[f"{key}_per_seed"] = [e[key] for e in evals]
        if method.startswith("predicted"):
            row["predictor"] = [e["predictor"] for e in evals]
        rows.append(row)
    first = evaluated["predicted_fgsm"][0]["state"]
    return {"rows": rows, "step_breakdown": step_breakdown(first, data, calls)}


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for case, result in results.items():
        by = {r["method"]: r for r in result["rows"]}
        pred = by["predicted_fgsm"]["predictor"]
        summary[case] = {
            "time_ratio_vs_fgsm_rs": {m: r["lockstep_time_ratio_vs_fgsm_rs"] for m, r in by.items()},
            "epoch_ms": {m: r["lockstep_epoch_ms"] for m, r in by.items()},
            "trainer_time_ratio_vs_fgsm_rs": {m: r["time_ratio_vs_fgsm_rs"] for m, r in by.items()},
            "trainer_epoch_ms": {m: r["epoch_ms_median"] for m, r in by.items()},
            "clean_accuracy": {m: r["clean_accuracy"] for m, r in by.items()},
            "pgd20_accuracy": {m: r["pgd20_accuracy"] for m, r in by.items()},
            "apgd_ce_accuracy": {m: r["apgd_ce_accuracy"] for m, r in by.items()},
            "worst_case_accuracy": {m: r["worst_case_accuracy"] for m, r in by.items()},
            "predictor_refit_cosine_median": statistics.mean(p["refit_cosine_median"] for p in pred),
            "predictor_refit_cosine_min": min(p["refit_cosine_min"] for p in pred),
            "predictor_final_test_cosine": statistics.mean(p["final_test_fidelity"]["cosine"] for p in pred),
            "step_breakdown_ms": result["step_breakdown"],
        }
    return summary


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print("time: lockstep ms/epoch and ratio to FGSM-RS (the headline); Trainer runs' median ms/epoch, ratio and "
          "median per-round ratio")
    header = (f"{'case':<10}{'method':<26}{'ms/epoch':>10}{'vs FGSM-RS':>11}{'Trainer ms':>11}{'ratio':>7}"
              f"{'paired':>8}{'clean':>7}{'PGD-20':>8}{'APGD-CE':>9}{'worst':>7}")
    print(header)
    print("-" * len(header))
    for case, result in results.items():
        for r in result["rows"]:
            print(f"{case:<10}{r['method']:<26}{r['lockstep_epoch_ms']:>10.1f}"
                  f"{r['lockstep_time_ratio_vs_fgsm_rs']:>11.3f}{r['epoch_ms_median']:>11.1f}"
                  f"{r['time_ratio_vs_fgsm_rs']:>7.3f}{r['paired_ratio_vs_fgsm_rs']:>8.3f}{r['clean_accuracy']:>7.3f}"
                  f"{r['pgd20_accuracy']:>8.3f}{r['apgd_ce_accuracy']:>9.3f}{r['worst_case_accuracy']:>7.3f}")
    print()
    for case, result in results.items():
        for r in result["rows"]:
            for p in r.get("predictor", []):
                epochs = " ".join(f"{c:.2f}" if c is not None else "-" for c in p["epoch_mean_cosine"])
                fid = p["final_test_fidelity"] or {}
                refit_min = "-" if p["refit_cosine_min"] is None else f"{p['refit_cosine_min']:.2f}"
                print(f"{case} {r['method']} (layer {p['layer']}): calibrated at step {p['calibrated_at_step']} "
                      f"(held-out cosine {p['calibration_holdout_cosine']:.2f}), {p['refits']} refits, refit "
                      f"cosine min {refit_min}; test cosine {fid.get('cosine', float('nan')):.2f}, sign agreement "
                      f"{fid.get('sign_agreement', float('nan')):.2f}\n    epoch-mean cosine: {epochs}")
        b = result["step_breakdown"]
        print(f"{case} per call (batch {BATCH}, ms): " + ", ".join(f"{k.removesuffix('_ms')} {v:.2f}"
                                                                   for k, v in b.items()))
        print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per seed (default: mlp 3, deep_mlp 2)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--calls", type=int, default=30, help="calls per item of the per-call breakdown")
    parser.add_argument("--quick", action="store_true", help="smoke run: mlp, one seed, 3 epochs, one repeat")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.cases, args.seeds, args.repeats, args.epochs, args.calls = ["mlp"], args.seeds[:1], 1, 3, 5
    data = load_data("digits")
    started = time.perf_counter()
    results = {
        case: run_case(case, args.seeds, args.repeats or DEFAULT_REPEATS[case], args.epochs, data, args.calls)
        for case in args.cases
    }
    report = {
        "summary": summarize(results),
        "environment": environment(accelerate=accelerate.__version__),
        "settings": {
            "data": "digits (sparring.data.load_data, 1347 train / 450 test)",
            "models": {case: f"build_model('mlp', hidden={hidden})" for case, hidden in CASES.items()},
            "threat": f"Linf eps {EPS}, box [0, 1]", "epochs": args.epochs, "batch_size": BATCH,
            "optimizer": "Adam lr 3e-3, no weight decay, cyclic LR", "seeds": args.seeds,
            "repeats": {case: args.repeats or DEFAULT_REPEATS[case] for case in args.cases},
            "evaluation": "test split: clean, PGD-20 (alpha eps/8, random start, best iterate), APGD-CE 100 steps",
            "statistic": "time (headline): lockstep, the methods trained side by side batch by batch with rotating "
                         "order, mean epoch per seed, ratio to FGSM-RS = median over seeds of the ratio of totals; "
                         "trainer_*: median over seeds x repeats of Trainer.fit time / epochs, methods round-robin "
                         "with rotating order after one 1-epoch warm-up each; accuracies: mean over seeds",
            "quick": args.quick, "wall_s": time.perf_counter() - started,
        },
        "rows": [row for result in results.values() for row in result["rows"]],
    }
    output = args.output or RESULTS / ("predicted_training_quick.json" if args.quick else "predicted_training.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
