"""Promotion-attack robustness of multimodal recommenders: standard BPR vs APR-style AT vs UAT-MC, VBPR and MMGCN.

On the synthetic planted set (500 users, 300 items, visual- and text-driven user groups; generated per seed) or on
MMRec-format data (``--mmrec ROOT``), each (architecture, seed, method) is trained by ``sparring.recsys.train.fit``
(the core Trainer) and evaluated by full ranking (Recall@20, NDCG@10 on the test split, training and validation
items masked) and by FGSM and PGD promotion attacks (``methods.md`` §7.3: top-50 hinge over a random 40% of users,
100 random targets per seed, plus the cold (≤ 5 interactions) and hot (≥ 50) targets at ε = 0.05) at
ε ∈ {0.025, 0.05, 0.1}: the targets' mean HR@50 over anchors after the attack.

Methods and their settings (``methods.md`` §7.5): ``standard`` (BPR); ``uat_mc`` with the VBPR-Baby config for VBPR
(ε 0.05, w_adv 5, γ 4) and the MMGCN-Baby config for MMGCN (ε 0.1, w_adv 6, γ 0.1); ``apr``: the same with γ = 0.

    python benchmarks/recsys.py --jobs 2      # ~15 minutes on 2 cores; --quick for a smoke run

Writes ``benchmarks/results/recsys.json`` (+ ``.md``): per-run rows, mean ± std over seeds, and a ``summary``: for each
architecture the method with the lowest post-attack HR@50, UAT-MC's Recall@20 relative to standard training, and
the cross-modal gradient cosine of the standard model (the mismatch).
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

from sparring.objectives import build  # noqa: E402
from sparring.recsys.data import RecData, load_mmrec, synthetic  # noqa: E402
from sparring.recsys.metrics import ranking_metrics  # noqa: E402
from sparring.recsys.models import build_recommender  # noqa: E402
from sparring.recsys.promotion import PromotionAttack, anchor_users, pick_targets  # noqa: E402
from sparring.recsys.train import fit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ARCHS = ("vbpr", "mmgcn")
METHODS = ("standard", "apr", "uat_mc")
EPS = (0.025, 0.05, 0.1)
ATTACKS = ("fgsm", "pgd")
CONFIGS = {  # methods.md §7.5: VBPR-Baby and MMGCN-Baby
    "vbpr": {"eps": 0.05, "adv_weight": 5.0, "gamma": 4.0},
    "mmgcn": {"eps": 0.1, "adv_weight": 6.0, "gamma": 0.1},
}


def load(job: dict[str, Any]) -> RecData:
    return load_mmrec(job["mmrec"]) if job["mmrec"] else synthetic(seed=job["seed"])


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (arch, seed, method) and attack it."""
    torch.set_num_threads(1)
    arch, seed, method = job["arch"], job["seed"], job["method"]
    data = load(job)
    torch.manual_seed(seed)
    model = build_recommender(arch, data)
    settings = CONFIGS[arch]
    objective = build("standard") if method == "standard" else build(
        method, **{k: v for k, v in settings.items() if method == "uat_mc" or k != "gamma"})
    started = time.perf_counter()
    history = fit(model, data, objective, epochs=job["epochs"], seed=seed)
    train_s = time.perf_counter() - started
    model.eval()
    ranking = ranking_metrics(model, data, split="test", ks=(10, 20, 50))
    gen = torch.Generator().manual_seed(10_000 + seed)
    anchors = anchor_users(data.n_users, fraction=0.4, generator=gen)
    targets = {kind: pick_targets(data, n=job["targets"], kind=kind, generator=gen)
               for kind in ("random", "cold", "hot")}
    row: dict[str, Any] = {
        "arch": arch, "seed": seed, "method": method, "recall@20": ranking["recall@20"],
        "ndcg@10": ranking["ndcg@10"], "train_s": train_s, "final_loss": history[-1]["loss"],
        "train_grad_cosine": history[-1].get("grad_cosine"),
    }
    started = time.perf_counter()
    for attack in ATTACKS:
        for eps in EPS:
            result = PromotionAttack(method=attack, eps=eps)(model, data, targets=targets["random"], anchors=anchors,
                                                            seed=seed)
            summary = result.summary()
            row[f"{attack}_{eps:g}_hr50"] = summary["hr_after"]["50"]
            row["hr50_before"] = summary["hr_before"]["50"]
            row["cross_modal_cosine"] = summary["cross_modal_cosine"]
        for kind in ("cold", "hot"):
            result = PromotionAttack(method=attack, eps=0.05)(model, data, targets=targets[kind], anchors=anchors,
                                                             seed=seed)
            row[f"{attack}_0.05_{kind}_hr50"] = result.summary()["hr_after"]["50"]
            row[f"{kind}_hr50_before"] = result.summary()["hr_before"]["50"]
    row["attack_s"] = time.perf_counter() - started
    return row


