"""Long-tailed adversarial training: RobustLT around PGD-AT (or any other objective) on long-tailed digits.

    python examples/train_longtail.py --imbalance-ratio 50 --objective robustlt
    python examples/train_longtail.py --objective pgd_at      # the baseline, same everything else

The training split keeps an exponential profile (class 0 the head, class 9 the tail, n_0 / n_9 = IR); the test
split stays balanced. The Trainer hands the class counts and the epoch count to the objective, so RobustLT's
class budgets and warm-up (and AT-BSL's balanced softmax) need no extra wiring. The YAML equivalent:

    data: {source: digits, long_tail: {imbalance_ratio: 50}}
    model: {name: mlp, hidden: [256, 256]}
    objective: {name: robustlt, base: {name: pgd_at, threat: {eps: 0.2}}, alpha: 0.3, beta: 0.8}
"""

from __future__ import annotations

import argparse

import torch

from sparring import LinfBall, build_model, evaluate, load_data
from sparring.data import long_tail
from sparring.evaluate import long_tail_summary
from sparring.objectives import PGDAT, build
from sparring.train import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default="robustlt", choices=["robustlt", "pgd_at", "at_bsl", "mcat", "raat"])
    parser.add_argument("--imbalance-ratio", type=float, default=50.0)
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train, test = load_data("digits", seed=args.seed)
    train = long_tail(train, imbalance_ratio=args.imbalance_ratio, seed=args.seed)
    print(f"training counts per class: {train.class_counts().tolist()}")
    torch.manual_seed(args.seed)
    model = build_model("mlp", input_shape=train.input_shape, num_classes=10, hidden=(256, 256))
    threat = LinfBall(eps=args.eps)
    if args.objective == "robustlt":  # a wrapper: class-wise budgets for its base's attack
        objective = build("robustlt", base=PGDAT(threat=threat), alpha=0.3, beta=0.8)
    else:
        objective = build(args.objective, threat=threat)
    config = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05, seed=args.seed)
    trainer = Trainer(model=model, objective=objective, train=(train.x, train.y), val=(test.x, test.y),
                      config=config, num_classes=10)
    history = trainer.fit().history
    if "robustlt_eps" in history[-1]:
        print("per-class ε in the last epoch:", [round(e, 3) for e in history[-1]["robustlt_eps"]])

    result = evaluate(model, test, threat, suite="standard", eps_curve=[])
    groups = long_tail_summary(result.per_class(), train.class_counts().tolist())
    print(f"balanced clean {result.to_dict()['balanced_accuracy']['clean']:.3f}, "
          f"balanced robust {result.to_dict()['balanced_accuracy']['robust']:.3f}")
    for name in ("head", "medium", "tail"):
        group = groups[name]
        print(f"{name:>6} classes {group['classes']}: clean {group['clean']:.3f}, robust {group['robust']:.3f}")


if __name__ == "__main__":
    main()
