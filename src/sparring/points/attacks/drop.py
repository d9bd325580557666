"""Saliency point dropping (Zheng, Chen, Fu, Chen & Lin, "PointCloud Saliency Maps", ICCV 2019).

Saliency of point p_i for the loss L, with c the per-axis median of the kept points and r_i = ‖p_i − c‖:

    s_i = −r_i^{1+α} ∂L/∂r_i,        ∂L/∂r_i = ∇_{p_i} L · (p_i − c) / r_i

Shifting p_i to the centre c, where it no longer shapes the object, changes the loss by about −r_i ∂L/∂r_i;
α > 0 re-weights that first-order estimate towards far points. The points of highest saliency are those whose
removal raises the loss most. Iterative dropping with a per-sample budget k = ⌊ε⌋ (a
:class:`~sparring.points.threat.PointSet` threat): over T rounds, drop ⌈k/T⌉ more points per round (never
beyond k) with the highest saliency among the kept points, recomputing the gradient on the reduced cloud.
Defaults: α = 1 (the paper's), T = ``iterations`` = 10.

* **Removal as duplication**: batched clouds keep one size, so the reduced cloud is
  :func:`~sparring.points.data.fill_removed` ``(x, keep)``: each dropped point becomes a copy of its nearest
  kept point (k changed rows, Hausdorff distance 0). For a max-pooled model (PointNet) that *is* removal.
* **Attribution**: a kept point appears in the reduced cloud once per dropped point it stands in for, so the
  gradients of its copies are summed onto it (scatter-add by ``nearest_kept``) before its saliency is taken:
  a point's duplicates go with it. Dropped points are never candidates again.
* At least one point is kept (k ≤ N − 1). The result is deterministic (``generator`` is unused); each
  sample's drops depend on its own gradients only. Queries: ``iterations`` gradients + 1 scoring pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sparring.attacks.base import ATTACKS, Attack, AttackInputs, AttackResult, Problem
from sparring.errors import ConfigError
from sparring.points.data import fill_removed, gather_points, nearest_kept
from sparring.points.threat import descending_rank, point_set_of

_TINY = 1e-12


@ATTACKS.register("point_drop")
@dataclass(kw_only=True)
class PointDrop(Attack):
    """Drop ⌊ε⌋ points per cloud (B, N, 3), most salient first, over ``iterations`` rounds.

    Attributes:
        iterations: rounds T; each recomputes the gradient and drops ⌈k/T⌉ more points.
        alpha: the saliency exponent α in ``s = −r^{1+α} ∂L/∂r`` (paper: 1).
    """

    name = "point_drop"
    inputs: ClassVar[AttackInputs] = "point_set"
    iterations: int = 10
    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if not self.alpha >= 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")

    def _run(self, model: nn.Module, problem: Problem, generator: torch.Generator | None) -> AttackResult:
        x = problem.x  # (B, N, C), xyz first
        threat = point_set_of(problem.threat, x, self.name)
        b, n = x.shape[:2]
        budget = threat.budget(x).clamp(max=n - 1)  # (B,); one point must remain to stand in for the others
        per_round = (budget + self.iterations - 1) // self.iterations
        keep = torch.ones(b, n, dtype=torch.bool, device=x.device)
        xyz = x[..., :3]
        for t in range(self.iterations):
            source = nearest_kept(x, keep)  # (B, N): the kept point each row is a copy of
            reduced = gather_points(x, source)  # = fill_removed(x, keep)
            grad = problem.query(self.gradients, model, reduced, scores=False).grad
            with torch.no_grad():
                # Each kept point collects the gradients of all its copies.
                grad = torch.zeros_like(x).scatter_add_(1, source.unsqueeze(-1).expand_as(grad), grad)[..., :3]
                masked = xyz.masked_fill(~keep.unsqueeze(-1), float("nan"))
                centre = masked.nanmedian(dim=1, keepdim=True).values  # (B, 1, 3), over kept points only
                offset = xyz - centre
                r = torch.linalg.vector_norm(offset, dim=-1).clamp_min(_TINY)  # (B, N)
                dl_dr = (grad * offset).sum(-1) / r
                saliency = (-(r ** (1.0 + self.alpha)) * dl_dr).masked_fill(~keep, float("-inf"))
                need = torch.minimum(budget, per_round * (t + 1)) - (~keep).sum(1)  # (B,) more to drop now
                keep &= descending_rank(saliency) >= need.unsqueeze(1)
        x_adv = fill_removed(x, keep)
        if not self.score:
            return AttackResult(x_adv=x_adv, success=None, loss=None, logits=None, queries=self.iterations, time_s=0.0)
        with torch.no_grad():
            logits = model(x_adv)
            loss = problem.loss_fn(logits, problem.loss_ref)
        return AttackResult(
            x_adv=x_adv, success=problem.success(logits), loss=loss, logits=logits,
            queries=self.iterations + 1, time_s=0.0,
        )
