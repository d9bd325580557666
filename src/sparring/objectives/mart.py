"""MART, misclassification-aware adversarial training (Wang, Zou, Yi, Bailey, Ma & Gu, "Improving
Adversarial Robustness Requires Revisiting Misclassified Examples", ICLR 2020).

    L(θ) = BCE(p(x'), y) + β · KL( p(x) ‖ p(x') ) · (1 − p_y(x)),     x' = PGD on CE(f_θ(x'), y)

    BCE(p(x'), y) = −log p_y(x') − log(1 − max_{k≠y} p_k(x'))

with p = softmax(f_θ(·)). The boosted CE (BCE) also pushes down the strongest wrong class; the KL
regularizer is weighted by how *mis*classified the clean input is (1 − p_y(x)), so misclassified examples
are regularized more. Paper defaults (CIFAR-10): ε = 8/255, PGD-10 with step 2/255 (= ε/4) on CE for the
inner max, β = 6 (``methods.md`` §10.7), ResNet-18 / WRN-34-10, SGD lr 0.01, wd 3.5e-3.

Gradients flow through both branches and through the weight (1 − p_y(x)), as in the authors' code
(``YisenWang/MART``). Differences from that code, all numerical or in the start of the attack:
``log(1 − max_{k≠y} p_k)`` is computed exactly as a log-sum-exp over the other classes (the code uses
``log(1.0001 − p + 1e-12)``), and the inner PGD starts uniformly in the ball (the code starts at
``x + 0.001·N(0, I)``). At ε = 0 the loss is BCE on the clean input, *not* plain CE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparring.attacks import PGD, Attack
from sparring.errors import ConfigError
from sparring.losses import cross_entropy, kl_to_reference
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from sparring.objectives.pgd_at import attack_metrics
from sparring.threat import LinfBall, ThreatModel


def boosted_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """MART's ``BCE(z, y) = −log p_y − log(1 − max_{k≠y} p_k)``, p = softmax(z); shape (B,).

    ``log(1 − p_k) = logsumexp_{j≠k} z_j − logsumexp_j z_j``, exact and stable even as p_k → 1.
    """
    logits = logits.float()
    log_z = logits.logsumexp(1)  # (B,)
    others = logits.scatter(1, y[:, None], float("-inf"))
    strongest_wrong = others.argmax(1)  # (B,)
    rest = logits.scatter(1, strongest_wrong[:, None], float("-inf")).logsumexp(1)
    return cross_entropy(logits, y) - (rest - log_z)


@OBJECTIVES.register("mart")
@dataclass(kw_only=True)
class MART(Objective):
    """Boosted CE on PGD examples plus β · KL(clean ‖ adversarial) weighted by ``1 − p_y(clean)``.

    Attributes:
        threat: the training threat model (default L∞, ε = 8/255, box [0, 1]).
        attack: the inner maximizer of CE (default PGD-10, α = ε/4, random start, last iterate).
        beta: weight of the misclassification-aware KL term (paper: 6).
    """

    name = "mart"
    #: At ε = 0 the loss is BCE(p(x), y), not CE: MART does not reduce to standard training.
    reduces_to_clean_ce: ClassVar[bool] = False
    threat: ThreatModel = field(default_factory=lambda: LinfBall(eps=8 / 255))
    attack: Attack = field(default_factory=lambda: PGD(steps=10, keep_best=False, score=False))
    beta: float = 6.0

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ConfigError(f"MART needs beta >= 0, got {self.beta}")

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        x_adv = self.attack(model, x, y, self.threat, generator=generator).x_adv
        # Two forward passes (not one concatenated batch), so BatchNorm statistics are not mixed.
        clean, adv = model(x), model(x_adv)  # (B, K) each
        clean_probs = F.softmax(clean.float(), dim=1)
        kl = kl_to_reference(adv, clean_probs)  # KL(p(x) ‖ p(x')), (B,)
        weight = 1.0 - clean_probs.gather(1, y[:, None]).squeeze(1)  # 1 − p_y(x), (B,)
        bce = boosted_cross_entropy(adv, y)
        return ObjectiveOutput(
            loss=bce + self.beta * kl * weight,
            logits=adv,
            metrics={**attack_metrics(adv, y), "kl": kl.detach().mean(), "bce": bce.detach().mean()},
        )
