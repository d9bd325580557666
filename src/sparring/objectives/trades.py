"""TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019).

    L(θ) = CE(f_θ(x), y) + β · KL( f_θ(x) ‖ f_θ(x') ),   x' = argmax_{x' ∈ B(x,ε)} KL( f_θ(x) ‖ f_θ(x') )

The inner maximization is the paper's, not a CE attack: start at ``x + 0.001·N(0, I)``, then ``steps``
signed (L∞) or normalized (L2) ascent steps on the KL to the clean prediction, projecting after each.
Paper / code defaults (CIFAR-10): β = 6, ε = 0.031, 10 steps of 0.007 (``rel_step`` = 0.007 / 0.031),
the attack run in eval mode. In the outer loss gradients flow through both the clean and the adversarial
branch, as in the authors' code (``KLDivLoss(sum)/B`` there; per example here).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparring.context import frozen_model
from sparring.errors import ConfigError
from sparring.gradients import Autograd, GradientSource
from sparring.losses import cross_entropy, kl_to_reference
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from sparring.threat import LinfBall, ThreatModel


@OBJECTIVES.register("trades")
@dataclass(kw_only=True)
class TRADES(Objective):
    """CE on clean inputs plus β times the KL between clean and worst-case predictions."""

    name = "trades"
    threat: ThreatModel = field(default_factory=lambda: LinfBall(eps=0.031))
    beta: float = 6.0
    steps: int = 10
    rel_step: float = 0.007 / 0.031
    init_std: float = 0.001
    gradients: GradientSource = field(default_factory=Autograd)

    def __post_init__(self) -> None:
        if self.beta < 0 or self.steps < 1 or self.rel_step <= 0 or self.init_std < 0:
            raise ConfigError("TRADES needs beta >= 0, steps >= 1, rel_step > 0 and init_std >= 0")

    def maximize_kl(self, model: nn.Module, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """The paper's inner maximization; returns x' (detached)."""
        with frozen_model(model), torch.no_grad():
            clean_probs = F.softmax(model(x).float(), dim=1)
        alpha = self.rel_step * self.threat.eps_for(x)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = self.threat.project(x + self.init_std * noise, x)
        with frozen_model(model):
            for _ in range(self.steps):
                g = self.gradients(model, x_adv, kl_to_reference, clean_probs)
                x_adv = self.threat.project(x_adv + self.threat.step(g.grad, alpha), x)
        return x_adv.detach()

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        x_adv = self.maximize_kl(model, x, generator)
        # Two forward passes, as in the paper: concatenating would mix BatchNorm statistics.
        clean, adv = model(x), model(x_adv)
        kl = kl_to_reference(adv, F.softmax(clean.float(), dim=1))
        return ObjectiveOutput(
            loss=cross_entropy(clean, y) + self.beta * kl,
            logits=clean,
            metrics={
                "kl": kl.detach().mean(),
                "kl_per_example": kl.detach(),
                "adv_accuracy": (adv.argmax(1) == y).float().mean(),
            },
        )
