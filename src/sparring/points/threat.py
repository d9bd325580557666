"""A point-budget threat model for point clouds: change at most ⌊ε⌋ points, each within ``radius`` of the cloud.

    S(x) = { x' ∈ R^{N×3} :  #{i : x'_i ≠ x_i} ≤ ⌊ε⌋   and   max_i min_j ‖x'_i − x_j‖₂ ≤ radius }

The first condition counts changed rows of the (B, N, 3) cloud (an L0 budget over points); the second is the
one-sided Hausdorff distance from x' to x. Together they describe the attacks that remove or add points
rather than nudge every coordinate:

* **point dropping** (Zheng, Chen, Fu, Chen & Lin, "PointCloud Saliency Maps", ICCV 2019): removing k points.
  Batched clouds keep one size, so a removed point becomes a copy of its nearest kept point
  (:func:`sparring.points.data.fill_removed`): k changed rows at Hausdorff distance 0 (``radius = 0``).
* **point adding** (Xiang, Qi & Li, "Generating 3D Adversarial Point Clouds", CVPR 2019): k new points near
  the surface, written into k slots of the cloud: k changed rows within ``radius`` of the cloud.

Norm-ball threats (L∞, L2) bound how far every point moves; this one bounds how many points change and how
far from the object a changed point may lie, which is the budget those papers report. ε may be a float or
a per-sample (B,) tensor like every threat; it is floored (ε = 3.7 allows 3 points). ``bounds`` default to
None (coordinates have no box). Rows are compared over all their channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from sparring.errors import DataError, ThreatModelError
from sparring.threat import THREATS, Radius, ThreatModel

_TINY = 1e-12


def _check_cloud(x: Tensor) -> None:
    if x.dim() != 3:
        raise ThreatModelError(f"a point-set threat needs point clouds (B, N, C), got shape {tuple(x.shape)}")


def _row_distances(a: Tensor, b: Tensor) -> Tensor:
    """(B, N, M) Euclidean distances between the rows of a (B, N, C) and b (B, M, C), computed exactly.

    The matrix-product shortcut of ``cdist`` cancels badly for nearby points (errors ~1e-4 at unit scale),
    which would break ``contains`` at atol 1e-5 and make duplicates look distinct.
    """
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def descending_rank(score: Tensor) -> Tensor:
    """(B, N) int64: the rank of each entry of ``score`` (B, N) in its row, 0 for the largest; ties go to the
    lower index, so the result is deterministic. ``rank < k[:, None]`` selects a per-sample top-k batched."""
    order = score.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(score.shape[1], device=score.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def point_set_of(threat: ThreatModel, x: Tensor, attack: str) -> PointSet:
    """``threat`` as a :class:`PointSet` for the attack named ``attack`` on clouds ``x``; else a clear error."""
    if not isinstance(threat, PointSet):
        raise ThreatModelError(
            f"{attack} needs a PointSet threat (a budget of changed points), got {type(threat).__name__}: "
            f"use sparring.points.threat.PointSet(eps=<points>, radius=<distance>)"
        )
    if x.dim() != 3 or x.shape[-1] < 3:
        raise DataError(f"{attack} needs point clouds (B, N, 3), got shape {tuple(x.shape)}")
    return threat


@THREATS.register("points")
@dataclass(frozen=True, kw_only=True)
class PointSet(ThreatModel):
    """At most ⌊ε⌋ changed points per cloud (B, N, C), each within ``radius`` (L2) of some point of the cloud.

    Attributes:
        eps: the point budget, a float or a per-sample (B,) tensor (floored).
        radius: how far (L2) a changed point may lie from the clean cloud (one-sided Hausdorff distance);
            0 allows only duplicates of existing points, i.e. point removal.
        bounds: optional box for the coordinates (default None).

    Generic steepest-ascent attacks (FGSM, PGD, APGD) do not apply (:meth:`step` raises): use
    ``point_drop`` or ``point_add``.
    """

    bounds: tuple[float, float] | None = None
    radius: float = 0.0
    norm: ClassVar[str] = "points"
    steppable: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        radius = self.radius
        if isinstance(radius, bool) or not isinstance(radius, int | float) or not math.isfinite(radius) or radius < 0:
            raise ThreatModelError(f"radius must be a finite number >= 0 (an L2 distance), got {radius!r}")

    # ------------------------------------------------------------------ helpers
    def budget(self, x: Tensor) -> Tensor:
        """(B,) int64: ⌊ε⌋ per sample, at most N."""
        _check_cloud(x)
        return self.eps_for(x).flatten().floor().clamp(0, x.shape[1]).long()

    def changed(self, x_adv: Tensor, x: Tensor, atol: float = 0.0) -> Tensor:
        """(B, N) bool: the rows that moved by more than ``atol`` (L2)."""
        _check_cloud(x)
        return torch.linalg.vector_norm(x_adv - x, dim=-1) > atol

    def hausdorff(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """(B,) one-sided Hausdorff distance max_i min_j ‖x_adv_i − x_j‖₂."""
        _check_cloud(x)
        return _row_distances(x_adv, x).amin(dim=2).amax(dim=1)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "radius": float(self.radius)}

    # ------------------------------------------------------------- the geometry
    def distance(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """(B,) the number of changed rows, as a float (compared with ε)."""
        return self.changed(x_adv, x).sum(dim=1).to(x.dtype)

    def contains(self, x_adv: Tensor, x: Tensor, atol: float = 1e-5) -> Tensor:
        """(B,) bool: ≤ ⌊ε⌋ rows moved by more than ``atol``, Hausdorff ≤ radius + atol, inside the box."""
        inside = self.changed(x_adv, x, atol).sum(dim=1) <= self.budget(x)
        inside &= self.hausdorff(x_adv, x) <= self.radius + atol
        if self.bounds is not None:
            lo, hi = self.bounds
            flat = x_adv.flatten(1)
            inside &= (flat >= lo - atol).all(1) & (flat <= hi + atol).all(1)
        return inside

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Keep the ⌊ε⌋ most displaced rows (the others reset to x), then pull each kept row to within
        ``radius`` of its nearest point of x; finally clip to the box.

        The set is not convex, so this is a projection heuristic rather than the exact nearest point; each
        stage maps into the set: resetting rows fixes the count, the pull and the box clip (a projection onto
        a convex set that contains the nearest clean point) never increase a row's distance to the cloud.
        """
        _check_cloud(x)
        shift = torch.linalg.vector_norm(x_adv - x, dim=-1)  # (B, N)
        moved = (descending_rank(shift) < self.budget(x).unsqueeze(1)) & (shift > 0)
        out = torch.where(moved.unsqueeze(-1), x_adv, x)
        with torch.no_grad():  # which clean point is nearest is a discrete choice
            nearest = _row_distances(out, x).argmin(dim=2)  # (B, N)
        anchor = x.gather(1, nearest.unsqueeze(-1).expand_as(x))
        offset = out - anchor
        length = torch.linalg.vector_norm(offset, dim=-1, keepdim=True).clamp_min(_TINY)
        pulled = anchor + offset * torch.clamp(self.radius / length, max=1.0)
        return self.clip_box(torch.where(moved.unsqueeze(-1), pulled, x))

    def random_start(self, x: Tensor, generator: torch.Generator | None = None, *, streams: object = None) -> Tensor:
        """x itself (a copy). Which points to change is the attack's main decision (saliency for dropping,
        gradient norms for adding), and a random subset of moved points would spend the budget on points the
        attack then has to un-pick; ``point_add`` draws its own random start inside the radius-ball around
        each added point's seed."""
        _check_cloud(x)
        return x.clone()

    def step(self, grad: Tensor, step_size: Radius) -> Tensor:
        raise ThreatModelError(
            "a PointSet threat (a budget of changed points) has no steepest-ascent step, so generic attacks "
            "(FGSM, PGD, APGD, Square) do not apply: use the point_drop or point_add attack, or a norm-ball "
            "threat (LinfBall / L2Ball with bounds=None) for coordinate perturbations"
        )
