"""Point-cloud robustness: standard training vs MAPR vs PGD-AT vs an outlier-removal defence, PointNet and DGCNN.

On the procedural shapes (10 classes, ``--points`` 128 per cloud, 750 train / 250 test clouds, generated per
seed), each (architecture, seed, method) is trained with ``sparring.train.Trainer`` (Adam lr 1e-3, cosine,
batch 32, 15 epochs) and attacked on ``--test-samples`` random test clouds:

* **adaptive PGD**: APGD-CE (``--steps`` steps) on the coordinates under L∞ ε ∈ {0.02, 0.05} (bounds none).
  For MAPR the intrinsic features are recomputed inside the model, so the attack differentiates through them;
  the same attack with the features detached (:func:`sparring.points.features_detached`) is reported as
  ``non_adaptive``: the gradient-masked number a careless evaluation would publish.
* **point dropping**: saliency dropping (Zheng et al. 2019, 10 rounds) of 10% and 20% of the points.

Methods: ``standard`` (plain CE), ``mapr`` (intrinsic features + consistency, defaults of
:class:`sparring.points.mapr.MAPR`), ``pgd_at`` (PGD-5 at ε = 0.05), and ``sor``: the standard model behind
statistical outlier removal (k = 2, α = 1.1), attacked through the defence (gradients reach the kept points).

    python benchmarks/pointcloud.py --jobs 2            # ~1-2 h on 2 cores; --quick for a smoke run

Writes ``benchmarks/results/pointcloud.json`` (+ ``.md``): per-run rows and mean ± std over seeds, and a
``summary`` with MAPR's gain over standard training on the adaptive attacks next to the paper's +20.02.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, log  # noqa: E402

from sparring.attacks import APGD, PGD, Attack  # noqa: E402
from sparring.models import build_model  # noqa: E402
from sparring.objectives import build  # noqa: E402
from sparring.points import PointSet, features_detached, load_shapes  # noqa: E402
from sparring.points.attacks import PointDrop  # noqa: E402
from sparring.threat import LinfBall, ThreatModel  # noqa: E402
from sparring.train import TrainConfig, Trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ARCHS = {"pointnet": {"width": 32}, "dgcnn": {"width": 32, "k": 16, "embed": 256}}
METHODS = ("standard", "mapr", "pgd_at")
EPS = (0.02, 0.05)
DROP_FRACTIONS = (0.1, 0.2)  # of the cloud's points
TRAIN_EPS = 0.05
PAPER_GAIN = 20.02  # MAPR's robust-accuracy gain on ModelNet40, averaged over attacks (abstract)


def robust_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack,
                    threat: ThreatModel, seed: int) -> float:
    """Share of clouds classified correctly and not broken by ``attack``."""
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    result = attack(model, x, y, threat, generator=torch.Generator().manual_seed(seed))
    return float((correct & result.robust).float().mean())


def attack_rows(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, seed: int) -> dict[str, float]:
    """Clean accuracy and robust accuracy under each attack of the study (drops keyed by their fraction)."""
    with torch.no_grad():
        out = {"clean": float((model(x).argmax(1) == y).float().mean())}
    for eps in EPS:
        out[f"pgd_{eps:g}"] = robust_accuracy(model, x, y, APGD(loss="ce", steps=steps),
                                              LinfBall(eps=eps, bounds=None), seed)
    for fraction in DROP_FRACTIONS:
        k = round(fraction * x.shape[1])
        out[f"drop_{fraction:g}"] = robust_accuracy(model, x, y, PointDrop(iterations=10), PointSet(eps=k), seed)
    return out


def run_one(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Train one (arch, seed, method) and attack it (and its SOR-defended twin for standard training)."""
    torch.set_num_threads(1)
    arch, seed, method = job["arch"], job["seed"], job["method"]
    train, test = load_shapes(seed=seed, num_points=job["points"])
    torch.manual_seed(seed)
    model = build_model(arch, input_shape=train.input_shape, num_classes=10, intrinsic=method == "mapr", **ARCHS[arch])
    if method == "pgd_at":
        objective = build("pgd_at", threat=LinfBall(eps=TRAIN_EPS, bounds=None),
                          attack=PGD(steps=5, keep_best=False, score=False))
    else:
        objective = build(method)
    config = TrainConfig(epochs=job["epochs"], batch_size=32, optimizer="adam", lr=1e-3, weight_decay=0.0,
                         schedule="cosine", seed=seed, progress=False, val_size=64, val_attack_steps=2)
    started = time.perf_counter()
    trainer = Trainer(model=model, objective=objective, train=(train.x, train.y), config=config, num_classes=10)
    trainer.fit()
    train_s = time.perf_counter() - started
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    pick = torch.randperm(len(test.y), generator=torch.Generator().manual_seed(seed))[: job["test_samples"]]
    x, y = test.x[pick], test.y[pick]  # a random subset: the split is grouped by class
    base = {"arch": arch, "seed": seed, "train_s": train_s}
    started = time.perf_counter()
    rows = [{**base, "method": method, **attack_rows(model, x, y, steps=job["steps"], seed=seed)}]
    if method == "mapr":
        with features_detached(model):
            for eps in EPS:
                rows[0][f"non_adaptive_pgd_{eps:g}"] = robust_accuracy(
                    model, x, y, APGD(loss="ce", steps=job["steps"]), LinfBall(eps=eps, bounds=None), seed)
    if method == "standard":  # the same weights behind outlier removal (the defence has no parameters)
        defended = build_model(arch, input_shape=train.input_shape, num_classes=10, defence="sor", **ARCHS[arch])
        defended.load_state_dict(model.state_dict())
        rows.append({**base, "method": "sor", **attack_rows(defended.eval(), x, y, steps=job["steps"], seed=seed)})
    for row in rows:
        row["eval_s"] = time.perf_counter() - started
    return rows


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    metrics = ["clean", *(f"pgd_{e:g}" for e in EPS), *(f"drop_{f:g}" for f in DROP_FRACTIONS),
               *(f"non_adaptive_pgd_{e:g}" for e in EPS)]
    rows = []
    for arch in ARCHS:
        for method in (*METHODS, "sor"):
            group = [r for r in runs if r["arch"] == arch and r["method"] == method]
            if not group:
                continue
            row: dict[str, Any] = {"arch": arch, "method": method, "seeds": len(group)}
            for m in metrics:
                values = [r[m] for r in group if m in r]
                if values:
                    row[m] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}
            row["train_s"] = statistics.median(r["train_s"] for r in group)
            rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """MAPR minus standard (points of robust accuracy), per architecture and attack, and averaged."""
    out: dict[str, Any] = {"paper_gain_modelnet40": PAPER_GAIN}
    for arch in ARCHS:
        by = {r["method"]: r for r in rows if r["arch"] == arch}
        if "mapr" not in by or "standard" not in by:
            continue
        gains = {m: 100 * (by["mapr"][m]["mean"] - by["standard"][m]["mean"])
                 for m in (*(f"pgd_{e:g}" for e in EPS), *(f"drop_{f:g}" for f in DROP_FRACTIONS))}
        non_adaptive = {f"pgd_{e:g}": 100 * (by["mapr"][f"non_adaptive_pgd_{e:g}"]["mean"]
                                             - by["standard"][f"pgd_{e:g}"]["mean"]) for e in EPS}
        out[arch] = {
            "mapr_gain_adaptive": gains, "mapr_gain_adaptive_mean": statistics.fmean(gains.values()),
            "mapr_gain_if_evaluated_non_adaptively": non_adaptive,
            "clean_change": 100 * (by["mapr"]["clean"]["mean"] - by["standard"]["clean"]["mean"]),
        }
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = ["clean", *(f"pgd_{e:g}" for e in EPS), *(f"drop_{f:g}" for f in DROP_FRACTIONS),
            *(f"non_adaptive_pgd_{e:g}" for e in EPS)]
    head = ["clean", *(f"APGD ε {e:g}" for e in EPS), *(f"drop {100 * f:g}%" for f in DROP_FRACTIONS),
            *(f"non-adaptive ε {e:g}" for e in EPS)]
    lines = ["| arch | method | " + " | ".join(head) + " | train s |", "|---|---|" + "---|" * (len(head) + 1)]
    for row in rows:
        cells = [f"{100 * row[c]['mean']:.1f} ± {100 * row[c]['std']:.1f}" if c in row else "–" for c in cols]
        lines.append(f"| {row['arch']} | {row['method']} | " + " | ".join(cells) + f" | {row['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--points", type=int, default=128)
    parser.add_argument("--test-samples", type=int, default=150)
    parser.add_argument("--steps", type=int, default=20, help="APGD steps of the coordinate attacks")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes, one thread each")
    parser.add_argument("--quick", action="store_true", help="one seed, 2 epochs, 32 test clouds")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.test_samples, args.steps = [0], 2, 32, 5
    jobs = [{"arch": a, "seed": s, "method": m, "epochs": args.epochs, "points": args.points,
             "test_samples": args.test_samples, "steps": args.steps}
            for a in args.archs for s in args.seeds for m in args.methods]
    jobs.sort(key=lambda j: (j["arch"] != "dgcnn", j["method"] == "standard"))  # longest first
    log(f"{len(jobs)} runs on {args.jobs} process(es)")
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for future in as_completed([pool.submit(run_one, job) for job in jobs]):
            for r in future.result():
                runs.append(r)
                log(f"{r['arch']} seed {r['seed']} {r['method']}: clean {r['clean']:.3f} "
                    + " ".join(f"{k} {v:.3f}" for k, v in r.items() if k.startswith(("pgd", "drop", "non")))
                    + f" ({r['train_s']:.0f}+{r['eval_s']:.0f} s)")
    rows = aggregate(runs)
    suffix = "_quick" if args.quick else ""
    RESULTS.mkdir(exist_ok=True)
    record = {
        "benchmark": "pointcloud",
        "environment": environment(),
        "settings": {**vars(args), "archs": {a: ARCHS[a] for a in args.archs}, "eps": EPS,
                     "drop_fractions": DROP_FRACTIONS, "train_eps": TRAIN_EPS,
                     "optimizer": "adam lr 1e-3 cosine, batch 32",
                     "pgd_at": "PGD-5, L-inf eps 0.05, last iterate", "coordinate_attack": "APGD-CE, L-inf",
                     "drop_attack": "saliency point dropping, 10 rounds", "sor": "k 2, alpha 1.1"},
        "summary": summary(rows),
        "rows": rows,
        "runs": runs,
        "wall_s": time.perf_counter() - started,
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    (RESULTS / f"pointcloud{suffix}.json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown(rows)
    (RESULTS / f"pointcloud{suffix}.md").write_text(table)
    print(table)
    print(json.dumps(record["summary"], indent=2))


if __name__ == "__main__":
    main()
