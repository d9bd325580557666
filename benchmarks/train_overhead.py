"""Trainer overhead: one PGD-AT epoch through ``sparring.train.Trainer`` vs a minimal hand-written loop.

Both train the same model (``build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)``, re-built
from the same seed before every run so each run does equal work) on the same data (the train split of
scikit-learn's digits from ``sparring.data.load_data("digits")``, batch 64, shuffled), with the same
optimizer (SGD, lr 0.05, momentum 0.9, weight decay 5e-4, constant LR) for one epoch of PGD adversarial
training (L∞ ε = 0.2, PGD-10, α = ε/4, random start, attack in eval mode, update in train mode):

* ``sparring``: ``Trainer(model=..., objective=PGDAT(threat=LinfBall(eps=0.2)),`` (its default attack is
  Madry's: PGD-10 on the last iterate, unscored, like the minimal loop),
  train=(x, y), config=TrainConfig(epochs=1, batch_size=64, ..., progress=False)).fit()`` with no
  validation set and ``out_dir=None`` (nothing written). The timed region includes building the Trainer
  (Accelerator, DataLoader, ``accelerator.prepare``).
* ``sparring_checkpoints``: the same with ``out_dir`` set (a fresh temporary folder per run), so the epoch
  also writes ``metrics.jsonl`` and an atomic safetensors checkpoint.
* ``minimal``: the textbook loop on manually shuffled index batches (random start, 10 sign steps with
  projection and clamp under ``model.eval()``, then ``model.train()``, forward, backward, SGD step),
  accumulating the epoch's loss and accuracy like the Trainer does.
* ``minimal_sparring_objective``: the minimal loop calling sparring's ``PGDAT`` objective for the inner
  step, which splits the overhead into the objective's part and the Trainer's part.

Work that sparring does by design and the minimal loop does not: its PGD scores every iterate and keeps
the best one per sample (a few ``torch.where`` per step) and scores the last iterate with one more
no-grad forward (11 forwards instead of 10); each attack call checks its inputs and enters the restoring
context; the Trainer goes through accelerate (DataLoader with per-sample collation, optimizer and
scheduler wrappers) and accumulates the attack-success metric. All of it counts as overhead here.

The implementations alternate round-robin in one process (the order rotates every round) after one
warm-up run each; every figure is the median over ``--repeats`` rounds (also reported: the best run and
the median of per-round ratios). A per-step breakdown follows: hand-written step, + the scoring forward,
PGDAT with ``keep_best=False``, PGDAT, each training its own model and interleaved per batch, so that
their ratios are paired within a fraction of a second. Threads are torch's default (``--threads`` to pin
them; on a shared machine ``--threads 1`` is far less sensitive to other processes). ``--profile`` prints
cProfile's top functions of one Trainer epoch instead.

Run: ``python benchmarks/train_overhead.py`` (``--quick`` for 2 rounds; ``--repeats N``).
Writes ``benchmarks/results/train_overhead.json`` (``train_overhead_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import accelerate
import torch
import torch.nn.functional as F
from _common import environment, minimal_pgd
from torch import Tensor, nn

from sparring.attacks import PGD
from sparring.data import load_data
from sparring.models import build_model
from sparring.objectives.pgd_at import PGDAT
from sparring.threat import LinfBall
from sparring.train import TrainConfig, Trainer

EPS = 0.2
STEPS = 10
ALPHA = 2.5 / STEPS * EPS  # PGD's default step (rel_step 2.5 / steps = 0.25 ε)
BATCH = 64
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
RESULTS = Path(__file__).resolve().parent / "results"


def fresh_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)


def train_config(seed: int) -> TrainConfig:
    return TrainConfig(
        epochs=1, batch_size=BATCH, optimizer="sgd", lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
        schedule="constant", cpu=True, seed=seed, progress=False,
    )


# ------------------------------------------------------------------------------------ implementations
def run_sparring(x: Tensor, y: Tensor, seed: int, *, checkpoints: bool = False) -> dict[str, Any]:
    model = fresh_model(seed)
    out_dir = Path(tempfile.mkdtemp(prefix="sparring-bench-")) if checkpoints else None
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        trainer = Trainer(
            model=model, objective=PGDAT(threat=LinfBall(eps=EPS), attack=madry_pgd()), train=(x, y),
            val=None, config=train_config(seed), out_dir=out_dir,
        )
        t1 = time.perf_counter()
        result = trainer.fit()
        t2, c2 = time.perf_counter(), time.process_time()
    finally:
        if out_dir is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
    record = result.history[-1]
    return {
        "total": t2 - t0, "setup": t1 - t0, "fit": t2 - t1, "cpu": c2 - c0,
        "train_loss": record["train_loss"], "train_accuracy": record["train_accuracy"],
    }


def run_sparring_checkpoints(x: Tensor, y: Tensor, seed: int) -> dict[str, Any]:
    return run_sparring(x, y, seed, checkpoints=True)


def run_minimal(x: Tensor, y: Tensor, seed: int) -> dict[str, Any]:
    model = fresh_model(seed)
    c0, t0 = time.process_time(), time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(seed)
    t1 = time.perf_counter()
    loss_sum, correct = torch.zeros(()), torch.zeros(())
    for idx in torch.randperm(len(y), generator=gen).split(BATCH):
        xb, yb = x[idx], y[idx]
        model.eval()
        x_adv = minimal_pgd(model, xb, yb, eps=EPS, alpha=ALPHA, steps=STEPS, gen=gen)
        model.train()
        logits = model(x_adv)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(yb)
        correct += (logits.detach().argmax(1) == yb).sum()
    train_loss, train_accuracy = float(loss_sum) / len(y), float(correct) / len(y)
    t2, c2 = time.perf_counter(), time.process_time()
    return {
        "total": t2 - t0, "setup": t1 - t0, "fit": t2 - t1, "cpu": c2 - c0,
        "train_loss": train_loss, "train_accuracy": train_accuracy,
    }


def run_minimal_objective(x: Tensor, y: Tensor, seed: int) -> dict[str, Any]:
    """The minimal loop with sparring's objective as its inner step: separates the cost of the attack /
    objective from the cost of the Trainer around it."""
    model = fresh_model(seed)
    c0, t0 = time.process_time(), time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    objective = PGDAT(threat=LinfBall(eps=EPS), attack=madry_pgd())
    gen = torch.Generator().manual_seed(seed)
    t1 = time.perf_counter()
    model.train()
    loss_sum, correct = torch.zeros(()), torch.zeros(())
    for idx in torch.randperm(len(y), generator=gen).split(BATCH):
        xb, yb = x[idx], y[idx]
        out = objective(model, xb, yb, generator=gen)
        loss = out.loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(yb)
        correct += (out.logits.detach().argmax(1) == yb).sum()
    train_loss, train_accuracy = float(loss_sum) / len(y), float(correct) / len(y)
    t2, c2 = time.perf_counter(), time.process_time()
    return {
        "total": t2 - t0, "setup": t1 - t0, "fit": t2 - t1, "cpu": c2 - c0,
        "train_loss": train_loss, "train_accuracy": train_accuracy,
    }


IMPLEMENTATIONS: dict[str, Callable[[Tensor, Tensor, int], dict[str, Any]]] = {
    "minimal": run_minimal, "minimal_sparring_objective": run_minimal_objective, "sparring": run_sparring,
    "sparring_checkpoints": run_sparring_checkpoints,
}


# ------------------------------------------------------------------------------------------ measuring
def measure(x: Tensor, y: Tensor, repeats: int, seed: int) -> list[dict[str, Any]]:
    """Round-robin the implementations (rotating the order each round) after one warm-up run each."""
    names = list(IMPLEMENTATIONS)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for name in names:
        IMPLEMENTATIONS[name](x, y, seed)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            run = IMPLEMENTATIONS[name](x, y, seed)
            runs[name].append(run)
            line = f"  round {r + 1}/{repeats} {name:<28}{run['total']:8.3f} s  cpu {run['cpu']:7.3f} s"
            print(line, file=sys.stderr)
    rows = []
    for name in names:
        first = runs[name][0]
        for run in runs[name][1:]:  # fixed seeds: every run of an implementation does the same thing
            if (run["train_loss"], run["train_accuracy"]) != (first["train_loss"], first["train_accuracy"]):
                raise RuntimeError(f"{name}: training result changed between repeats with a fixed seed")
        rows.append({
            "implementation": name,
            "median_s": statistics.median(run["total"] for run in runs[name]),
            "min_s": min(run["total"] for run in runs[name]),
            "fit_median_s": statistics.median(run["fit"] for run in runs[name]),
            "setup_median_s": statistics.median(run["setup"] for run in runs[name]),
            "cpu_median_s": statistics.median(run["cpu"] for run in runs[name]),
            "times_s": [run["total"] for run in runs[name]],
            "cpu_times_s": [run["cpu"] for run in runs[name]],
            "train_loss": first["train_loss"], "train_accuracy": first["train_accuracy"],
            "samples": len(y), "batches": -(-len(y) // BATCH), "batch_size": BATCH,
        })
    return rows


def paired_ratios(rows: list[dict[str, Any]], name: str) -> list[float]:
    """Per-round ratio ``name / minimal`` (rounds are adjacent in time, so these cancel slow drifts)."""
    by = {r["implementation"]: r for r in rows}
    return [a / b for a, b in zip(by[name]["times_s"], by["minimal"]["times_s"], strict=True)]


# ---------------------------------------------------------------------------------- step breakdown
Step = Callable[[nn.Module, torch.optim.Optimizer, Tensor, Tensor, torch.Generator], None]


def _update(model: nn.Module, opt: torch.optim.Optimizer, x_adv: Tensor, yb: Tensor) -> None:
    loss = F.cross_entropy(model(x_adv), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _step_minimal(scoring_forward: bool) -> Step:
    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor, gen: torch.Generator) -> None:
        model.eval()
        x_adv = minimal_pgd(model, xb, yb, eps=EPS, alpha=ALPHA, steps=STEPS, gen=gen)
        if scoring_forward:  # what sparring's PGD adds to score its last iterate
            with torch.no_grad():
                model(x_adv)
        model.train()
        _update(model, opt, x_adv, yb)

    return step


def madry_pgd() -> PGD:
    """PGDAT's default inner attack: PGD-``STEPS``, α = ε/4, random start, last iterate, no scoring forward."""
    return PGD(steps=STEPS, keep_best=False, score=False)


