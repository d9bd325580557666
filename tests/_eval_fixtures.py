"""A tiny model and data set shared by the resume / shard tests and their torchrun script."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def digits_points(n: int = 70) -> tuple[Tensor, Tensor]:
    from sparring.data import load_data

    _, test = load_data("digits")
    return test.x[:n], test.y[:n]


def digits_mlp() -> nn.Module:
    """A digits MLP trained for 100 steps (write it with save_weights to share it with other processes)."""
    from sparring.data import load_data

    train, _ = load_data("digits")
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = torch.randint(0, len(train), (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
        opt.step()
    return model.eval()


def EVAL_SETTINGS() -> dict[str, object]:  # noqa: N802 (a constant-like factory)
    """The evaluation both sides run: a small cascade with a black-box member, an ε-curve, small batches."""
    from sparring.attacks import PGD, Square
    from sparring.threat import LinfBall

    return {"threat": LinfBall(eps=0.1), "suite": [PGD(steps=5), Square(queries=50)],
            "eps_curve": [0.0, 0.05, 0.1, 0.2], "batch_size": 16}
