"""PGD adversarial training in one readable file, built from sparring's parts (copy it and edit).

    python examples/train_pgd_at.py --epochs 15 --eps 0.2

Data: scikit-learn digits (embedded). The loop is written out by hand on purpose — sparring's Trainer does
the same with checkpoints, resume, mixed precision and progress bars.
"""

from __future__ import annotations

import argparse

import torch

from sparring import PGD, LinfBall, build_model, evaluate, load_data
from sparring.losses import cross_entropy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--eps", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train, test = load_data("digits", seed=args.seed)
    model = build_model("small_cnn", input_shape=train.input_shape, num_classes=train.num_classes)
    threat = LinfBall(eps=args.eps)
    attack = PGD(steps=10)  # α = ε/4, random start; runs in eval mode and leaves the model untouched
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * ((len(train) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(args.seed)

    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        total, correct = 0.0, 0
        for start in range(0, len(train), 64):
            rows = order[start : start + 64]
            x, y = train.x[rows], train.y[rows]
            x_adv = attack(model, x, y, threat, generator=generator).x_adv  # the inner maximization
            logits = model(x_adv)
            loss = cross_entropy(logits, y).mean()  # per-example losses, reduced here
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
        print(f"epoch {epoch + 1}: adversarial loss {total / len(train):.3f}, accuracy {correct / len(train):.3f}")

    result = evaluate(model, test, threat, eps_curve=[])
    print({"clean": result.clean_accuracy, **result.to_dict()["robust_accuracy"]})


if __name__ == "__main__":
    main()
