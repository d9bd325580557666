"""Multilayer perceptron: flatten → [Linear → ReLU] × len(hidden) → Linear (Rumelhart et al., 1986)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from sparring.errors import ConfigError
from sparring.models.base import MODELS, check_num_classes


@MODELS.register("mlp")
class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs of any shape; logits (B, K).

    Architecture: flatten → Linear(D, h₁) → ReLU → … → Linear(h_L, K) with ``hidden = (h₁, …, h_L)``
    (Rumelhart, Hinton & Williams, 1986). ``hidden=()`` gives multinomial logistic regression.
    """

    def __init__(self, *, input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        check_num_classes(num_classes)
        in_features = math.prod(input_shape)
        if in_features < 1:
            raise ConfigError(f"mlp needs a non-empty input_shape, got {tuple(input_shape)}")
        if any(int(h) < 1 for h in hidden):
            raise ConfigError(f"mlp hidden sizes must be positive, got {tuple(hidden)}")
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, int(width)), nn.ReLU(inplace=True)]
            in_features = int(width)
        layers.append(nn.Linear(in_features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, ...) -> (B, K)
