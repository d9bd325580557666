"""Cross-check of sparring's Square attack against torchattacks' (a port of AutoAttack's), same model, same points.

Model: ``build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)`` with standard training (Adam,
lr 1e-3, batch 64, ``--epochs`` epochs) on the train split of ``sparring.data.load_data("digits")``; the
attacked points are the first ``--n`` test digits. Both attacks use the margin loss, p_init = 0.8 and the
same query budget (``--queries``, default 1000; the paper and AutoAttack use 5000 / 10 000):

* ``sparring``: ``Square(queries=Q, p_init=0.8, loss="margin")(model, x, y, LinfBall/L2Ball(eps), generator=g)``;
  robust accuracy is ``1 − success`` (success is scored inside the call).
* ``torchattacks``: ``torchattacks.Square(model, norm="Linf"/"L2", eps=eps, n_queries=Q, p_init=0.8,
  loss="margin", seed=0)``; robust accuracy needs one more forward on its output (timed with it).

Cases: L∞ ε = 0.1 and L2 ε = 1.0. Expected: sparring's robust accuracy ≤ torchattacks' + 0.01. Known
differences (both follow the paper's algorithm): sparring draws a window position per sample (the paper's
released code does so too; AutoAttack's port draws one position for the whole batch), over all positions
where the window fits, and counts the initial point inside the budget (torchattacks makes Q + 1 queries).

Timing: the two alternate in one process (the order rotates every round) after a warm-up run each; the
ratio is of the medians over ``--repeats`` rounds. Threads: 1 (``--threads``).

Run: ``python benchmarks/square_crosscheck.py`` (``--queries 5000`` for the full budget).
Writes ``benchmarks/results/square_crosscheck.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# torchattacks 3.5 imports without torchvision; install it with `pip install --no-deps torchattacks`.
import torchattacks
from _common import environment
from torch import Tensor, nn

from sparring.attacks import Square
from sparring.data import load_data
from sparring.models import build_model
from sparring.threat import L2Ball, LinfBall

RESULTS = Path(__file__).resolve().parent / "results"
CASES = (("linf", 0.1), ("l2", 1.0))


def train_model(epochs: int) -> tuple[nn.Module, Tensor, Tensor, float]:
    train, test = load_data("digits")
    torch.manual_seed(0)
    model = build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(1)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(train.y), generator=order).split(64):
            opt.zero_grad()
            F.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
            opt.step()
    model.eval()
    return model, test.x, test.y, time.perf_counter() - start


def run_sparring(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, queries: int) -> dict:
    threat = LinfBall(eps=eps) if norm == "linf" else L2Ball(eps=eps)
    t0 = time.perf_counter()
    attack = Square(queries=queries, p_init=0.8, loss="margin")
    result = attack(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    robust = float((~result.success).float().mean())
    seconds = time.perf_counter() - t0
    inside = bool(threat.contains(result.x_adv, x).all())
    return {"robust_accuracy": robust, "seconds": seconds, "queries_max": result.queries, "inside_threat_set": inside}


def run_torchattacks(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, queries: int) -> dict:
    attack = torchattacks.Square(
        model, norm="Linf" if norm == "linf" else "L2", eps=eps, n_queries=queries, p_init=0.8, loss="margin", seed=0
    )
    t0 = time.perf_counter()
    x_adv = attack(x, y)
    with torch.no_grad():
        robust = float((model(x_adv).argmax(1) == y).float().mean())
    seconds = time.perf_counter() - t0
    threat = LinfBall(eps=eps) if norm == "linf" else L2Ball(eps=eps)
    inside = bool(threat.contains(x_adv, x).all())
    return {"robust_accuracy": robust, "seconds": seconds, "queries_max": queries + 1, "inside_threat_set": inside}


RUNNERS = {"sparring": run_sparring, "torchattacks": run_torchattacks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="test points attacked")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, x_all, y_all, train_s = train_model(args.epochs)
    x, y = x_all[: args.n], y_all[: args.n]
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())

    rows = []
    for norm, eps in CASES:
        names = list(RUNNERS)
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for name in names:  # warm-up
            RUNNERS[name](model, x, y, norm, eps, args.queries)
        for r in range(args.repeats):
            for name in names[r % 2 :] + names[: r % 2]:
                runs[name].append(RUNNERS[name](model, x, y, norm, eps, args.queries))
        row: dict[str, object] = {"norm": norm, "eps": eps, "queries": args.queries}
        for name in names:
            first = runs[name][0]
            if any(run["robust_accuracy"] != first["robust_accuracy"] for run in runs[name]):
                raise RuntimeError(f"{name}: robust accuracy changed between repeats with a fixed seed")
            row[name] = {**first, "seconds": statistics.median(run["seconds"] for run in runs[name])}
        row["robust_gap"] = row["sparring"]["robust_accuracy"] - row["torchattacks"]["robust_accuracy"]  # type: ignore[index]
        row["time_ratio"] = row["sparring"]["seconds"] / row["torchattacks"]["seconds"]  # type: ignore[index]
        rows.append(row)

    print(f"small_cnn on digits: clean accuracy {clean:.3f} on {len(y)} test points, {args.queries} queries, "
          f"{args.threads} thread(s), median of {args.repeats}")
    header = (f"{'case':<12}{'robust sparring':>17}{'robust torchatt.':>18}{'gap':>8}{'queries':>9}{'time s':>9}"
              f"{'ratio':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        ours, theirs = row["sparring"], row["torchattacks"]
        print(f"{row['norm'] + ' ' + str(row['eps']):<12}{ours['robust_accuracy']:>17.3f}"
              f"{theirs['robust_accuracy']:>18.3f}{row['robust_gap']:>+8.3f}{ours['queries_max']:>9}{ours['seconds']:>9.2f}{row['time_ratio']:>8.2f}")

    summary = {
        "clean_accuracy": clean,
        **{f"{row['norm']}.robust_accuracy_sparring": row["sparring"]["robust_accuracy"] for row in rows},
        **{f"{row['norm']}.robust_accuracy_torchattacks": row["torchattacks"]["robust_accuracy"] for row in rows},
        **{f"{row['norm']}.time_ratio_vs_torchattacks": round(row["time_ratio"], 3) for row in rows},
        "sparring_at_most_torchattacks_plus_0.01": all(row["robust_gap"] <= 0.01 for row in rows),
        "queries": args.queries,
    }
    out = {
        "summary": summary,
        "environment": environment(torchattacks=torchattacks.__version__),
        "settings": {**vars(args), "model": "small_cnn", "train_seconds": round(train_s, 2),
                     "cases": [list(c) for c in CASES]},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "square_crosscheck.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
