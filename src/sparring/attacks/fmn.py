"""Fast Minimum-Norm attack, FMN (Pintor, Roli, Brendel & Biggio, NeurIPS 2021), for L∞, L2 and L1.

FMN looks for the smallest adversarial perturbation of each point, whatever ε: it keeps a per-point radius ε_k and
takes projected gradient steps inside ``B(x, ε_k) ∩ box``, growing ε_k while the point is not adversarial and
shrinking it once it is. With ``m(x')`` the margin to maximize (``max_{j≠y} z_j − z_y``; targeted:
``z_t − max_{j≠t} z_j``), adversarial where the prediction flips, and ``q`` the dual norm (L∞ → 1, L2 → 2, L1 → ∞):

    ε_k = min(ε_{k−1} (1 − γ_k), ‖δ*‖)                     if x + δ_{k−1} is adversarial
    ε_k = ε_{k−1} (1 + γ_k)                                 else, if an adversarial point was found before
    ε_k = ‖δ_{k−1}‖ + (−m) / ‖∇m‖_q                        else (the linearised distance to the boundary)
    δ_k = Π_{B(0, ε_k) ∩ (box − x)}( δ_{k−1} + α_k ∇m / ‖∇m‖₂ )

with δ* the smallest adversarial perturbation so far, δ₀ = 0, and cosine decays
``γ_k = γ_K + (γ₀ − γ_K)(1 + cos(πk/K))/2`` (γ₀ = 0.05, γ_K = 0.001) and the same for α (α₀ = 1, α_K = α₀/100).
One deviation: before the first adversarial point, ε_k is at least ε_{k−1}(1 + γ_k), since a point that lands on
the boundary up to float precision gets a linear estimate too small to move it in float32 and would stay there.
The paper runs K = 1000 steps; the default here is K = 100 (the curves of the paper flatten by then on the
models we test; raise ``steps`` for a tighter bound). The projection is the threat model's (exact for L1 ∩ box).

The result (:class:`~sparring.attacks.base.AttackResult`):

* ``min_norm``: per point ``‖δ*‖`` (0 where the clean input is misclassified, inf where no adversarial point was
  found). One run gives the robust accuracy at every ε: ``mean(min_norm > ε)`` (``--eps-curve minnorm``).
* ``x_adv`` inside the threat set at the given ε: ``x + δ*`` where ``‖δ*‖ ≤ ε``, else the projection of ``x + δ*``
  (or of the last iterate) onto ``B(x, ε) ∩ box``; ``success`` is "broken within ε": ``‖δ*‖ ≤ ε``, or the returned
  point is misclassified all the same (one scoring forward pass, which also gives ``loss`` and ``logits``).

FMN draws no random numbers. Targeted: pass ``target=``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import sparring.progress as progress
from sparring.attacks.base import ATTACKS, Attack, AttackResult, Problem, row_mask
from sparring.errors import ConfigError
from sparring.losses import margin, targeted
from sparring.threat import ThreatModel

_TINY = 1e-12
#: The norms minimum-norm attacks support, and the dual norm of each (for the distance to a linear boundary).
DUAL_NORM = {"linf": 1.0, "l2": 2.0, "l1": float("inf")}


def check_norm(attack: str, threat: ThreatModel) -> None:
    """A ConfigError unless ``threat`` is an L∞, L2 or L1 ball."""
    if threat.norm not in DUAL_NORM:
        raise ConfigError(f"{attack} supports the linf, l2 and l1 threat models, got {threat.norm!r}")


def cosine_decay(start: float, end: float, k: int, steps: int) -> float:
    """``end + (start − end)(1 + cos(π k / steps)) / 2``: ``start`` at k = 0, ``end`` at k = steps."""
    return end + (start - end) * (1.0 + math.cos(math.pi * k / max(steps, 1))) / 2.0


def minimum_norm_result(
    model: nn.Module, problem: Problem, best_x: Tensor, best_norm: Tensor, fallback: Tensor, queries: int
) -> AttackResult:
    """The result of a minimum-norm attack at the problem's ε (see the module docstring).

    ``best_x`` / ``best_norm`` (B,): the smallest adversarial point per sample (``inf`` where none); ``fallback``:
    the point projected onto the ε-set where no adversarial point lies within ε."""
    x, threat = problem.x, problem.threat
    eps = threat.eps_for(x).flatten()
    within = best_norm <= eps
    found = torch.isfinite(best_norm)
    with torch.no_grad():
        outside = threat.project(torch.where(row_mask(found, x), best_x, fallback), x)
        x_adv = torch.where(row_mask(within, x), best_x, outside)
        logits = model(x_adv)
        loss = problem.loss_fn(logits, problem.loss_ref)
        success = within | problem.success(logits)
    return AttackResult(x_adv=x_adv, success=success, loss=loss.detach(), logits=logits.detach().float(),
                        queries=queries + 1, time_s=0.0, min_norm=best_norm)


@ATTACKS.register("fmn")
@dataclass(kw_only=True)
class FMN(Attack):
    """FMN-``steps``: the smallest adversarial perturbation per point in the threat model's norm (L∞, L2, L1).

    Attributes:
        loss: the loss reported at the returned point (the search itself always follows the logit margin).
        steps: iterations K (one forward and backward each, plus one query of the last iterate and a scoring pass).
        gamma_init / gamma_final: the radius update factor γ, cosine-decayed from the first to the second.
        alpha_init / alpha_final: the step length α (L2 length of the normalized gradient step), cosine-decayed;
            ``alpha_final=None`` is ``alpha_init / 100``.
    """

    name = "fmn"
    minimum_norm = True
    loss: str = "margin"
    steps: int = 100
    gamma_init: float = 0.05
    gamma_final: float = 0.001
    alpha_init: float = 1.0
    alpha_final: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.score:
            raise ConfigError(f"{self.name} always knows which points it broke: score=False is not supported")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.gamma_final <= self.gamma_init < 1.0:
            raise ConfigError(f"need 0 <= gamma_final <= gamma_init < 1, got {self.gamma_final}, {self.gamma_init}")
        final = self.alpha_init / 100 if self.alpha_final is None else self.alpha_final
        if not 0.0 < final <= self.alpha_init:
            raise ConfigError(f"need 0 < alpha_final <= alpha_init, got {final}, {self.alpha_init}")

    def _run(self, model: nn.Module, problem: Problem, generator: torch.Generator | None) -> AttackResult:
        check_norm(self.name, problem.threat)
        x, threat = problem.x, problem.threat
        if problem.target is None:
            search = Problem(x=x, y=problem.y, threat=threat, loss_fn=margin, loss_ref=problem.y)
        else:
            search = Problem(x=x, y=problem.y, threat=threat, loss_fn=targeted(margin), loss_ref=problem.target,
                             target=problem.target)
        dual = DUAL_NORM[threat.norm]
        alpha_final = self.alpha_init / 100 if self.alpha_final is None else self.alpha_final
        cur = x.clone()
        radius = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        best_norm = torch.full_like(radius, float("inf"))
        best_x = x.clone()
        for k in range(self.steps + 1):
            progress.report(k, self.steps + 1)
            g = search.query(self.gradients, model, cur)
            with torch.no_grad():
                adv = search.success(g.logits)
                norm = threat.distance(cur, x)
                better = adv & (norm < best_norm)
                best_norm = torch.where(better, norm, best_norm)
                best_x = torch.where(row_mask(better, x), cur, best_x)
                if k == self.steps:
                    break
                gamma = cosine_decay(self.gamma_init, self.gamma_final, k, self.steps)
                alpha = cosine_decay(self.alpha_init, alpha_final, k, self.steps)
                grad = g.grad.flatten(1).float()
                gap = (-g.loss.float()).clamp_min(0.0) / torch.linalg.vector_norm(grad, ord=dual, dim=1).clamp_min(
                    _TINY)
                found = torch.isfinite(best_norm)
                radius = torch.where(
                    adv, torch.minimum(radius * (1 - gamma), best_norm),
                    torch.where(found, radius * (1 + gamma), torch.maximum(norm + gap.to(norm.dtype),
                                                                           radius * (1 + gamma))),
                )
                step = grad / torch.linalg.vector_norm(grad, dim=1, keepdim=True).clamp_min(_TINY)
                moved = cur + alpha * step.view_as(cur).to(cur.dtype)
                cur = threat.with_eps(radius).project(moved, x)
        return minimum_norm_result(model, problem, best_x, best_norm, cur, queries=self.steps + 1)
