"""What a training objective is: ``(model, x, y) → per-example losses + metrics``.

An objective decides what the model is trained on (clean inputs, adversarial inputs, a KL between
the two, ...). It returns a (B,) loss, never a reduced scalar, so wrappers (DRO reweighting, class-wise
budgets) compose with any objective; the trainer takes the mean. Objectives that watch training
(fast AT's catastrophic-overfitting detector) implement :meth:`Objective.on_epoch_end`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sparring.registry import Registry

OBJECTIVES: Registry[type[Objective]] = Registry("objective")


@dataclass
class ObjectiveOutput:
    """Per-example ``loss`` (B,), the ``logits`` (B, K) the model was trained on, scalar ``metrics``."""

    loss: Tensor
    logits: Tensor
    metrics: dict[str, float | Tensor] = field(default_factory=dict)


@dataclass(kw_only=True)
class Objective(ABC):
    """Base class; subclasses are keyword-only dataclasses registered in ``OBJECTIVES``."""

    name: ClassVar[str]

    @abstractmethod
    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        """Per-example training losses for the batch ``(x, y)``; the model is left in the mode it had."""

    def on_epoch_end(
        self,
        model: nn.Module,
        *,
        epoch: int,
        holdout: tuple[Tensor, Tensor] | None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Called by the trainer after each epoch; returns metrics to log (default: none)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state that must survive a resume (default: none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def describe(self) -> dict[str, Any]:
        """Name and settings as plain data (for reports and configs)."""
        return {"name": self.name, **_plain(self)}


def threat_of(objective: Objective) -> Any:
    """The objective's training threat model, looking through wrappers (DRO's ``base``); None if it has none."""
    while objective is not None:
        threat = getattr(objective, "threat", None)
        if threat is not None:
            return threat
        objective = getattr(objective, "base", None)
    return None


def _plain(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if hasattr(value, "describe"):
            out[f.name] = value.describe()
        elif isinstance(value, int | float | str | bool | None):
            out[f.name] = value
        elif is_dataclass(value):
            out[f.name] = type(value).__name__
    return out
