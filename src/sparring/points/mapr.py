r"""MAPR: manifold-aligned regularization for intrinsic point-cloud robustness, without adversarial training.

Alonso, Li & Li, "Beyond Defenses: Manifold-Aligned Regularization for Intrinsic 3D Point Cloud Robustness",
arXiv 2605.07590 (2026). The paper's body and code are not public; this is the reconstruction of
``methods.md`` §6.2:

    L = CE(f(P ⊕ F(P)), y) + μ · D( softmax(f(P ⊕ F(P)) / T), softmax(f(T(P) ⊕ F(T(P))) / T) )

* ``P ⊕ F(P)``: the cloud with its intrinsic features (surface variation at several scales, graph-diffusion
  displacements). The features live in the model (``pointnet`` / ``dgcnn`` with ``intrinsic: true``), which
  recomputes them from xyz in every forward pass: after the perturbation here, and inside every attack, so
  evaluations differentiate through them (no masked gradients).
* ``T``: an intrinsic, geometry-preserving perturbation, composed of tangent-plane jitter (each point slides
  in its PCA tangent plane by N(0, (c·r_i)²), r_i its mean kNN distance; no normal-direction noise), a random
  resampling (a random subset of the points), a small rotation and an isotropic scaling.
* ``D``: KL(clean ‖ perturbed) (default) or Jensen–Shannon; μ ≈ 1, T = 1.

Defaults (reconstructed; the paper's are unknown): μ = 1, T = 1, KL, jitter c = 0.2 with k = 16, keep 90% of
the points, rotations up to 0.1 rad (≈ 6°), scales in [0.9, 1.1]. Gradients flow through both branches, as
in TRADES' code; ``detach_clean=True`` makes the clean prediction a fixed target. Batch independence holds for
batches of one size (the random draws are taken for the whole batch at once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparring.errors import ConfigError, DataError
from sparring.losses import cross_entropy, js_divergence, kl_to_reference
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from sparring.points.defences import IntrinsicFeatures
from sparring.points.geometry import random_rotation, random_scale, resample, tangent_jitter

log = logging.getLogger(__name__)


@OBJECTIVES.register("mapr")
@dataclass(kw_only=True)
class MAPR(Objective):
    """CE on the feature-augmented cloud plus μ times a divergence to its intrinsically perturbed copy.

    Attributes:
        mu: weight μ of the consistency term (0: plain training on the feature-augmented input).
        temperature: T of both softmaxes in the consistency term.
        divergence: ``"kl"`` (KL(clean ‖ perturbed)) or ``"js"``.
        jitter: tangent-jitter scale c, relative to each point's mean kNN distance (0: off).
        jitter_k: neighbours of the tangent frame and of the radius.
        keep: fraction of the points kept by the random resampling (1: off).
        max_angle: largest rotation angle in radians (0: off).
        scale: isotropic scale range (low, high) ((1, 1): off).
        detach_clean: stop the consistency gradient through the clean branch.
    """

    name = "mapr"
    inputs: ClassVar[str] = "points"
    mu: float = 1.0
    temperature: float = 1.0
    divergence: Literal["kl", "js"] = "kl"
    jitter: float = 0.2
    jitter_k: int = 16
    keep: float = 0.9
    max_angle: float = 0.1
    scale: tuple[float, float] = (0.9, 1.1)
    detach_clean: bool = False
    _warned: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mu < 0 or self.temperature <= 0 or self.jitter < 0 or self.max_angle < 0 or self.jitter_k < 1:
            raise ConfigError("mapr needs mu >= 0, temperature > 0, jitter >= 0, jitter_k >= 1 and max_angle >= 0")
        if self.divergence not in ("kl", "js"):
            raise ConfigError(f"mapr divergence must be 'kl' or 'js', got {self.divergence!r}")
        if not 0.0 < self.keep <= 1.0:
            raise ConfigError(f"mapr keep must be a fraction in (0, 1], got {self.keep}")
        low, high = self.scale
        if not 0.0 < low <= high:
            raise ConfigError(f"mapr scale must be (low, high) with 0 < low <= high, got {self.scale}")

    def perturb(self, points: Tensor, generator: torch.Generator | None) -> Tensor:
        """T(P): tangent jitter, resampling, rotation and scaling of clouds (B, N, 3) -> (B, M, 3), M = ⌈keep·N⌉."""
        n = points.shape[1]
        if self.jitter > 0:
            points = tangent_jitter(points, k=min(self.jitter_k, n - 2), scale=self.jitter, generator=generator)
        m = max(3, int(round(self.keep * n)))
        if m < n:
            points = resample(points, m, generator=generator)
        if self.max_angle > 0:
            points = random_rotation(points, max_angle=self.max_angle, generator=generator)
        if self.scale != (1.0, 1.0):
            points = random_scale(points, low=self.scale[0], high=self.scale[1], generator=generator)
        return points

    def consistency(self, clean: Tensor, perturbed: Tensor) -> Tensor:
        """D between the tempered predictions, per example (B,)."""
        if self.detach_clean:
            clean = clean.detach()
        if self.divergence == "js":
            return js_divergence(clean, perturbed, self.temperature)
        reference = F.softmax(clean.float() / self.temperature, dim=1)
        return kl_to_reference(perturbed.float() / self.temperature, reference)

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        if x.dim() != 3 or x.shape[-1] != 3 or x.shape[1] < 4:
            raise DataError(f"mapr trains on point clouds (B, N, 3) of at least 4 points, got {tuple(x.shape)}")
        if not self._warned and not any(isinstance(m, IntrinsicFeatures) for m in model.modules()):
            log.warning("mapr: the model computes no intrinsic features (set intrinsic: true on pointnet / dgcnn); "
                        "training with the consistency term only")
            self._warned = True
        clean = model(x)
        ce = cross_entropy(clean, y)
        if self.mu == 0:
            return ObjectiveOutput(loss=ce, logits=clean, metrics={})
        with torch.no_grad():
            moved = self.perturb(x, generator)
        perturbed = model(moved)  # features recomputed on the perturbed cloud, inside the model
        d = self.consistency(clean, perturbed)
        return ObjectiveOutput(
            loss=ce + self.mu * d,
            logits=clean,
            metrics={"consistency": d.detach().mean(), "perturbed_accuracy": (perturbed.argmax(1) == y).float().mean()},
        )


__all__ = ["MAPR"]
