"""Shared fixtures: the embedded digits data and tiny MLPs that train in well under a second."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from sparring.data import Dataset, load_data
from sparring.models import build_model


@pytest.fixture(scope="session")
def digits() -> tuple[Dataset, Dataset]:
    """scikit-learn digits as (train, test): (1, 8, 8) images in [0, 1], 10 classes."""
    return load_data("digits")


@pytest.fixture
def tiny_mlp() -> Callable[..., nn.Module]:
    """``tiny_mlp(seed=0, hidden=(32,))``: a fresh digits MLP whose initial weights depend only on ``seed``."""

    def make(seed: int = 0, hidden: tuple[int, ...] = (32,)) -> nn.Module:
        torch.manual_seed(seed)
        return build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=hidden)

    return make


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for the module: tiny models are faster so, and 100x faster on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_mlp(digits: tuple[Dataset, Dataset]) -> nn.Module:
    """A 64-64-10 MLP trained on digits for ~1 s (clean test accuracy ~95%), in eval mode."""
    train, _ = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        idx = torch.randint(0, len(train), (128,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
        opt.step()
    return model.eval()
