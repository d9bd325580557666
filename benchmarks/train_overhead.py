"""Trainer overhead: one PGD-AT epoch through ``sparring.train.Trainer`` vs a minimal hand-written loop.

Both train the same model (``build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)``, re-built
from the same seed before every run so each run does equal work) on the same data (the train split of
scikit-learn's digits from ``sparring.data.load_data("digits")``, batch 64, shuffled), with the same
optimizer (SGD, lr 0.05, momentum 0.9, weight decay 5e-4, constant LR) for one epoch of PGD adversarial
training (L∞ ε = 0.2, PGD-10, α = ε/4, random start, attack in eval mode, update in train mode):

* ``sparring``: ``Trainer(model=..., objective=PGDAT(threat=LinfBall(eps=0.2), attack=PGD(steps=10)),
  train=(x, y), config=TrainConfig(epochs=1, batch_size=64, ..., progress=False)).fit()`` with no
  validation set and ``out_dir=None`` (nothing written). The timed region includes building the Trainer
  (Accelerator, DataLoader, ``accelerator.prepare``).
* ``sparring_checkpoints``: the same with ``out_dir`` set (a fresh temporary folder per run), so the epoch
  also writes ``metrics.jsonl`` and an atomic safetensors checkpoint.
* ``minimal``: the textbook loop on manually shuffled index batches (random start, 10 sign steps with
  projection and clamp under ``model.eval()``, then ``model.train()``, forward, backward, SGD step),
  accumulating the epoch's loss and accuracy like the Trainer does.

Work that the Trainer does by design and the minimal loop does not: PGD keeps the best iterate per sample
(a few ``torch.where`` per step) and scores the last iterate with one more no-grad forward (11 forwards
instead of 10), the input checks of every attack call, the restoring context, and the attack-success
metric. These count as overhead here.

The implementations alternate round-robin in one process (the order rotates every round) after one
warm-up run each; every figure is the median over ``--repeats`` rounds. Threads are torch's default
(``--threads`` to pin them). ``--profile`` prints cProfile's top functions of one Trainer epoch instead.

Run: ``python benchmarks/train_overhead.py`` (``--quick`` for 2 rounds; ``--repeats N``).
Writes ``benchmarks/results/train_overhead.json`` (``train_overhead_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
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
from torch import Tensor, nn

import sparring
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
        t0 = time.perf_counter()
        trainer = Trainer(
            model=model, objective=PGDAT(threat=LinfBall(eps=EPS), attack=PGD(steps=STEPS)), train=(x, y),
            val=None, config=train_config(seed), out_dir=out_dir,
        )
        t1 = time.perf_counter()
        result = trainer.fit()
        t2 = time.perf_counter()
    finally:
        if out_dir is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
    record = result.history[-1]
    return {
        "total": t2 - t0, "setup": t1 - t0, "fit": t2 - t1,
        "train_loss": record["train_loss"], "train_accuracy": record["train_accuracy"],
    }


def run_sparring_checkpoints(x: Tensor, y: Tensor, seed: int) -> dict[str, Any]:
    return run_sparring(x, y, seed, checkpoints=True)


def run_minimal(x: Tensor, y: Tensor, seed: int) -> dict[str, Any]:
    model = fresh_model(seed)
    t0 = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(seed)
    t1 = time.perf_counter()
    loss_sum, correct = torch.zeros(()), torch.zeros(())
    for idx in torch.randperm(len(y), generator=gen).split(BATCH):
        xb, yb = x[idx], y[idx]
        model.eval()
        x_adv = (xb + torch.empty_like(xb).uniform_(-EPS, EPS, generator=gen)).clamp(0, 1)
        for _ in range(STEPS):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), yb)
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                x_adv = torch.min(torch.max(x_adv + ALPHA * grad.sign(), xb - EPS), xb + EPS).clamp(0, 1)
        model.train()
        logits = model(x_adv)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(yb)
        correct += (logits.detach().argmax(1) == yb).sum()
    train_loss, train_accuracy = float(loss_sum) / len(y), float(correct) / len(y)
    t2 = time.perf_counter()
    return {
        "total": t2 - t0, "setup": t1 - t0, "fit": t2 - t1,
        "train_loss": train_loss, "train_accuracy": train_accuracy,
    }


IMPLEMENTATIONS: dict[str, Callable[[Tensor, Tensor, int], dict[str, Any]]] = {
    "minimal": run_minimal, "sparring": run_sparring, "sparring_checkpoints": run_sparring_checkpoints,
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
            print(f"  round {r + 1}/{repeats} {name:<22}{run['total']:8.3f} s", file=sys.stderr)
    rows = []
    for name in names:
        first = runs[name][0]
        for run in runs[name][1:]:  # fixed seeds: every run of an implementation does the same thing
            if (run["train_loss"], run["train_accuracy"]) != (first["train_loss"], first["train_accuracy"]):
                raise RuntimeError(f"{name}: training result changed between repeats with a fixed seed")
        rows.append({
            "implementation": name,
            "median_s": statistics.median(run["total"] for run in runs[name]),
            "fit_median_s": statistics.median(run["fit"] for run in runs[name]),
            "setup_median_s": statistics.median(run["setup"] for run in runs[name]),
            "times_s": [run["total"] for run in runs[name]],
            "train_loss": first["train_loss"], "train_accuracy": first["train_accuracy"],
            "samples": len(y), "batches": -(-len(y) // BATCH), "batch_size": BATCH,
        })
    return rows


def paired_ratios(rows: list[dict[str, Any]], name: str) -> list[float]:
    """Per-round ratio ``name / minimal`` (rounds are adjacent in time, so these cancel slow drifts)."""
    by = {r["implementation"]: r for r in rows}
    return [a / b for a, b in zip(by[name]["times_s"], by["minimal"]["times_s"], strict=True)]


def profile_epoch(x: Tensor, y: Tensor, seed: int, top: int) -> None:
    run_sparring(x, y, seed)  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    run_sparring(x, y, seed)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


def environment() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(), "torch": torch.__version__, "accelerate": accelerate.__version__,
        "sparring": sparring.__version__, "threads": torch.get_num_threads(), "device": "cpu", "cpu": cpu,
        "platform": platform.platform(),
    }


def print_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    header = f"{'implementation':<24}{'median s':>10}{'fit s':>10}{'setup s':>10}{'ratio':>8}{'loss':>9}{'acc':>8}"
    print(header)
    print("-" * len(header))
    base = next(r for r in rows if r["implementation"] == "minimal")["median_s"]
    for r in rows:
        print(
            f"{r['implementation']:<24}{r['median_s']:>10.3f}{r['fit_median_s']:>10.3f}{r['setup_median_s']:>10.4f}"
            f"{r['median_s'] / base:>8.3f}{r['train_loss']:>9.4f}{r['train_accuracy']:>8.4f}"
        )
    print()
    print(
        f"Trainer / minimal: {summary['time_ratio_vs_minimal']:.3f} "
        f"(median of per-round ratios {summary['paired_ratio_median']['sparring']:.3f}); "
        f"with checkpoints: {summary['time_ratio_vs_minimal_with_checkpoints']:.3f} "
        f"(paired {summary['paired_ratio_median']['sparring_checkpoints']:.3f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds")
    parser.add_argument("--seed", type=int, default=0, help="model, shuffling and random-start seed")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None, help="where to write the JSON")
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
    by = {r["implementation"]: r for r in rows}
    base = by["minimal"]["median_s"]
    summary = {
        "time_ratio_vs_minimal": by["sparring"]["median_s"] / base,
        "time_ratio_vs_minimal_with_checkpoints": by["sparring_checkpoints"]["median_s"] / base,
        "fit_time_ratio_vs_minimal": by["sparring"]["fit_median_s"] / by["minimal"]["fit_median_s"],
        "paired_ratio_median": {
            name: statistics.median(paired_ratios(rows, name)) for name in ("sparring", "sparring_checkpoints")
        },
        "median_s": {name: row["median_s"] for name, row in by.items()},
        "target_ratio": 1.10,
    }
    report = {
        "summary": summary,
        "environment": environment(),
        "settings": {
            "task": "one epoch of PGD-AT on the digits train split",
            "model": "build_model('small_cnn', input_shape=(1, 8, 8), num_classes=10), fresh from the seed per run",
            "attack": f"Linf eps {EPS}, PGD-{STEPS}, alpha {ALPHA:g}, random start, eval mode",
            "optimizer": f"SGD lr {LR}, momentum {MOMENTUM}, weight decay {WEIGHT_DECAY}, constant LR",
            "batch_size": BATCH, "repeats": repeats, "quick": args.quick, "seed": args.seed,
            "statistic": "median over round-robin repeats after one warm-up run each; total = setup + fit",
        },
        "rows": rows,
    }
    output = args.output or RESULTS / ("train_overhead_quick.json" if args.quick else "train_overhead.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows, summary)
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
