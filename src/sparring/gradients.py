"""Gradient sources: how an attack obtains ∇ₓ loss.

An attack never calls ``backward`` itself; it asks its gradient source for the per-example loss, the
input gradient and the logits at the current iterate. ``Autograd`` (the default) differentiates through
the model. Other sources (gradients predicted from hidden states, surrogates) implement the same
protocol, so every attack works with every source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from sparring.losses import LossFn


@dataclass(frozen=True)
class GradientStep:
    """What one query returns: loss (B,), gradient (shape of x), logits (B, K), all detached."""

    loss: Tensor
    grad: Tensor
    logits: Tensor


class GradientSource(Protocol):
    def __call__(self, model: nn.Module, x: Tensor, loss_fn: LossFn, ref: Tensor) -> GradientStep: ...


@dataclass(frozen=True)
class Autograd:
    """The true input gradient by reverse-mode autodiff (one forward and one backward)."""

    def __call__(self, model: nn.Module, x: Tensor, loss_fn: LossFn, ref: Tensor) -> GradientStep:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            loss = loss_fn(logits, ref)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return GradientStep(loss=loss.detach(), grad=grad, logits=logits.detach())
