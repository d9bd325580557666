"""AT-BSL: PGD adversarial training with the Balanced Softmax loss (Yue, Mou, Wang, Wang & Zhang,
"Revisiting Adversarial Training under Long-Tailed Distributions", CVPR 2024; Balanced Softmax from
Ren et al., NeurIPS 2020).

    min_θ E_(x,y) [ BSL(f_θ(x'), y) ],   BSL(z, y) = CE(z + τ_b · log n, y),   x' = PGD on CE(f_θ(x'), y)

where ``n`` (K,) are the training-split class counts. Adding the log prior during training makes the
raw logits, used unchanged at test time, balanced across classes: head classes must win by a margin of
τ_b · log(n_head / n_tail). Defaults: τ_b = 1 (Balanced Softmax proper; RoBal's configs use 1.5), inner
attack as PGD-AT (ε = 8/255, PGD-10, α = ε/4, random start); the paper adds strong augmentation, which
belongs to the data pipeline, not here. ``inner_balanced=True`` also runs the attack on the BSL instead
of plain CE. Without ``class_counts`` (or with equal counts) the loss is exactly PGD-AT's.

The :class:`~sparring.train.Trainer` fills ``class_counts`` from the training split when it is not set
(:meth:`on_train_begin`); in a loop of your own, pass ``torch.bincount(train_y, minlength=K).tolist()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sparring.attacks import PGD, Attack
from sparring.errors import ConfigError
from sparring.losses import cross_entropy
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from sparring.objectives.pgd_at import attack_metrics
from sparring.threat import LinfBall, ThreatModel


@OBJECTIVES.register("at_bsl")
@dataclass(kw_only=True)
class ATBSL(Objective):
    """Train on PGD examples with the Balanced Softmax CE ``CE(z + τ_b · log n_c, y)``.

    Attributes:
        threat: the training threat model (default L∞, ε = 8/255, box [0, 1]).
        attack: the inner maximizer (default PGD-10, α = ε/4, random start, last iterate, unscored).
        class_counts: training examples per class, length K; ``None`` = uniform (plain PGD-AT).
        tau: τ_b, the strength of the logit adjustment (default 1.0).
        inner_balanced: also attack the balanced loss (default: plain CE inside, BSL outside).
    """

    name = "at_bsl"
    threat: ThreatModel = field(default_factory=lambda: LinfBall(eps=8 / 255))
    attack: Attack = field(default_factory=lambda: PGD(steps=10, keep_best=False, score=False))
    class_counts: list[int] | None = None
    tau: float = 1.0
    inner_balanced: bool = False
    _log_prior: dict[torch.device, Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tau < 0:
            raise ConfigError(f"AT-BSL needs tau >= 0, got {self.tau}")
        if self.class_counts is not None:
            if len(self.class_counts) < 2 or any(int(n) <= 0 for n in self.class_counts):
                raise ConfigError(
                    f"class_counts must list >= 2 positive counts (one per class), got {self.class_counts}; "
                    "compute them with torch.bincount(train_labels, minlength=num_classes)"
                )

    def on_train_begin(
        self, model: nn.Module, *, class_counts: list[int], epochs: int, train: tuple[Tensor, Tensor] | None = None
    ) -> None:
        if self.class_counts is None:
            if any(n <= 0 for n in class_counts):
                raise ConfigError(f"AT-BSL needs every class in the training split; counts are {class_counts}")
            self.class_counts = list(class_counts)
            self._log_prior.clear()
        super().on_train_begin(model, class_counts=class_counts, epochs=epochs, train=train)

    def log_prior(self, logits: Tensor) -> Tensor | None:
        """``τ_b · log n`` as a (K,) tensor on the logits' device (cached), or ``None`` without counts."""
        if self.class_counts is None or self.tau == 0:
            return None
        if len(self.class_counts) != logits.shape[-1]:
            raise ConfigError(
                f"class_counts has {len(self.class_counts)} entries but the model has {logits.shape[-1]} classes"
            )
        prior = self._log_prior.get(logits.device)
        if prior is None:
            counts = torch.tensor([float(n) for n in self.class_counts], dtype=torch.float32)
            prior = self._log_prior[logits.device] = (self.tau * counts.log()).to(logits.device)
        return prior

    def balanced_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Per-example Balanced Softmax CE ``CE(z + τ_b · log n, y)``, shape (B,)."""
        prior = self.log_prior(logits)
        return cross_entropy(logits if prior is None else logits.float() + prior, y)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "class_counts": None if self.class_counts is None else list(self.class_counts)}

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        inner = self.balanced_loss if self.inner_balanced else None
        adv = self.attack(model, x, y, self.threat, loss_fn=inner, generator=generator)
        logits = model(adv.x_adv)
        return ObjectiveOutput(loss=self.balanced_loss(logits, y), logits=logits, metrics=attack_metrics(logits, y))
