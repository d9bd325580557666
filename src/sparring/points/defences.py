r"""Input-side point-cloud defences and the intrinsic-feature stage, as modules placed before a classifier.

* **Statistical outlier removal** (SOR; Rusu et al. 2008, as a defence in DUP-Net, Zhou et al., ICCV 2019):
  for each point the mean distance d_i to its k nearest other points; points with d_i > μ + α·σ (μ, σ over
  the cloud) are removed. DUP-Net's defaults: k = 2, α = 1.1. Deterministic.
* **Simple random sampling** (SRS; Yang et al. 2019, as evaluated in IF-Defense, Wu et al. 2020): remove a
  random ``fraction`` of the points at every forward pass (IF-Defense drops 500 of 1024, ≈ 0.5). A
  randomized defence: the evaluation's determinism check flags it, which is right; an honest attack on it
  needs expectation over transformation.
* **Intrinsic features** (MAPR, ``methods.md`` §6.2): ``[xyz, σ at k ∈ ks, diffusion displacements]``
  recomputed from the coordinates at every forward pass, so an attack on the coordinates differentiates
  through the feature extraction (the adaptive attack). :func:`features_detached` gives the non-adaptive
  view, in which the features are constants to the attacker: the gradient-masked evaluation to compare with.

Removal keeps the cloud's shape (batches need one size): removed points become copies of their nearest kept
point (:func:`sparring.points.data.fill_removed`). Gradients flow to the kept points, so a white-box attack
on a defended model goes through the defence (BPDA with the identity on kept points, for free).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from sparring.errors import ConfigError
from sparring.points.data import fill_removed
from sparring.points.geometry import intrinsic_features, knn

DEFENCES = ("none", "sor", "srs")


class OutlierRemoval(nn.Module):
    """SOR: remove points whose mean distance to their ``k`` nearest others exceeds μ + ``alpha``·σ."""

    def __init__(self, *, k: int = 2, alpha: float = 1.1) -> None:
        super().__init__()
        if k < 1:
            raise ConfigError(f"outlier removal needs k >= 1 neighbours, got {k}")
        self.k, self.alpha = k, alpha

    def keep_mask(self, points: Tensor) -> Tensor:
        """(B, N) bool: the points SOR keeps."""
        with torch.no_grad():
            _, dist2 = knn(points[..., :3], min(self.k, points.shape[1] - 1), include_self=False)
            d = dist2.clamp_min(0).sqrt().mean(-1)  # (B, N)
            mu, sigma = d.mean(1, keepdim=True), d.std(1, keepdim=True)
            return d <= mu + self.alpha * sigma

    def forward(self, points: Tensor) -> Tensor:
        if points.shape[1] < 2:
            return points
        return fill_removed(points, self.keep_mask(points))


class RandomResampling(nn.Module):
    """SRS: remove a uniformly random ``fraction`` of each cloud's points at every call (own generator)."""

    def __init__(self, *, fraction: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= fraction < 1.0:
            raise ConfigError(f"random resampling removes a fraction in [0, 1) of the points, got {fraction}")
        self.fraction = fraction
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, points: Tensor) -> Tensor:
        b, n = points.shape[:2]
        drop = int(self.fraction * n)
        if drop == 0:
            return points
        keys = torch.rand(b, n, generator=self.generator).to(points.device)
        keep = keys.argsort(dim=1).argsort(dim=1) >= drop  # rank of each point's key; the `drop` smallest go
        return fill_removed(points, keep)


def make_defence(name: str) -> nn.Module:
    """A defence by name: ``"none"`` (identity), ``"sor"`` or ``"srs"`` with their papers' defaults."""
    if name == "none":
        return nn.Identity()
    if name == "sor":
        return OutlierRemoval()
    if name == "srs":
        return RandomResampling()
    raise ConfigError(f"unknown point-cloud defence {name!r}; available: {', '.join(DEFENCES)}")


class IntrinsicFeatures(nn.Module):
    """xyz (B, N, 3) -> [xyz, σ at each k of ``ks``, diffusion displacement at each step] (B, N, 3 + F).

    Defaults (MAPR reconstruction, ``methods.md`` §6.2): σ at k ∈ {8, 16, 32}, lazy diffusion α = 0.5 on the
    16-NN graph for s ∈ {1, 2, 4}: F = 6. Neighbourhoods larger than a cloud shrink to its size. With
    ``detach`` set the features are computed the same way but carry no gradient (the non-adaptive view).
    """

    def __init__(
        self, *, ks: Sequence[int] = (8, 16, 32), diffusion_steps: Sequence[int] = (1, 2, 4), k_diffusion: int = 16,
        alpha: float = 0.5,
    ) -> None:
        super().__init__()
        self.ks, self.diffusion_steps = tuple(ks), tuple(diffusion_steps)
        self.k_diffusion, self.alpha = k_diffusion, alpha
        self.detach = False

    @property
    def features(self) -> int:
        return len(self.ks) + len(self.diffusion_steps)

    def forward(self, points: Tensor) -> Tensor:
        n = points.shape[1]
        if n < 3:
            raise ValueError(f"intrinsic features need clouds of at least 3 points, got {n}")
        xyz = points[..., :3]
        feats = intrinsic_features(  # a neighbourhood larger than the cloud becomes the whole cloud
            xyz.detach() if self.detach else xyz, ks=tuple(min(k, n) for k in self.ks),
            diffusion_steps=self.diffusion_steps, k_diffusion=min(self.k_diffusion, n - 1), alpha=self.alpha,
        )
        return torch.cat([points, feats], dim=-1)


class PointInput(nn.Module):
    """What a point model does before its first layer: the defence, then (optionally) intrinsic features."""

    def __init__(self, *, channels: int, intrinsic: bool, defence: str, model: str) -> None:
        super().__init__()
        if intrinsic and channels != 3:
            raise ConfigError(f"{model} with intrinsic features takes xyz clouds (N, 3), got {channels} channels")
        self.defence = make_defence(defence)
        self.features = IntrinsicFeatures() if intrinsic else None
        self.channels = channels + (self.features.features if self.features is not None else 0)

    def forward(self, points: Tensor) -> Tensor:
        points = self.defence(points)
        return points if self.features is None else self.features(points)


@contextlib.contextmanager
def features_detached(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model's intrinsic features carry no gradient: a non-adaptive attacker's view.

    Predictions are unchanged; only input gradients lose the path through the feature extraction. Comparing
    robust accuracy under this view with the default (adaptive) one shows how much of a defence's gain is
    gradient masking (``methods.md`` §6.3).
    """
    stages = [m for m in model.modules() if isinstance(m, IntrinsicFeatures)]
    before = [m.detach for m in stages]
    for m in stages:
        m.detach = True
    try:
        yield model
    finally:
        for m, value in zip(stages, before, strict=True):
            m.detach = value


__all__ = [
    "DEFENCES", "IntrinsicFeatures", "OutlierRemoval", "PointInput", "RandomResampling", "features_detached",
    "make_defence",
]
