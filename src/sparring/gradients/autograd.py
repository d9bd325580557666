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
    """What one query returns, all detached: the gradient (shape of x), the loss (B,) and the logits.

    A source that stops the forward pass early (a gradient predicted from an early layer) has no logits
    and no loss: it returns None for both, and attacks that rank iterates by them refuse it.
    """

    grad: Tensor
    loss: Tensor | None = None
    logits: Tensor | None = None

    @property
    def scored(self) -> bool:
        return self.loss is not None and self.logits is not None


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
        return GradientStep(grad=grad, loss=loss.detach(), logits=logits.detach())