def _step_objective(keep_best: bool) -> Step:
    # keep_best=True: the scored best-iterate variant; False: PGDAT's default (last iterate, unscored)
    attack = PGD(steps=STEPS) if keep_best else madry_pgd()
    objective = PGDAT(threat=LinfBall(eps=EPS), attack=attack)

    def step(model: nn.Module, opt: torch.optim.Optimizer, xb: Tensor, yb: Tensor, gen: torch.Generator) -> None:
        loss = objective(model, xb, yb, generator=gen).loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


STEP_VARIANTS: dict[str, Step] = {
    "minimal": _step_minimal(scoring_forward=False),
    "minimal_plus_scoring_forward": _step_minimal(scoring_forward=True),
    "pgdat_keep_best_off": _step_objective(keep_best=False),
    "pgdat": _step_objective(keep_best=True),
}


def step_breakdown(x: Tensor, y: Tensor, seed: int, epochs: int) -> list[dict[str, Any]]:
    """Where the objective's cost goes, timed per training step (attack + update) rather than per epoch:
    each variant trains its own fresh model; for every batch all variants run back to back (order
    rotating), so their per-step ratios are paired within ~0.5 s and robust to the machine's drift."""
    state = {}
    for name in STEP_VARIANTS:
        model = fresh_model(seed)
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        state[name] = (model, opt, torch.Generator().manual_seed(seed))
    names = list(STEP_VARIANTS)
    times: dict[str, list[float]] = {n: [] for n in names}
    order = torch.Generator().manual_seed(seed)
    for epoch in range(epochs + 1):  # epoch 0: warm-up, not recorded
        for i, idx in enumerate(torch.randperm(len(y), generator=order).split(BATCH)):
            xb, yb = x[idx], y[idx]
            for name in names[i % len(names):] + names[: i % len(names)]:
                model, opt, gen = state[name]
                t0 = time.perf_counter()
                STEP_VARIANTS[name](model, opt, xb, yb, gen)
                if epoch > 0:
                    times[name].append(time.perf_counter() - t0)
    base = times["minimal"]
    return [
        {
            "variant": name, "steps": len(times[name]), "median_ms": 1e3 * statistics.median(times[name]),
            "ratio_vs_minimal": statistics.median(times[name]) / statistics.median(base),
            "paired_ratio_vs_minimal": statistics.median(a / b for a, b in zip(times[name], base, strict=True)),
        }
        for name in names
    ]


