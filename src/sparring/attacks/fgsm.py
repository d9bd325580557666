"""FGSM (Goodfellow et al., ICLR 2015) and FGSM with random start (Wong et al., ICLR 2020).

Update, one step of steepest ascent in the threat model's norm:

    x' = Π_{B(x,ε) ∩ box}( x₀ + α · step(∇ₓ L(f(x₀), y)) ),   step = sign (L∞) or g/‖g‖₂ (L2)

FGSM: ``x₀ = x``, ``α = ε``. FGSM-RS ("Fast is better than free"): ``x₀ ~ U(B(x, ε))`` and
``α = 1.25 ε`` (the paper's 10/255 at ε = 8/255). Step sizes are relative to ε, so per-sample ε works
and ε = 0 returns ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparring.attacks.base import ATTACKS, Attack, AttackResult, Problem
from sparring.errors import ConfigError


@ATTACKS.register("fgsm")
@dataclass(kw_only=True)
class FGSM(Attack):
    """Single-step attack. ``rel_step``: step size as a multiple of ε (1.0 = the classic FGSM)."""

    name = "fgsm"
    rel_step: float = 1.0
    random_start: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.rel_step > 0:
            raise ConfigError(f"rel_step must be > 0, got {self.rel_step}")

    def _run(self, model: nn.Module, problem: Problem, generator: torch.Generator | None) -> AttackResult:
        x, threat = problem.x, problem.threat
        start = threat.random_start(x, generator, streams=problem.random()) if self.random_start else x
        g = problem.query(self.gradients, model, start, scores=False)
        x_adv = threat.project(start + threat.step(g.grad, self.rel_step * threat.eps_for(x)), x)
        if not self.score:
            return AttackResult(x_adv=x_adv, success=None, loss=None, logits=None, queries=1, time_s=0.0)
        with torch.no_grad():
            logits = model(x_adv)
            loss = problem.loss_fn(logits, problem.loss_ref)
        return AttackResult(
            x_adv=x_adv, success=problem.success(logits), loss=loss, logits=logits, queries=2, time_s=0.0
        )


@ATTACKS.register("fgsm_rs")
@dataclass(kw_only=True)
class FGSMRS(FGSM):
    """FGSM from a uniform random start with step 1.25 ε (Wong, Rice & Kolter 2020)."""

    name = "fgsm_rs"
    rel_step: float = 1.25
    random_start: bool = True
