"""The kNN attack (Tsai, Yang, Chen, Lin & Chen, "Robust Adversarial Objects against Deep Learning Models",
AAAI 2020): coordinate perturbations kept smooth by a k-nearest-neighbour distance penalty.

    max_{x' ∈ B(x, ε)}  L(f(x'), y) − λ · D_kNN(x'),      D_kNN(x') = (1/N) Σ_i max(0, d_i − (μ + κσ))

where d_i is the mean distance of point i to its k nearest other points and μ, σ are the mean and standard
deviation of d over the cloud's points: points pushed off the surface (outliers, which statistical outlier
removal would delete and a printed object would not have) are penalized. Reconstructed as PGD in the threat's
norm ball (L∞ / L2 / per-token, ``bounds=None``; the paper optimizes a C&W objective with Chamfer and kNN
terms):

    x'^{t+1} = Π_{B(x,ε)}( x'^t + α · step(∇ L − λ ∇ D_kNN) )

The model-loss gradient comes from the attack's gradient source; ∇D_kNN is autograd on x' alone (no model
call). Defaults: k = 5, κ = 1.1, λ = ``smoothness`` = 1.0, 50 steps of α = 2.5 ε / steps, a random start.
Iterates are ranked by (success, L − λ D_kNN), so among successful iterates the smoother one at equal loss
wins; the reported ``loss`` is the model loss L alone. Restarts as in :class:`~sparring.attacks.pgd.PGD`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from sparring.attacks.base import ATTACKS, AttackInputs, AttackResult, Problem
from sparring.attacks.pgd import PGD
from sparring.errors import ConfigError, DataError, ThreatModelError
from sparring.points.geometry import knn
from sparring.points.threat import PointSet

_TINY = 1e-12


def knn_penalty(points: Tensor, *, k: int = 5, kappa: float = 1.1) -> Tensor:
    """(B,) D_kNN = mean_i max(0, d_i − (μ + κσ)) for clouds (B, N, C) (on the xyz channels); differentiable."""
    _, dist2 = knn(points[..., :3], k, include_self=False)  # (B, N, k) squared distances
    d = dist2.clamp_min(_TINY).sqrt().mean(dim=-1)  # (B, N); the clamp keeps sqrt's gradient finite
    mu = d.mean(dim=1, keepdim=True)
    sigma = d.std(dim=1, keepdim=True, correction=0)
    return torch.relu(d - (mu + kappa * sigma)).mean(dim=1)


@ATTACKS.register("knn")
@dataclass(kw_only=True)
class KNNAttack(PGD):
    """PGD on ``L − λ D_kNN`` for point clouds (B, N, 3) in a norm-ball threat.

    Attributes (besides PGD's: steps, restarts, rel_step, step_size, random_start, keep_best):
        k: neighbours in the kNN distance d_i.
        kappa: outlier threshold μ + κσ, in standard deviations.
        smoothness: the penalty weight λ (0 gives plain PGD).
    """

    name = "knn"
    inputs: ClassVar[AttackInputs] = "points"
    steps: int = 50
    k: int = 5
    kappa: float = 1.1
    smoothness: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if not self.smoothness >= 0:
            raise ConfigError(f"smoothness must be >= 0, got {self.smoothness}")

    def penalty(self, points: Tensor) -> Tensor:
        """(B,) λ-free D_kNN of ``points`` in fp32 (autocast off: the neighbour search needs full precision)."""
        with torch.autocast(device_type=points.device.type, enabled=False):
            return knn_penalty(points.float(), k=self.k, kappa=self.kappa)

    def _run(self, model: nn.Module, problem: Problem, generator: torch.Generator | None) -> AttackResult:
        x = problem.x
        if isinstance(problem.threat, PointSet):
            raise ThreatModelError(
                "the knn attack moves coordinates within a norm ball (LinfBall / L2Ball with bounds=None); "
                "for a PointSet threat use point_drop or point_add"
            )
        if x.dim() != 3 or x.shape[-1] < 3:
            raise DataError(f"the knn attack needs point clouds (B, N, 3), got shape {tuple(x.shape)}")
        if not self.k < x.shape[1]:
            raise DataError(f"the knn attack with k={self.k} needs clouds of more than k points, got {x.shape[1]}")
        result = super()._run(model, problem, generator)
        if result.logits is not None:  # ranked by the penalized objective; report the model loss
            with torch.no_grad():
                result.loss = problem.loss_fn(result.logits, problem.loss_ref)
        return result

    def _ranked(self, loss: Tensor, x_adv: Tensor) -> Tensor:
        with torch.no_grad():
            return loss - self.smoothness * self.penalty(x_adv).to(loss.dtype)

    def _ascent(self, grad: Tensor, x_adv: Tensor) -> Tensor:
        points = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            (g_penalty,) = torch.autograd.grad(self.penalty(points).sum(), points)
        return grad - self.smoothness * g_penalty.to(grad.dtype)
