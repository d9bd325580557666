"""What a training objective is: ``(model, x, y) → per-example losses + metrics``.

An objective decides what the model is trained on (clean inputs, adversarial inputs, a KL between
the two, ...). It returns a (B,) loss, never a reduced scalar, so wrappers (DRO reweighting, class-wise
budgets) compose with any objective; the trainer takes the mean.

Lifecycle hooks, called by the :class:`~sparring.train.Trainer` (call them yourself in a loop of your own):

* :meth:`Objective.on_train_begin` once, with the training split's class counts, the number of epochs and
  the training tensors (long-tail methods need the counts, warm-ups the epochs, MCAT the data);
* :meth:`Objective.on_epoch_begin` before each epoch (schedules such as RobustLT's budget warm-up);
* :meth:`Objective.on_epoch_end` after each epoch (fast AT's catastrophic-overfitting detector);
* :meth:`Objective.bind_optimizer` once with the trainer's optimizer (Free-AT steps it inside a call) and
  :meth:`Objective.training_events` at the end (events the report lists).

Each returns metrics to log (``on_train_begin`` returns nothing). By default every hook is forwarded to
the objectives this one wraps (dataclass fields holding an :class:`Objective`, e.g. DRO's ``base``), so a
wrapper only overrides a hook when it has work of its own — and then calls ``super()`` to keep forwarding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from sparring.registry import Registry

OBJECTIVES: Registry[type[Objective]] = Registry("objective")


@dataclass
class ObjectiveOutput:
    """Per-example ``loss`` (B,), the ``logits`` (B, K) the model was trained on, scalar ``metrics``.

    ``extra`` is an optional scalar added to the batch loss outside the per-example terms: a term on other
    data than the batch's rows (CAT's utility loss on benign chats), which reweighting wrappers (DRO) leave
    alone. Train on :meth:`total`.
    """

    loss: Tensor
    logits: Tensor
    metrics: dict[str, float | Tensor] = field(default_factory=dict)
    extra: Tensor | None = None

    def total(self) -> Tensor:
        """The scalar to minimize: mean of the per-example losses (0 for an empty batch) plus ``extra``."""
        loss = self.loss.float()
        mean = loss.mean() if loss.numel() else loss.sum()
        return mean if self.extra is None else mean + self.extra.float()


@dataclass(kw_only=True)
class Objective(ABC):
    """Base class; subclasses are keyword-only dataclasses registered in ``OBJECTIVES``.

    Contract flags (class attributes; the contract tests and the run pipeline read them):

    * ``inputs``: what the objective trains on: ``"any"`` tensor, or a domain's (``"points"``: clouds (B, N, 3);
      ``"recsys"``: (user, positive, negative) triples; ``"chat"``: a language ChatBatch). The contract tests pick
      their model and batch by it; a run config refuses an objective of another domain.
    * ``batch_dependent``: a row's loss depends on its batch mates (batch statistics, batch-normalized weights),
      so the batch-independence contract does not apply.
    * ``reduces_to_clean_ce``: at ε = 0 (no perturbation) the loss is the clean cross-entropy.
    """

    name: ClassVar[str]
    inputs: ClassVar[Literal["any", "points", "recsys", "chat"]] = "any"
    batch_dependent: ClassVar[bool] = False
    reduces_to_clean_ce: ClassVar[bool] = True

    @abstractmethod
    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        """Per-example training losses for the batch ``(x, y)``; the model is left in the mode it had."""

    def wrapped(self) -> list[Objective]:
        """The objectives this one wraps (fields holding an Objective), in field order."""
        return [v for f in fields(self) if isinstance(v := getattr(self, f.name), Objective)]

    def on_train_begin(
        self, model: nn.Module, *, class_counts: list[int], epochs: int, train: tuple[Tensor, Tensor] | None = None
    ) -> None:
        """Once before training: per-class training counts (length K), total epochs, the training tensors."""
        for inner in self.wrapped():
            inner.on_train_begin(model, class_counts=class_counts, epochs=epochs, train=train)

    def on_epoch_begin(self, model: nn.Module, *, epoch: int) -> dict[str, Any]:
        """Before epoch ``epoch`` (0-indexed); returns metrics to log with that epoch (default: the wrapped ones')."""
        out: dict[str, Any] = {}
        for inner in self.wrapped():
            out.update(inner.on_epoch_begin(model, epoch=epoch))
        return out

    def on_epoch_end(
        self,
        model: nn.Module,
        *,
        epoch: int,
        holdout: tuple[Tensor, Tensor] | None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """After each epoch; returns metrics to log (default: the wrapped objectives')."""
        out: dict[str, Any] = {}
        for inner in self.wrapped():
            out.update(inner.on_epoch_end(model, epoch=epoch, holdout=holdout, generator=generator))
        return out

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once by the Trainer with its optimizer. An objective that steps the model itself inside a call
        (Free-AT's batch replays) keeps it; the default forwards it to the wrapped objectives."""
        for inner in self.wrapped():
            inner.bind_optimizer(optimizer)

    def training_events(self) -> list[dict[str, Any]]:
        """Events the training report lists, each ``{"epoch", "kind", "detail"}`` (fast AT's catastrophic
        overfitting); the default collects the wrapped objectives'."""
        return [event for inner in self.wrapped() for event in inner.training_events()]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state that must survive a resume (default: the wrapped objectives', by field)."""
        return {f.name: v.state_dict() for f in fields(self) if isinstance(v := getattr(self, f.name), Objective)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in fields(self):
            inner = getattr(self, f.name)
            if isinstance(inner, Objective):
                inner.load_state_dict(state.get(f.name, {}))

    def describe(self) -> dict[str, Any]:
        """Name and settings as plain data (for reports and configs)."""
        return {"name": self.name, **_plain(self)}


def walk(objective: Objective) -> list[Objective]:
    """``objective`` and every objective it wraps, depth first (DRO, then its base, then the base's base...)."""
    out = [objective]
    for inner in objective.wrapped():
        out += walk(inner)
    return out


def holder_of(objective: Objective | None, attribute: str) -> Any:
    """The first objective along the ``.base`` chain (the objective itself, then what it wraps) whose
    ``attribute`` is set; None if none has it. Wrappers use it to find the threat or attack they adjust."""
    while objective is not None:
        if getattr(objective, attribute, None) is not None:
            return objective
        objective = getattr(objective, "base", None)
    return None


def threat_of(objective: Objective) -> Any:
    """The objective's training threat model, looking through wrappers (DRO's ``base``); None if it has none."""
    return getattr(holder_of(objective, "threat"), "threat", None)


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
