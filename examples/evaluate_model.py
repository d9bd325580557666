"""Evaluate a model the way a paper should: the standard suite, the checks, an ε-curve, a report.

    python examples/evaluate_model.py                 # trains a quick digits CNN first, then evaluates it
    python examples/evaluate_model.py --suite fast    # APGD-CE and APGD-margin (minutes → seconds)

Swap in your own model and data: any ``nn.Module`` returning logits for inputs in [0, 1] works (wrap a
normalization with ``sparring.models.with_normalization``). Interrupt it and run it again: the finished
batches are read back from ``runs/example-eval/eval_state``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console

from sparring import LinfBall, Standard, TrainConfig, Trainer, build_model, evaluate, load_data
from sparring.report import load_report, summary_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", default="standard", choices=["fast", "standard", "plus"])
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=Path("runs/example-eval"))
    args = parser.parse_args()

    # 1. A model: here a small CNN trained for three epochs on the embedded digits.
    train, test = load_data("digits")
    torch.manual_seed(0)
    model = build_model("small_cnn", input_shape=train.input_shape, num_classes=train.num_classes)
    Trainer(model=model, objective=Standard(), train=(train.x, train.y),
            config=TrainConfig(epochs=3, optimizer="adam", lr=3e-3, progress=False)).fit()
    model.eval()

    # 2. The evaluation: a cascade (each attack only on the points still robust), the per-sample worst
    #    case, the checks, and a 9-point ε-curve from 0 to 2ε. Every break counts: points the ε-curve's attack
    #    (at radii ≤ ε) or a check's probe broke are broken in the headline too. state_dir makes it resumable.
    threat = LinfBall(eps=args.eps)
    ev = evaluate(model, test, threat, suite=args.suite, state_dir=args.out / "eval_state")

    # 3. Reading it.
    print(f"clean {ev.clean_accuracy:.3f}, robust (worst case over {ev.suite}) {ev.robust_accuracy:.3f}")
    for row in ev.attacks:  # the suite's attacks, then the sources outside it (row["source"])
        print(f"  after {row['name']:<12} {row['robust_accuracy']:.3f}  ({row['broken']} broken of {row['attacked']})")
    for check in ev.checks:
        if check["passed"] is False:
            print(f"  ✗ {check['name']}: {check['detail']}")
    print("trustworthy:", ev.trustworthy)

    # 4. The report: report.json is the record; report.html its view (ε-curve, per class, examples).
    ev.save(args.out, model_name="small_cnn")
    print("report:", args.out / "report.html")
    Console().print(summary_table(load_report(args.out / "report.json")))


if __name__ == "__main__":
    main()