def profile_epoch(x: Tensor, y: Tensor, seed: int, top: int) -> None:
    run_sparring(x, y, seed)  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    run_sparring(x, y, seed)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)




def print_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    header = (
        f"{'implementation':<28}{'median s':>10}{'min s':>8}{'setup s':>10}{'ratio':>8}"
        f"{'cpu s':>9}{'cpu ratio':>11}{'loss':>9}{'acc':>8}"
    )
    print(header)
    print("-" * len(header))
    base = next(r for r in rows if r["implementation"] == "minimal")
    for r in rows:
        print(
            f"{r['implementation']:<28}{r['median_s']:>10.3f}{r['min_s']:>8.3f}{r['setup_median_s']:>10.4f}"
            f"{r['median_s'] / base['median_s']:>8.3f}{r['cpu_median_s']:>9.3f}"
            f"{r['cpu_median_s'] / base['cpu_median_s']:>11.3f}{r['train_loss']:>9.4f}{r['train_accuracy']:>8.4f}"
        )
    print()
    print(
        f"Trainer / minimal: {summary['time_ratio_vs_minimal']:.3f} "
        f"(median of per-round ratios {summary['paired_ratio_median']['sparring']:.3f}); "
        f"with checkpoints: {summary['time_ratio_vs_minimal_with_checkpoints']:.3f} "
        f"(paired {summary['paired_ratio_median']['sparring_checkpoints']:.3f})"
    )
    print(
        f"  best-of-repeats ratios: {summary['min_time_ratio_vs_minimal']:.3f}, "
        f"with checkpoints {summary['min_time_ratio_vs_minimal_with_checkpoints']:.3f}"
    )
    b = summary["breakdown"]
    print(
        f"  = objective (minimal loop with sparring's PGDAT) {b['objective_vs_minimal']:.3f} "
        f"x Trainer around it {b['trainer_vs_minimal_with_objective']:.3f}; "
        f"CPU time: {b['objective_vs_minimal_cpu']:.3f} x {b['trainer_vs_minimal_with_objective_cpu']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds")
    parser.add_argument("--seed", type=int, default=0, help="model, shuffling and random-start seed")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None, help="where to write the JSON")
    parser.add_argument(
        "--breakdown-epochs", type=int, default=None,
        help="epochs of the per-step breakdown (default 2, 1 with --quick; 0 skips it)",
    )
    parser.add_argument("--profile", action="store_true", help="print cProfile of one Trainer epoch and exit")
    parser.add_argument("--profile-top", type=int, default=30, help="rows of the --profile listing")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    if repeats < 1:
        parser.error("--repeats must be >= 1")

    train, _ = load_data("digits")
    x, y = train.x, train.y
    if args.profile:
        profile_epoch(x, y, args.seed, args.profile_top)
        return 0

    rows = measure(x, y, repeats, args.seed)
    breakdown_epochs = args.breakdown_epochs if args.breakdown_epochs is not None else (1 if args.quick else 2)
    steps = step_breakdown(x, y, args.seed, breakdown_epochs) if breakdown_epochs > 0 else []
    by = {r["implementation"]: r for r in rows}
    base, obj = by["minimal"]["median_s"], by["minimal_sparring_objective"]
    summary = {
        "time_ratio_vs_minimal": by["sparring"]["median_s"] / base,
        "time_ratio_vs_minimal_with_checkpoints": by["sparring_checkpoints"]["median_s"] / base,
        "fit_time_ratio_vs_minimal": by["sparring"]["fit_median_s"] / by["minimal"]["fit_median_s"],
        "cpu_time_ratio_vs_minimal": by["sparring"]["cpu_median_s"] / by["minimal"]["cpu_median_s"],
        "cpu_time_ratio_vs_minimal_with_checkpoints": (
            by["sparring_checkpoints"]["cpu_median_s"] / by["minimal"]["cpu_median_s"]
        ),
        "min_time_ratio_vs_minimal": by["sparring"]["min_s"] / by["minimal"]["min_s"],
        "min_time_ratio_vs_minimal_with_checkpoints": by["sparring_checkpoints"]["min_s"] / by["minimal"]["min_s"],
        "paired_ratio_median": {
            name: statistics.median(paired_ratios(rows, name))
            for name in ("minimal_sparring_objective", "sparring", "sparring_checkpoints")
        },
        "breakdown": {
            "objective_vs_minimal": obj["median_s"] / base,
            "trainer_vs_minimal_with_objective": by["sparring"]["median_s"] / obj["median_s"],
            "objective_vs_minimal_cpu": obj["cpu_median_s"] / by["minimal"]["cpu_median_s"],
            "trainer_vs_minimal_with_objective_cpu": by["sparring"]["cpu_median_s"] / obj["cpu_median_s"],
        },
        "step_breakdown_paired_ratio_vs_minimal": {s["variant"]: s["paired_ratio_vs_minimal"] for s in steps},
        "median_s": {name: row["median_s"] for name, row in by.items()},
        "target_ratio": 1.10,
    }
    report = {
        "summary": summary,
        "environment": environment(accelerate=accelerate.__version__),
        "settings": {
            "task": "one epoch of PGD-AT on the digits train split",
            "model": "build_model('small_cnn', input_shape=(1, 8, 8), num_classes=10), fresh from the seed per run",
            "attack": f"Linf eps {EPS}, PGD-{STEPS}, alpha {ALPHA:g}, random start, eval mode",
            "optimizer": f"SGD lr {LR}, momentum {MOMENTUM}, weight decay {WEIGHT_DECAY}, constant LR",
            "batch_size": BATCH, "repeats": repeats, "quick": args.quick, "seed": args.seed,
            "statistic": "median over round-robin repeats after one warm-up run each; total = setup + fit "
            "(min_s: best of the repeats; paired: median of the per-round ratios)",
        },
        "rows": rows,
        "step_breakdown": steps,
    }
    output = args.output or RESULTS / ("train_overhead_quick.json" if args.quick else "train_overhead.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows, summary)
    if steps:
        print(f"\nper training step (attack + update), {steps[0]['steps']} steps each, interleaved per batch:")
        print(f"{'variant':<32}{'median ms':>10}{'ratio':>8}{'paired':>8}")
        for row in steps:
            print(
                f"{row['variant']:<32}{row['median_ms']:>10.2f}{row['ratio_vs_minimal']:>8.3f}"
                f"{row['paired_ratio_vs_minimal']:>8.3f}"
            )
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
