"""Models: a registry of classifier architectures and input normalization.

``available()`` lists the registered names; ``build_model(name, input_shape=..., num_classes=...)`` makes
one. ``input_shape`` excludes the batch dim: (C, H, W) for images, (D,) for tabular data. Every model
maps a batch to logits (B, K) and takes inputs in data units; wrap it with :func:`with_normalization` when
it expects standardized inputs, so ε stays measured in [0, 1] pixels.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

from pydantic import TypeAdapter, ValidationError
from torch import nn

from sparring.errors import ConfigError, SparringError
from sparring.models.base import MODELS
from sparring.models.cnn1d import CNN1D
from sparring.models.features import classifier_head, logits_and_features
from sparring.models.mlp import MLP
from sparring.models.normalize import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    Normalize,
    with_normalization,
)
from sparring.models.preact_resnet import PreActResNet18
from sparring.models.small_cnn import SmallCNN
from sparring.models.wide_resnet import WideResNet


def available() -> list[str]:
    """Names of all registered models."""
    return MODELS.names()


def settings_of(name: str) -> dict[str, Any]:
    """The keyword settings a model accepts besides ``input_shape`` and ``num_classes``, with defaults."""
    params = inspect.signature(MODELS.get(name)).parameters
    return {k: p.default for k, p in params.items() if k not in ("input_shape", "num_classes", "self")}


def check_settings(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` validated against the annotations of model ``name``'s constructor, and converted the way a YAML
    file needs (``"4"`` to 4 for an ``int``, a list for a tuple); a ConfigError ``<setting>: <problem> (got <value>)``
    on the first that does not fit. A ``bool`` must be a YAML true / false (``"no"`` would be truthy).

    Settings whose annotation pydantic cannot check (a tensor, a module) pass as they are."""
    cls = MODELS.get(name)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve here: nothing to check against
        hints = {}
    checked = dict(settings)
    for key, value in settings.items():
        if key not in hints:
            continue
        try:
            adapter: TypeAdapter[Any] = TypeAdapter(hints[key])
        except Exception:  # no schema for this annotation
            continue
        try:
            checked[key] = adapter.validate_python(value, strict=hints[key] is bool)
        except ValidationError as exc:
            raise ConfigError(f"{key}: {exc.errors()[0]['msg']} (got {value!r})") from None
    return checked


def build_model(name: str, *, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    """A registered model by name, e.g. ``build_model("small_cnn", input_shape=(1, 8, 8), num_classes=10)``.

    Settings are checked against the constructor's annotations; any TypeError or ValueError the constructor
    raises on them (or RuntimeError: torch refusing a layer size) is a one-line :class:`ConfigError` naming the
    model and its settings."""
    accepted = settings_of(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        options = ", ".join(accepted) or "none"
        raise ConfigError(f"model {name!r} got unknown settings {unknown}; it accepts: {options}")
    try:
        kwargs = check_settings(name, kwargs)
    except ConfigError as exc:
        raise ConfigError(f"model.{exc}") from None
    try:
        return MODELS.get(name)(input_shape=tuple(int(d) for d in input_shape), num_classes=num_classes, **kwargs)
    except SparringError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:  # a setting the layers refuse (width: -3)
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        reason = " ".join(str(exc).split())
        raise ConfigError(f"model: {name}({given}) failed: {type(exc).__name__}: {reason}") from None


__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CNN1D",
    "MLP",
    "MODELS",
    "Normalize",
    "PreActResNet18",
    "SmallCNN",
    "WideResNet",
    "available",
    "build_model",
    "check_settings",
    "classifier_head",
    "logits_and_features",
    "settings_of",
    "with_normalization",
]
