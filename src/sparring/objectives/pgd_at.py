"""PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018).

    min_θ  E_(x,y) [ max_{x' ∈ B(x,ε)} CE(f_θ(x'), y) ]

The inner max is approximated by PGD from a uniform random start (paper: 7 steps of α = 2/255 at
ε = 8/255 on CIFAR-10; 40 × 0.01 at ε = 0.3 on MNIST); here PGD-10 with α = ε/4, training on the last
iterate as Madry et al. do (no best-iterate scoring, so no extra forward pass). The attack runs with
the model in eval mode (BatchNorm frozen, the common practice) inside the restoring context, then the
model is trained in its own mode on the adversarial batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sparring.attacks import PGD, Attack
from sparring.losses import cross_entropy
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from sparring.threat import LinfBall, ThreatModel


@OBJECTIVES.register("pgd_at")
@dataclass(kw_only=True)
class PGDAT(Objective):
    """Train on the PGD adversarial examples of each batch.

    Attributes:
        threat: the training threat model (default L∞, ε = 8/255, box [0, 1]).
        attack: the inner maximizer (default PGD-10, α = ε/4, random start, last iterate, unscored).
    """

    name = "pgd_at"
    threat: ThreatModel = field(default_factory=lambda: LinfBall(eps=8 / 255))
    attack: Attack = field(default_factory=lambda: PGD(steps=10, keep_best=False, score=False))

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        adv = self.attack(model, x, y, self.threat, generator=generator)
        logits = model(adv.x_adv)
        return ObjectiveOutput(loss=cross_entropy(logits, y), logits=logits, metrics=attack_metrics(logits, y))


def attack_metrics(logits: Tensor, y: Tensor) -> dict[str, float | Tensor]:
    """Share of the batch the training attack broke, judged by the training forward pass itself."""
    return {"attack_success": (logits.detach().argmax(1) != y).float().mean()}
