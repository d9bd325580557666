"""Long-tailed adversarial training: PGD-AT, TRADES, AT-BSL, PGD-AT + RobustLT, MCAT, RAAT and PGD-AT + DRO on
long-tailed digits and long-tailed MNIST-1D at imbalance ratios 10 and 50.

Data (both offline, both built in code):

* ``digits``: scikit-learn's digits through ``sparring.data.load_data("digits")``: 1347 train / 450 test
  8x8 images in [0, 1]; L∞ ε = 0.2 (the demo's digits budget).
* ``mnist1d``: ``load_data("mnist1d")``, the PyPI package's ``make_dataset`` (5000 signals, its 80 / 20
  split, seed 42), min-max scaled to [0, 1]; L∞ ε = 0.03 (a third of the signal's standard deviation).

The training split is made long-tailed with the exponential profile (``sparring.data.long_tail``: class 0
the head, class 9 the tail, n_0 / n_9 = IR), drawn under the run's seed; the test split stays balanced.

Models, initialised from the seed: on digits an MLP (``build_model("mlp", hidden=(256, 256))``); on
MNIST-1D the 1-D CNN of its paper (``build_model("cnn1d")``, ~95% clean where an MLP gets ~70%) behind a
``Normalize`` layer with the balanced training split's mean and std (ε stays in [0, 1] units). Every method
trains with ``sparring.train.Trainer`` for the same epochs (default 30, batch 64, SGD lr 0.05 momentum 0.9,
wd 5e-4, cosine schedule, no validation pass), attacking with PGD-10 (α = ε/4, random start, last
iterate) at the evaluation ε:

* ``pgd_at``: Madry et al.; ``trades``: β = 6, its own 10-step KL maximizer; ``at_bsl``: Balanced Softmax,
  τ_b = 1 (counts from the trainer); ``robustlt``: RobustLT over PGD-AT, the paper's CIFAR-10-LT setting
  α = 0.3, β = 0.8;
  ``mcat``: MCAT's defaults; ``raat``: RAAT's defaults with noise views (``augment: noise``; the default
  1-pixel crops of 8x8 digits cost an MLP most of its accuracy); ``dro``: the WARDEN-style KL DRO wrapper
  over PGD-AT with its defaults; ``awp`` (not in the default list): AWP over PGD-AT, γ = 5e-3.

Evaluation on the whole balanced test split with the ``standard`` suite (APGD-CE → APGD-T → Square, per
sample worst case) at the training ε: balanced clean accuracy, balanced robust accuracy and tail robust
accuracy (the rarest third of the classes by training count: 7, 8, 9), plus head robust accuracy.
``mean ± std`` over seeds (population std). Nothing was tuned on the test split: ε, epochs and the
optimizer were chosen from PGD-AT's *training* accuracy on one IR-10 split (ε so that it lands near 50-65%
adversarial training accuracy, where methods can differ); the methods run at their papers' defaults.

Run: ``python benchmarks/longtail.py --jobs 2`` (``--quick``: one seed, digits IR 50, 5 epochs; also
``--datasets``, ``--ratios``, ``--seeds``, ``--methods``, ``--epochs``, ``--eps-scale``). Writes
``benchmarks/results/longtail.json`` and ``benchmarks/results/longtail.md`` (``*_quick`` with ``--quick``,
``*_eps0.5`` with ``--eps-scale 0.5``: the same study at half the budgets, where the tail classes keep
some robustness).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from _common import environment, log

from sparring.attacks import PGD
from sparring.data import load_data, long_tail
from sparring.evaluate import evaluate, long_tail_summary
from sparring.models import build_model, with_normalization
from sparring.objectives import Objective, build
from sparring.threat import LinfBall
from sparring.train import TrainConfig, Trainer

RESULTS = Path(__file__).resolve().parent / "results"
EPS = {"digits": 0.2, "mnist1d": 0.03}
METHODS = ("pgd_at", "trades", "at_bsl", "robustlt", "mcat", "raat", "dro", "awp")
DEFAULT_METHODS = METHODS[:-1]
LABELS = {
    "pgd_at": "PGD-AT", "trades": "TRADES", "at_bsl": "AT-BSL", "robustlt": "PGD-AT + RobustLT",
    "mcat": "MCAT", "raat": "RAAT", "dro": "PGD-AT + DRO",
    "awp": "PGD-AT + AWP",
}


def make_objective(method: str, eps: float) -> Objective:
    """The method at its defaults, with the shared training threat and PGD-10 inner attack."""
    threat = LinfBall(eps=eps)

    def attack() -> PGD:
        return PGD(steps=10, keep_best=False, score=False)

    if method == "trades":  # its own KL maximizer: 10 steps of 0.007/0.031 ε ≈ ε/4
        return build("trades", threat=threat)
    if method in ("pgd_at", "at_bsl", "mcat"):
        return build(method, threat=threat, attack=attack())
    if method == "raat":  # views by noise: neither an MLP on 8x8 digits nor MNIST-1D is shift-invariant
        return build("raat", threat=threat, attack=attack(), augment="noise")
    if method == "robustlt":
        return build("robustlt", base=build("pgd_at", threat=threat, attack=attack()), alpha=0.3, beta=0.8)
    if method == "awp":
        return build("awp", base=build("pgd_at", threat=threat, attack=attack()))
    if method == "dro":
        return build("dro", base=build("pgd_at", threat=threat, attack=attack()))
    raise ValueError(f"unknown method {method!r}")


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one (data set, IR, seed, method); one thread, so jobs run side by side."""
    torch.set_num_threads(1)
    dataset, ratio, seed, method, epochs = job["dataset"], job["ratio"], job["seed"], job["method"], job["epochs"]
    eps = EPS[dataset] * job.get("eps_scale", 1.0)
    balanced, test = load_data(dataset)
    train = long_tail(balanced, imbalance_ratio=ratio, seed=seed)
    torch.manual_seed(seed)
    if dataset == "mnist1d":
        model = with_normalization(build_model("cnn1d", input_shape=train.input_shape, num_classes=10),
                                   float(balanced.x.mean()), float(balanced.x.std()))
    else:
        model = build_model("mlp", input_shape=train.input_shape, num_classes=10, hidden=(256, 256))
    objective = make_objective(method, eps)
    config = TrainConfig(
        epochs=epochs, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine", seed=seed,
        progress=False,
    )
    started = time.perf_counter()
    trainer = Trainer(model=model, objective=objective, train=(train.x, train.y), config=config, num_classes=10)
    history = trainer.fit().history
    train_s = time.perf_counter() - started
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    evaluation = evaluate(model, test, LinfBall(eps=eps), suite="standard", seed=seed, eps_curve=[])
    summary = evaluation.to_dict()
    groups = long_tail_summary(summary["per_class"], train.class_counts().tolist())
    return {
        **{k: job[k] for k in ("dataset", "ratio", "seed", "method")},
        "eps": eps,
        "train_counts": train.class_counts().tolist(),
        "balanced_clean": summary["balanced_accuracy"]["clean"],
        "balanced_robust": summary["balanced_accuracy"]["robust"],
        "tail_robust": groups["tail"]["robust"],
        "tail_clean": groups["tail"]["clean"],
        "head_robust": groups["head"]["robust"],
        "robust": summary["robust_accuracy"]["worst_case"],
        "trustworthy": summary["trustworthy"],
        "per_class_robust": [row["robust_accuracy"] for row in summary["per_class"]],
        "final_train_loss": history[-1]["train_loss"],
        "train_s": train_s,
        "eval_s": evaluation.time_s,
    }


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(r["dataset"], r["ratio"], r["method"]) for r in runs},
                  key=lambda k: (k[0], k[1], METHODS.index(k[2])))
    for dataset, ratio, method in keys:
        group = [r for r in runs if (r["dataset"], r["ratio"], r["method"]) == (dataset, ratio, method)]
        row: dict[str, Any] = {"dataset": dataset, "ratio": ratio, "method": method, "seeds": len(group)}
        for metric in ("balanced_clean", "balanced_robust", "tail_robust", "head_robust"):
            values = [r[metric] for r in group]
            row[metric] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}
        row["train_s"] = statistics.median(r["train_s"] for r in group)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| data | IR | method | balanced clean | balanced robust | tail robust | head robust | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"{100 * row[m]['mean']:.1f} ± {100 * row[m]['std']:.1f}"
                 for m in ("balanced_clean", "balanced_robust", "tail_robust", "head_robust")]
        lines.append(f"| {row['dataset']} | {row['ratio']:g} | {LABELS[row['method']]} | " + " | ".join(cells)
                     + f" | {row['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"], choices=sorted(EPS))
    parser.add_argument("--ratios", nargs="+", type=float, default=[10.0, 50.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes, one thread each")
    parser.add_argument("--eps-scale", type=float, default=1.0,
                        help="multiply every data set's ε (results go to longtail_eps<scale>.json)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.ratios, args.seeds, args.epochs = ["digits"], [50.0], [0], 5
    jobs = [
        {"dataset": d, "ratio": r, "seed": s, "method": m, "epochs": args.epochs, "eps_scale": args.eps_scale}
        for d in args.datasets for r in args.ratios for s in args.seeds for m in args.methods
    ]
    log(f"{len(jobs)} runs on {args.jobs} process(es)")
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    # Longest first (MCAT's latent search, MNIST-1D's bigger split), so the last jobs are short ones.
    jobs.sort(key=lambda j: (j["method"] != "mcat", j["dataset"] != "mnist1d"))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for future in as_completed([pool.submit(run_one, job) for job in jobs]):
            result = future.result()
            runs.append(result)
            log(f"[{len(runs)}/{len(jobs)}] {result['dataset']} IR {result['ratio']:g} seed {result['seed']} "
                f"{result['method']}: clean {result['balanced_clean']:.3f} robust {result['balanced_robust']:.3f} "
                f"tail {result['tail_robust']:.3f} ({result['train_s']:.0f}+{result['eval_s']:.0f} s)")
    rows = aggregate(runs)
    table = markdown(rows)
    suffix = ("_quick" if args.quick else "") + (f"_eps{args.eps_scale:g}" if args.eps_scale != 1.0 else "")
    RESULTS.mkdir(exist_ok=True)
    record = {
        "benchmark": "longtail",
        "environment": environment(),
        "settings": {**vars(args), "eps": {k: v * args.eps_scale for k, v in EPS.items()}, "suite": "standard",
                     "model": {"digits": "mlp (256, 256)", "mnist1d": "normalize + cnn1d (width 32)"},
                     "optimizer": "sgd lr 0.05 m 0.9 wd 5e-4 cosine, batch 64", "inner_attack": "PGD-10, α = ε/4"},
        "summary": rows,
        "runs": runs,
        "wall_s": time.perf_counter() - started,
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    (RESULTS / f"longtail{suffix}.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / f"longtail{suffix}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
