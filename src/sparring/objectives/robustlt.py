"""RobustLT: class-wise perturbation budgets with a warm-up, around any adversarial-training objective
(Zhang, Guo, Li, Shi & Liu, "Taming the Long Tail: Rebalancing Adversarial Training via Adaptive
Perturbation", CVPR 2026, arXiv 2605.13395; the rule below is the authors' ``core/methods/robustlt.py``).

With ``n_c`` the training count of class c, ``N = Σ n_c``, ``n_max = max n_c`` and ``r_c = √log(n_max / n_c)``
(0 for the head class):

    τ          = α / Σ_c (n_c / N) · r_c
    ε_c^max    = ε · [(1 − α) + τ · r_c]              CPB: head (1 − α)ε, tail above ε; the sample-weighted
                                                      mean of ε_c^max is exactly ε
    s(t)       = min((t − 1) / (β T), 1)  (β > 0; else 1)      AIW: epoch t = 1 … T, so epoch 1 is clean
    ε_c(t)     = s(t) · ε_c^max,     step_c(t) = step · ε_c(t) / ε

Each sample is attacked with the budget of its label, ``ε_{y_i}(t)``, by the base objective's own attack
(PGD's step is a multiple of the per-sample ε, so step_c scales with it; an absolute ``step_size`` is
turned into that multiple). The base objective's loss is unchanged. Paper defaults: α = 0.3, β = 0.8 on
CIFAR-10-LT (PGD-AT, AT-BSL, AWP, RoBal, REAT); α = 0.4, β = 0.6 on CIFAR-100-LT and Tiny-ImageNet-LT.

The authors' random start still draws U(−ε, ε) with the *global* ε and then projects onto the class-wise
ball (head samples start on their boundary more often, tail ones never use their larger ball at the
start); ``global_random_start=True`` reproduces it. The default starts uniformly in each sample's own ball.

The class counts and the number of epochs come from the trainer (:meth:`on_train_begin`); the warm-up
factor is set at each :meth:`on_epoch_begin`, which also returns the per-class budgets to log. Used
without the trainer, set ``class_counts`` (and call ``on_epoch_begin``, else the full budgets apply).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from sparring.errors import ConfigError
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput, holder_of
from sparring.objectives.pgd_at import PGDAT
from sparring.threat import ThreatModel


def class_budgets(class_counts: list[int], alpha: float) -> Tensor:
    """CPB multipliers ``ε_c^max / ε`` (K,) for training counts ``n_c``; all ones when the counts are equal."""
    counts = torch.tensor([float(n) for n in class_counts], dtype=torch.float64)
    if len(counts) < 2 or (counts <= 0).any():
        raise ConfigError(f"RobustLT needs >= 2 classes, each with training samples; counts are {class_counts}")
    r = torch.sqrt(torch.log(counts.max() / counts))
    spread = float((counts / counts.sum() * r).sum())
    if spread == 0.0:  # balanced data: nothing to rebalance
        return torch.ones(len(counts), dtype=torch.float32)
    tau = alpha / spread
    return ((1 - alpha) + tau * r).float()


def warmup_factor(epoch: int, epochs: int | None, beta: float) -> float:
    """AIW ``s(t) = min((t − 1) / (βT), 1)`` for the 0-indexed ``epoch`` (t = epoch + 1) of ``epochs`` = T."""
    if beta <= 0 or epochs is None:
        return 1.0
    return min(epoch / (beta * epochs), 1.0)


@OBJECTIVES.register("robustlt")
@dataclass(kw_only=True)
class RobustLT(Objective):
    """Attack each sample of ``base`` with its class's budget ``ε_{y}(t)`` (see the module doc).

    Attributes:
        base: the adversarial-training objective to rebalance (default PGD-AT); it, or an objective it
            wraps, must have a ``threat`` with a scalar ε.
        alpha: CPB strength α ∈ [0, 1]; 0 keeps every budget at ε (paper: 0.3 CIFAR-10-LT, 0.4 CIFAR-100-LT).
        beta: AIW warm-up length as a fraction of the epochs (paper: 0.8 / 0.6); 0 disables the warm-up.
        class_counts: training samples per class (filled by the trainer when None).
        epochs: total epochs T (filled by the trainer when None).
        global_random_start: the authors' start, U(−ε, ε) with the global ε, projected onto the class ball.
    """

    name = "robustlt"
    base: Objective = field(default_factory=PGDAT)
    alpha: float = 0.3
    beta: float = 0.8
    class_counts: list[int] | None = None
    epochs: int | None = None
    global_random_start: bool = False
    _scale: float = field(default=1.0, init=False, repr=False, compare=False)
    _budgets: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"RobustLT alpha must be in [0, 1], got {self.alpha}")
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"RobustLT beta must be in [0, 1], got {self.beta}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"RobustLT epochs must be >= 1, got {self.epochs}")
        if self.class_counts is not None:
            self._budgets = class_budgets(self.class_counts, self.alpha)

    # ---------------------------------------------------------------- schedule
    def on_train_begin(
        self, model: nn.Module, *, class_counts: list[int], epochs: int, train: tuple[Tensor, Tensor] | None = None
    ) -> None:
        if self.class_counts is None:
            self.class_counts = list(class_counts)
            self._budgets = class_budgets(self.class_counts, self.alpha)
        if self.epochs is None:
            self.epochs = epochs
        super().on_train_begin(model, class_counts=class_counts, epochs=epochs, train=train)

    def on_epoch_begin(self, model: nn.Module, *, epoch: int) -> dict[str, Any]:
        """Set s(t) for this epoch; log it and the per-class budgets ε_c(t)."""
        self._scale = warmup_factor(epoch, self.epochs, self.beta)
        logged: dict[str, Any] = {"robustlt_scale": self._scale}
        eps = _scalar_eps(self._holder().threat)
        if self._budgets is not None:
            logged["robustlt_eps"] = [round(eps * self._scale * float(b), 8) for b in self._budgets]
        return {**super().on_epoch_begin(model, epoch=epoch), **logged}

    def budgets(self, y: Tensor, eps: float) -> Tensor:
        """Per-sample ε_{y_i}(t) (B,) at the current warm-up factor."""
        if self._budgets is None:
            raise ConfigError(
                "RobustLT needs the training class counts: train it with sparring's Trainer, or set class_counts"
            )
        if int(y.max()) >= len(self._budgets):
            raise ConfigError(f"label {int(y.max())} has no class count (class_counts has {len(self._budgets)})")
        return eps * self._scale * self._budgets.to(y.device)[y]

    # ---------------------------------------------------------------- the call
    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        holder = self._holder()
        threat, attack = holder.threat, getattr(holder, "attack", None)
        eps = _scalar_eps(threat)
        class_threat = threat.with_eps(self.budgets(y, eps))
        if self.global_random_start:
            class_threat = _global_start(class_threat, threat)
        try:
            holder.threat = class_threat
            if attack is not None and getattr(attack, "step_size", None) is not None and hasattr(attack, "rel_step"):
                # step_c = step · ε_c / ε: an absolute step becomes the same multiple of each sample's ε.
                holder.attack = _with(attack, step_size=None, rel_step=attack.step_size / eps if eps else None)
            out = self.base(model, x, y, generator=generator)
        finally:
            holder.threat = threat
            if attack is not None:
                holder.attack = attack
        mean_eps = class_threat.eps.mean() if isinstance(class_threat.eps, Tensor) else torch.tensor(0.0)
        return ObjectiveOutput(loss=out.loss, logits=out.logits, metrics={**out.metrics, "robustlt_mean_eps": mean_eps})

    def _holder(self) -> Any:
        """The (possibly nested) base objective that owns the training threat model."""
        holder = holder_of(self.base, "threat")
        if holder is None:
            raise ConfigError(f"RobustLT needs a base objective with a threat model; {self.base.name!r} has none")
        return holder

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self._budgets is not None:
            out["budget_multipliers"] = [round(float(b), 6) for b in self._budgets]
        return out


def _scalar_eps(threat: ThreatModel) -> float:
    if isinstance(threat.eps, Tensor):
        raise ConfigError("RobustLT sets per-sample budgets itself; give the base objective a scalar eps")
    return float(threat.eps)


def _with(obj: Any, **changes: Any) -> Any:
    """A copy of dataclass ``obj`` with ``changes`` (re-validated by its ``__post_init__``)."""
    settings = {f.name: getattr(obj, f.name) for f in fields(obj) if f.init}
    return type(obj)(**{**settings, **changes})


_GLOBAL_START_CLASSES: dict[type, type] = {}


def _global_start(class_threat: ThreatModel, global_threat: ThreatModel) -> ThreatModel:
    """``class_threat`` whose random start is ``global_threat``'s, projected onto the class ball.

    A dataclass subclass with a ``start_threat`` field, so ``subset``/``with_eps`` copies keep the start.
    """
    cls = type(class_threat)
    sub = _GLOBAL_START_CLASSES.get(cls)
    if sub is None:

        def random_start(
            self: Any, x: Tensor, generator: torch.Generator | None = None, *, streams: Any = None
        ) -> Tensor:
            return self.project(self.start_threat.random_start(x, generator, streams=streams), x)

        namespace = {"__annotations__": {"start_threat": ThreatModel}, "random_start": random_start}
        sub = dataclass(frozen=True, kw_only=True)(type(f"GlobalStart{cls.__name__}", (cls,), namespace))
        _GLOBAL_START_CLASSES[cls] = sub
    settings = {f.name: getattr(class_threat, f.name) for f in fields(class_threat) if f.init}
    return sub(**settings, start_threat=global_threat)


__all__ = ["RobustLT", "class_budgets", "warmup_factor"]
