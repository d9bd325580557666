"""APGD-CE and APGD-T: sparring's native implementation against torchattacks' port of the reference code.

For each case (a digits MLP and a digits small CNN, both trained in seconds) and each seed, four attacks
run on the same points with L∞ ε, 100 steps and 1 restart:

* ``sparring_apgd_ce``: ``APGD(loss="ce")``;  ``torchattacks_apgd_ce``: ``torchattacks.APGD(model,
  norm="Linf", eps=ε, steps=100, n_restarts=1, loss="ce", seed=s)``;
* ``sparring_apgd_t``: ``APGDTargeted(targets=9)``;  ``torchattacks_apgd_t``: ``torchattacks.APGDT(model,
  norm="Linf", eps=ε, steps=100, n_restarts=1, n_classes=10, seed=s)``;
* and, for reference, sparring with ``early_stop=False`` (the reference's schedule: every point runs all
  steps).

Robust accuracy is over all test points (a misclassified clean point is not robust). Each implementation
is timed as a user gets that number: torchattacks' call (which runs its own clean forward and attacks the
correctly classified points) plus one accuracy forward on its output; sparring's clean forward, the
attack on the correctly classified points, and its success mask. sparring draws its random starts from
per-sample counter streams (``sparring.attacks.rng``), torchattacks from ``torch.rand``: the starts differ, so
the per-sample agreement reported beside the robust accuracies measures how much a point's fate depends on its
start (before the per-sample streams both sides drew the same APGD-CE starts and agreed on every point).

The implementations alternate in one process (the order rotates every seed) after a warm-up; time ratios
are medians of the per-seed ratios. One intra-op thread (``--threads``).

Run: ``python benchmarks/apgd_crosscheck.py`` (``--quick`` for a smoke run). Writes
``benchmarks/results/apgd_crosscheck.json`` (``apgd_crosscheck_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

# torchattacks 3.5 imports without torchvision; install it with `pip install --no-deps torchattacks`.
import torchattacks
from _common import environment
from torch import Tensor, nn

from sparring.attacks import APGD, APGDTargeted
from sparring.data import load_data
from sparring.models import build_model
from sparring.threat import LinfBall

STEPS = 100
TOLERANCE = 0.005  # sparring's robust accuracy may exceed torchattacks' by at most this (mean over seeds)
RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------- cases
def mlp_case(train, test) -> dict:
    """The test suite's ``trained_mlp``: 64-64-10, 150 Adam steps of batch 128 (about a second)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        idx = torch.randint(0, len(train), (128,))
        opt.zero_grad()
        F.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
        opt.step()
    return {"case": "digits_mlp", "model": model.eval(), "eps": 0.1, "train": "150 Adam steps, lr 1e-2"}


def cnn_case(train, test, epochs: int) -> dict:
    """``small_cnn`` (width 16), ``epochs`` of Adam (lr 1e-3, batch 64)."""
    torch.manual_seed(0)
    model = build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10, width=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(train), generator=order).split(64):
            opt.zero_grad()
            F.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
            opt.step()
    return {"case": "digits_small_cnn", "model": model.eval(), "eps": 0.15,
            "train": f"small_cnn width 16, {epochs} epochs of Adam lr 1e-3, batch 64"}


# ------------------------------------------------------------------------------------ implementations
def sparring_run(attack: APGD | APGDTargeted) -> Callable[..., tuple[Tensor, float]]:
    def run(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int) -> tuple[Tensor, float]:
        t0 = time.perf_counter()
        with torch.no_grad():
            robust = model(x).argmax(1) == y
        rows = robust.nonzero().squeeze(1)
        result = attack(model, x[rows], y[rows], LinfBall(eps=eps), generator=torch.Generator().manual_seed(seed))
        robust[rows] = ~result.success
        return robust, time.perf_counter() - t0

    return run


def torchattacks_run(kind: str) -> Callable[..., tuple[Tensor, float]]:
    def run(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int) -> tuple[Tensor, float]:
        if kind == "ce":
            attack = torchattacks.APGD(model, norm="Linf", eps=eps, steps=STEPS, n_restarts=1, loss="ce", seed=seed)
        else:
            attack = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=STEPS, n_restarts=1, n_classes=10,
                                        seed=seed)
        t0 = time.perf_counter()
        x_adv = attack(x, y)
        with torch.no_grad():
            robust = model(x_adv).argmax(1) == y
        return robust, time.perf_counter() - t0

    return run


IMPLEMENTATIONS: dict[str, Callable[..., tuple[Tensor, float]]] = {
    "sparring_apgd_ce": sparring_run(APGD(loss="ce", steps=STEPS)),
    "torchattacks_apgd_ce": torchattacks_run("ce"),
    "sparring_apgd_ce_no_early_stop": sparring_run(APGD(loss="ce", steps=STEPS, early_stop=False)),
    "sparring_apgd_t": sparring_run(APGDTargeted(targets=9, steps=STEPS)),
    "torchattacks_apgd_t": torchattacks_run("t"),
    "sparring_apgd_t_no_early_stop": sparring_run(APGDTargeted(targets=9, steps=STEPS, early_stop=False)),
}
PAIRS = {"apgd_ce": ("sparring_apgd_ce", "torchattacks_apgd_ce"), "apgd_t": ("sparring_apgd_t", "torchattacks_apgd_t")}