def columns() -> list[str]:
    return ["recall@20", "ndcg@10", "hr50_before",
            *(f"{a}_{e:g}_hr50" for a in ATTACKS for e in EPS),
            *(f"{a}_0.05_{k}_hr50" for a in ATTACKS for k in ("cold", "hot")), "cross_modal_cosine"]


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for arch in ARCHS:
        for method in METHODS:
            group = [r for r in runs if r["arch"] == arch and r["method"] == method]
            if not group:
                continue
            row: dict[str, Any] = {"arch": arch, "method": method, "seeds": len(group)}
            for c in columns():
                values = [r[c] for r in group if r.get(c) is not None]
                if values:
                    row[c] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}
            row["post_attack_hr50"] = statistics.fmean(row[f"{a}_{e:g}_hr50"]["mean"] for a in ATTACKS for e in EPS)
            row["train_s"] = statistics.median(r["train_s"] for r in group)
            rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arch in ARCHS:
        by = {r["method"]: r for r in rows if r["arch"] == arch}
        if set(by) != set(METHODS):
            continue
        lowest = min(METHODS, key=lambda m: by[m]["post_attack_hr50"])
        out[arch] = {
            "lowest_post_attack_hr50": lowest,
            "post_attack_hr50": {m: by[m]["post_attack_hr50"] for m in METHODS},
            "pgd_0.1_hr50": {m: by[m]["pgd_0.1_hr50"]["mean"] for m in METHODS},
            "uat_mc_recall20_relative": by["uat_mc"]["recall@20"]["mean"] / by["standard"]["recall@20"]["mean"],
            "apr_recall20_relative": by["apr"]["recall@20"]["mean"] / by["standard"]["recall@20"]["mean"],
            "standard_cross_modal_cosine": by["standard"]["cross_modal_cosine"]["mean"],
        }
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = ["recall@20", "ndcg@10", "hr50_before", *(f"{a}_{e:g}_hr50" for a in ATTACKS for e in EPS)]
    head = ["Recall@20", "NDCG@10", "HR@50 clean", *(f"{a.upper()} ε {e:g}" for a in ATTACKS for e in EPS)]
    lines = ["| arch | method | " + " | ".join(head) + " | mean post-attack HR@50 | train s |",
             "|---|---|" + "---|" * (len(head) + 2)]
    for row in rows:
        cells = [f"{100 * row[c]['mean']:.2f} ± {100 * row[c]['std']:.2f}" if c in row else "–" for c in cols]
        lines.append(f"| {row['arch']} | {row['method']} | " + " | ".join(cells)
                     + f" | {100 * row['post_attack_hr50']:.2f} | {row['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--mmrec", default=None, help="an MMRec-format folder instead of the synthetic set")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes, one thread each")
    parser.add_argument("--quick", action="store_true", help="one seed, 2 epochs, 20 targets")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.targets = [0], 2, 20
    jobs = [{"arch": a, "seed": s, "method": m, "epochs": args.epochs, "targets": args.targets, "mmrec": args.mmrec}
            for a in args.archs for s in args.seeds for m in args.methods]
    jobs.sort(key=lambda j: (j["arch"] != "mmgcn", j["method"] != "uat_mc"))  # longest first
    log(f"{len(jobs)} runs on {args.jobs} process(es)")
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for future in as_completed([pool.submit(run_one, job) for job in jobs]):
            r = future.result()
            runs.append(r)
            log(f"{r['arch']} seed {r['seed']} {r['method']}: recall@20 {r['recall@20']:.3f} ndcg@10 "
                f"{r['ndcg@10']:.3f} HR@50 {r['hr50_before']:.3f} -> fgsm {r['fgsm_0.05_hr50']:.3f} pgd "
                f"{r['pgd_0.05_hr50']:.3f} @0.05, cos {r['cross_modal_cosine']:.3f} "
                f"({r['train_s']:.0f}+{r['attack_s']:.0f} s)")
    rows = aggregate(runs)
    suffix = ("_quick" if args.quick else "") + ("_mmrec" if args.mmrec else "")
    RESULTS.mkdir(exist_ok=True)
    record = {
        "benchmark": "recsys",
        "environment": environment(),
        "settings": {**vars(args), "eps": EPS, "attacks": ATTACKS, "configs": CONFIGS, "anchors": "40% of users",
                     "targets": f"{args.targets} random per seed (cold / hot at eps 0.05)",
                     "data": args.mmrec or "synthetic (500 users, 300 items, 64-d, planted groups)"},
        "summary": summary(rows),
        "rows": rows,
        "runs": runs,
        "wall_s": time.perf_counter() - started,
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    (RESULTS / f"recsys{suffix}.json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown(rows)
    (RESULTS / f"recsys{suffix}.md").write_text(table)
    print(table)
    print(json.dumps(record["summary"], indent=2))


if __name__ == "__main__":
    main()
