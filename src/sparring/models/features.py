"""Penultimate features of any classifier: ``(logits, features)`` and the linear head that maps one to the other.

Methods that work in feature space (MCAT's class manifolds and ETF penalty, feature-level diagnostics) need
``φ(x)`` — the input of the final linear layer — and that layer's weight ``W`` (K, d). Every sparring model
ends in an ``nn.Linear``; a model may name its head explicitly with a ``head`` attribute, else the last
``nn.Linear`` registered in the module tree is taken. The features are captured by a forward hook on the
head, so nothing about the model's ``forward`` has to change and gradients flow through them.
"""

from __future__ import annotations

from torch import Tensor, nn

from sparring.errors import ConfigError


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final linear layer of ``model`` (its ``head`` attribute if that is a Linear, else the last Linear)."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear layer to read penultimate features from")
    return linears[-1]


def logits_and_features(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """One forward pass returning ``(logits (B, K), features (B, d))``; the features are the head's input."""
    box: dict[str, Tensor] = {}

    def grab(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        box["features"] = inputs[0]

    handle = classifier_head(model).register_forward_pre_hook(grab)
    try:
        logits = model(x)
    finally:
        handle.remove()
    if "features" not in box:
        raise ConfigError(f"{type(model).__name__}'s forward pass did not run its final linear layer")
    return logits, box["features"].flatten(1)
