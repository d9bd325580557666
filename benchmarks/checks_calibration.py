"""Which checks fire, and what the headline becomes, on sound and on gradient-masked models.

The calibration of ``black_box_not_stronger`` and ``breaks_outside_suite`` (a black-box or out-of-suite break
rate under 1 % of the survivors passes with a note on a model no other check suspects) must keep flagging every
gradient-masked model while passing a sound adversarially trained one. Models, all on the 451-image digits
test split, L∞ ε = 0.2 (the demo's models; weights cached in ``benchmarks/.cache/``):

* ``standard``, ``pgd_at``: the demo's standard-trained and PGD-AT small CNNs;
* ``quantized``: ``pgd_at`` behind ``round(16 x) / 16`` (zero input gradient; Athalye et al. 2018);
* ``saturated``: ``pgd_at`` with logits × 10⁴ (softmax saturates in float32: CE's gradient vanishes);
* ``randomized``: ``pgd_at`` on ``clip(x + N(0, 0.1²))`` (a random input transform; a fresh draw per call);
* ``trades_awp``: the same CNN trained with TRADES (β = 6) inside AWP (γ = 5e-3), the demo's other settings:
  the kind of model whose ``fast`` headline sat far above its own ε-curve before every break counted.

Each is evaluated with the ``fast`` and ``standard`` suites and the default ε-curve (9 radii, 0 … 2ε).
Run: ``python benchmarks/checks_calibration.py [--models ...] [--suites fast standard] [--n 451]``.
Writes ``benchmarks/results/checks_calibration.json`` (``summary``: per model and suite, the headline, the
suite-only figure and the failed checks) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import environment, log, train_demo_model
from torch import Tensor, nn

from sparring import LinfBall, evaluate
from sparring.config import parse_config
from sparring.data import load_data

HERE = Path(__file__).resolve().parent
EPS = 0.2
MODELS = ("standard", "pgd_at", "quantized", "saturated", "randomized", "trades_awp")
TRADES_AWP = {
    "name": "trades_awp", "seed": 0, "data": {"source": "digits", "test_fraction": 0.25},
    "model": {"name": "small_cnn"},
    "objective": {"name": "awp", "gamma": 5e-3, "base": {"name": "trades", "beta": 6.0,
                                                         "threat": {"norm": "linf", "eps": EPS}}},
    "train": {"epochs": 15, "batch_size": 64, "optimizer": "adam", "lr": 0.003, "weight_decay": 0.0,
              "schedule": "cyclic", "val_size": 200},
    "eval": {"threat": {"norm": "linf", "eps": EPS}},
}


class Quantized(nn.Module):
    def __init__(self, model: nn.Module, levels: int = 16) -> None:
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x: Tensor) -> Tensor:
        return self.model(torch.round(x * self.levels) / self.levels)


class Saturated(nn.Module):
    def __init__(self, model: nn.Module, scale: float = 1e4) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.scale


class Randomized(nn.Module):
    def __init__(self, model: nn.Module, sigma: float = 0.1) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


def build(name: str, base: dict[str, nn.Module]) -> nn.Module:
    wrappers = {"quantized": Quantized, "saturated": Saturated, "randomized": Randomized}
    model = wrappers[name](base["pgd_at"]) if name in wrappers else base[name]
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--suites", nargs="+", default=["fast", "standard"])
    parser.add_argument("--n", type=int, default=451)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_data("digits")
    base = {kind: train_demo_model(kind, train, test, EPS, args.retrain)[0] for kind in ("standard", "pgd_at")}
    if "trades_awp" in args.models:
        base["trades_awp"] = train_demo_model("trades_awp", train, test, EPS, args.retrain,
                                              config=parse_config(TRADES_AWP))[0]
    data = test.subset(torch.arange(min(args.n, len(test))))
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for name in args.models:
        for suite in args.suites:
            torch.manual_seed(0)  # the randomized model's draws
            model = build(name, base)
            started = time.perf_counter()
            ev = evaluate(model, data, LinfBall(eps=EPS), suite=suite, seed=0, progress=False)
            seconds = time.perf_counter() - started
            report = ev.to_dict()
            suite_rows = [r for r in report["attacks"] if r["source"] == "suite"]
            failed = [c["name"] for c in ev.checks if c["passed"] is False]
            row = {
                "model": name, "suite": suite, "clean": ev.clean_accuracy, "headline": ev.robust_accuracy,
                "suite_only": suite_rows[-1]["robust_accuracy"],
                "breaks_outside_suite": report["breaks_outside_suite"], "failed_checks": failed,
                "trustworthy": ev.trustworthy, "eval_s": round(seconds, 1),
                "suite_s": {r["name"]: round(r["time_s"], 2) for r in suite_rows},
                "eps_curve_s": round(ev.curve_time_s, 2),
                "checks": {c["name"]: {"passed": c["passed"], "detail": c["detail"]} for c in ev.checks},
            }
            rows.append(row)
            summary[f"{name}.{suite}"] = {k: row[k] for k in ("headline", "suite_only", "failed_checks",
                                                             "trustworthy")}
            log(f"{name:>10} {suite:>8}: headline {ev.robust_accuracy:.4f} (suite alone {row['suite_only']:.4f}), "
                f"failed: {', '.join(failed) or 'none'} ({seconds:.0f} s)")
    out = HERE / "results" / "checks_calibration.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "environment": environment(), "eps": EPS, "n": len(data),
                               "rows": rows}, indent=2) + "\n")
    print("\n| model | suite | clean | suite alone | headline (every break) | failed checks |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['suite']} | {r['clean']:.3f} | {r['suite_only']:.3f} | {r['headline']:.3f} | "
              f"{', '.join(r['failed_checks']) or 'none'} |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
