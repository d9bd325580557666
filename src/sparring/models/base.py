"""The model registry and the input-shape checks the image architectures share.

A registered factory is called as ``factory(input_shape=..., num_classes=..., **settings)`` where
``input_shape`` excludes the batch dim: (C, H, W) for images, (D,) for tabular data.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from sparring.errors import ConfigError
from sparring.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def image_channels(input_shape: tuple[int, ...], model: str) -> int:
    """C of an image ``input_shape`` (C, H, W); a ConfigError for anything else."""
    shape = tuple(input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"{model} needs an image input_shape (C, H, W), got {shape}")
    return int(shape[0])
