"""Input normalization as the model's first layer, so ε is always measured in input units ([0, 1] pixels)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sparring.errors import ConfigError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel (dim 1): images (B, C, H, W) or features (B, D).

    ``mean`` and ``std`` are buffers (saved with the model, moved with ``.to``), one value per channel or a
    single value for all channels.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float] | Tensor | float, std: Sequence[float] | Tensor | float) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() == 0 or std_t.numel() == 0:
            raise ConfigError("Normalize needs at least one mean and one std value")
        if mean_t.numel() != std_t.numel() and 1 not in (mean_t.numel(), std_t.numel()):
            raise ConfigError(f"Normalize got {mean_t.numel()} means but {std_t.numel()} stds; give one per channel")
        if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all()):
            raise ConfigError("Normalize mean and std must be finite")
        if (std_t <= 0).any():
            raise ConfigError(f"Normalize std must be > 0, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)  # broadcast over dim 1
        return (x - self.mean.view(shape).to(x.dtype)) / self.std.view(shape).to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


def with_normalization(
    model: nn.Module, mean: Sequence[float] | Tensor | float, std: Sequence[float] | Tensor | float
) -> nn.Sequential:
    """``nn.Sequential(Normalize(mean, std), model)``: the model then takes unnormalized [0, 1] inputs."""
    return nn.Sequential(Normalize(mean, std), model)