# ------------------------------------------------------------------------------------------ measuring
def measure(case: dict, x: Tensor, y: Tensor, seeds: int) -> dict:
    model, eps = case["model"], case["eps"]
    names = list(IMPLEMENTATIONS)
    for name in names:  # warm-up on a few points
        IMPLEMENTATIONS[name](model, x[:32], y[:32], eps, 0)
    robust: dict[str, list[Tensor]] = {n: [] for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for seed in range(seeds):
        for name in names[seed % len(names):] + names[: seed % len(names)]:
            mask, seconds = IMPLEMENTATIONS[name](model, x, y, eps, seed)
            robust[name].append(mask)
            times[name].append(seconds)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    rows = [
        {"case": case["case"], "implementation": n, "eps": eps, "steps": STEPS, "points": int(x.shape[0]),
         "robust_acc_per_seed": [m.float().mean().item() for m in robust[n]],
         "robust_acc_mean": statistics.mean(m.float().mean().item() for m in robust[n]),
         "median_s": statistics.median(times[n]), "times_s": times[n]}
        for n in names
    ]
    pairs = {}
    for attack, (ours, ref) in PAIRS.items():
        by = {r["implementation"]: r for r in rows}
        pairs[attack] = {
            "robust_acc_sparring": by[ours]["robust_acc_mean"],
            "robust_acc_torchattacks": by[ref]["robust_acc_mean"],
            "robust_acc_gap": by[ours]["robust_acc_mean"] - by[ref]["robust_acc_mean"],
            "no_weaker": by[ours]["robust_acc_mean"] <= by[ref]["robust_acc_mean"] + TOLERANCE,
            "per_sample_disagreements_per_seed": [int((a != b).sum()) for a, b in zip(robust[ours], robust[ref],
                                                                                      strict=True)],
            "time_ratio_vs_torchattacks": statistics.median(
                a / b for a, b in zip(times[ours], times[ref], strict=True)),
            "time_ratio_no_early_stop_vs_torchattacks": statistics.median(
                a / b for a, b in zip(times[f"{ours}_no_early_stop"], times[ref], strict=True)),
            "early_stop_same_robust_mask": all(
                torch.equal(a, b) for a, b in zip(robust[ours], robust[f"{ours}_no_early_stop"], strict=True)),
        }
    return {"rows": rows, "pairs": pairs, "clean_accuracy": clean}


def print_table(results: dict[str, dict]) -> None:
    header = f"{'case':<18}{'implementation':<32}{'robust acc (mean)':>18}{'median s':>10}"
    print(header)
    print("-" * len(header))
    for res in results.values():
        for r in res["rows"]:
            print(f"{r['case']:<18}{r['implementation']:<32}{r['robust_acc_mean']:>18.4f}{r['median_s']:>10.3f}")
    print()
    for case, res in results.items():
        for attack, p in res["pairs"].items():
            print(f"{case} {attack}: gap {p['robust_acc_gap']:+.4f} (no weaker: {p['no_weaker']}), "
                  f"disagreements per seed {p['per_sample_disagreements_per_seed']}, "
                  f"time sparring/torchattacks {p['time_ratio_vs_torchattacks']:.3f} "
                  f"(no early stop {p['time_ratio_no_early_stop_vs_torchattacks']:.3f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds (= timed rounds) per case (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 100 points, short training")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--output", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = 2 if args.quick else args.seeds
    output = args.output or RESULTS / ("apgd_crosscheck_quick.json" if args.quick else "apgd_crosscheck.json")

    train, test = load_data("digits")
    x, y = (test.x[:100], test.y[:100]) if args.quick else (test.x, test.y)
    results: dict[str, dict] = {}
    meta: dict[str, dict] = {}
    for case in (mlp_case(train, test), cnn_case(train, test, epochs=2 if args.quick else 5)):
        print(f"[{case['case']}] eps {case['eps']}, {len(y)} points", file=sys.stderr)
        results[case["case"]] = measure(case, x, y, seeds)
        meta[case["case"]] = {"eps": case["eps"], "train": case["train"],
                              "clean_accuracy": results[case["case"]]["clean_accuracy"]}
    print_table(results)

    pairs = {f"{case}.{attack}": p for case, res in results.items() for attack, p in res["pairs"].items()}
    summary = {
        "no_weaker_than_torchattacks": all(p["no_weaker"] for p in pairs.values()),
        "max_robust_acc_gap_vs_torchattacks": max(p["robust_acc_gap"] for p in pairs.values()),
        "early_stop_same_robust_mask": all(p["early_stop_same_robust_mask"] for p in pairs.values()),
        **{f"{key}.robust_acc_sparring": p["robust_acc_sparring"] for key, p in pairs.items()},
        **{f"{key}.robust_acc_torchattacks": p["robust_acc_torchattacks"] for key, p in pairs.items()},
        **{f"{key}.time_ratio_vs_torchattacks": p["time_ratio_vs_torchattacks"] for key, p in pairs.items()},
        **{f"{key}.time_ratio_no_early_stop_vs_torchattacks": p["time_ratio_no_early_stop_vs_torchattacks"]
           for key, p in pairs.items()},
        "tolerance": TOLERANCE, "seeds": seeds, "points": int(x.shape[0]), "steps": STEPS,
    }
    report = {
        "summary": summary,
        "environment": environment(torchattacks=torchattacks.__version__),
        "cases": meta,
        "pairs": pairs,
        "rows": [r for res in results.values() for r in res["rows"]],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {output}", file=sys.stderr)
    return 0 if summary["no_weaker_than_torchattacks"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
