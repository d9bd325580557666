"""Streaming ridge regression from hidden states to input gradients (the fitter of gradient prediction).

Gradient prediction (methods.md §1.3) maps a hidden state ``h ∈ R^p`` to the input gradient ``g ∈ R^q``
with an affine map fitted by ridge regression on calibration pairs:

    ĝ(h) = μ_g + ((h − μ_h) / σ_h) · W,     W = argmin ‖H̃ W − G̃‖²_F + λ n ‖W‖²_F = (S_hh + λ I)⁻¹ S_hg

where H̃ = (H − μ_h)/σ_h and G̃ = G − μ_g are centred (and H standardized), S_hh = H̃ᵀH̃ / n and
S_hg = H̃ᵀG̃ / n; the bias μ_g is the unpenalized intercept. With standardized features diag(S_hh) = 1,
so one grid of λ serves every layer and model.

:class:`RidgeAccumulator` never holds the data: it accumulates n, Σh, Σg, HᵀH and HᵀG in float64 as
batches stream by (rows may be samples or, for sequences, token positions), and :meth:`solve` turns the
sums into centred, standardized moments and solves with a Cholesky factorisation. :func:`choose_lambda`
picks λ by the mean cosine similarity between predicted and true gradients on held-out pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sparring.errors import ConfigError, DataError

DEFAULT_LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
_TINY = 1e-12


@dataclass
class RidgeMap:
    """A fitted affine map ``ĝ = μ_g + ((h − μ_h) / σ_h) W`` (float32 for prediction)."""

    weight: Tensor  # (p, q)
    mean_h: Tensor  # (p,)
    scale_h: Tensor  # (p,)
    mean_g: Tensor  # (q,)
    lam: float

    def __call__(self, h: Tensor) -> Tensor:
        """(N, p) hidden states → (N, q) predicted gradients."""
        z = (h.to(self.weight.dtype) - self.mean_h) / self.scale_h
        return self.mean_g + z @ self.weight

    def to(self, device: torch.device | str) -> RidgeMap:
        return RidgeMap(self.weight.to(device), self.mean_h.to(device), self.scale_h.to(device),
                        self.mean_g.to(device), self.lam)

    def state_dict(self) -> dict[str, Tensor]:
        return {"weight": self.weight, "mean_h": self.mean_h, "scale_h": self.scale_h, "mean_g": self.mean_g,
                "lam": torch.tensor(self.lam, dtype=torch.float64)}

    @staticmethod
    def from_state_dict(state: dict[str, Tensor]) -> RidgeMap:
        return RidgeMap(weight=state["weight"], mean_h=state["mean_h"], scale_h=state["scale_h"],
                        mean_g=state["mean_g"], lam=float(state["lam"]))


class RidgeAccumulator:
    """Running sums of a ridge problem in float64; add batches, then :meth:`solve` for any λ.

    Args:
        features: p, the hidden-state dimension.
        targets: q, the gradient dimension.
        device: where the (p × p) and (p × q) sums live (the hidden states' device is fine).
    """

    def __init__(self, features: int, targets: int, *, device: torch.device | str = "cpu") -> None:
        if features < 1 or targets < 1:
            raise ConfigError(f"features and targets must be >= 1, got {features} and {targets}")
        self.features, self.targets = features, targets
        kw = {"dtype": torch.float64, "device": device}
        self.n: float = 0
        self.sum_h = torch.zeros(features, **kw)
        self.sum_g = torch.zeros(targets, **kw)
        self.hth = torch.zeros(features, features, **kw)
        self.htg = torch.zeros(features, targets, **kw)

    def add(self, h: Tensor, g: Tensor) -> None:
        """Accumulate rows: ``h`` (N, p) hidden states and ``g`` (N, q) their true gradients."""
        if h.dim() != 2 or g.dim() != 2 or h.shape[0] != g.shape[0]:
            raise DataError(f"expected h (N, p) and g (N, q) with the same N, got {tuple(h.shape)}, {tuple(g.shape)}")
        if h.shape[1] != self.features or g.shape[1] != self.targets:
            raise DataError(f"expected p={self.features}, q={self.targets}, got {h.shape[1]}, {g.shape[1]}")
        if not (torch.isfinite(h).all() and torch.isfinite(g).all()):
            raise DataError("hidden states or gradients contain NaN or infinite values")
        h64, g64 = h.detach().to(self.hth), g.detach().to(self.hth)
        self.n += h.shape[0]
        self.sum_h += h64.sum(0)
        self.sum_g += g64.sum(0)
        self.hth.addmm_(h64.T, h64)
        self.htg.addmm_(h64.T, g64)

    def solve(self, lam: float) -> RidgeMap:
        """The ridge map for penalty ``lam`` (relative to the standardized features: diag(S_hh) = 1)."""
        if self.n < 2:
            raise DataError(f"a ridge fit needs at least 2 rows, got {self.n}")
        if not lam > 0:
            raise ConfigError(f"lambda must be > 0, got {lam}")
        n = float(self.n)
        mean_h, mean_g = self.sum_h / n, self.sum_g / n
        cov_hh = self.hth / n - torch.outer(mean_h, mean_h)  # centred second moments
        cov_hg = self.htg / n - torch.outer(mean_h, mean_g)
        scale = cov_hh.diagonal().clamp_min(0).sqrt().clamp_min(_TINY)  # constant features get scale ~0 …
        constant = cov_hh.diagonal() <= _TINY
        scale = torch.where(constant, torch.ones_like(scale), scale)  # … and are left unscaled (they centre to 0)
        s_hh = cov_hh / torch.outer(scale, scale)
        s_hg = cov_hg / scale[:, None]
        system = s_hh + lam * torch.eye(self.features, dtype=s_hh.dtype, device=s_hh.device)
        factor, info = torch.linalg.cholesky_ex(system)
        if int(info) != 0:  # numerically not positive definite: nudge the diagonal once
            factor = torch.linalg.cholesky(system + 1e-8 * torch.eye(self.features, dtype=s_hh.dtype,
                                                                    device=s_hh.device))
        weight = torch.cholesky_solve(s_hg, factor)
        return RidgeMap(weight=weight.float(), mean_h=mean_h.float(), scale_h=scale.float(), mean_g=mean_g.float(),
                        lam=float(lam))

    def decay_(self, factor: float) -> None:
        """Scale every sum by ``factor`` in [0, 1]: older rows count less (refits on a changing model)."""
        if not 0 <= factor <= 1:
            raise ConfigError(f"decay must be in [0, 1], got {factor}")
        self.n *= factor
        for total in (self.sum_h, self.sum_g, self.hth, self.htg):
            total.mul_(factor)

    def state_dict(self) -> dict[str, Tensor]:
        return {"acc_n": torch.tensor(float(self.n), dtype=torch.float64), "acc_sum_h": self.sum_h,
                "acc_sum_g": self.sum_g, "acc_hth": self.hth, "acc_htg": self.htg}

    @staticmethod
    def from_state_dict(state: dict[str, Tensor]) -> RidgeAccumulator:
        acc = RidgeAccumulator(state["acc_hth"].shape[0], state["acc_htg"].shape[1], device=state["acc_hth"].device)
        acc.n = float(state["acc_n"])
        acc.sum_h, acc.sum_g = state["acc_sum_h"].double(), state["acc_sum_g"].double()
        acc.hth, acc.htg = state["acc_hth"].double(), state["acc_htg"].double()
        return acc

    def merge(self, other: RidgeAccumulator) -> None:
        """Add another accumulator's sums (e.g. the held-out part after λ is chosen, or another rank's)."""
        if (other.features, other.targets) != (self.features, self.targets):
            raise DataError("cannot merge ridge accumulators of different shapes")
        self.n += other.n
        self.sum_h += other.sum_h.to(self.sum_h)
        self.sum_g += other.sum_g.to(self.sum_g)
        self.hth += other.hth.to(self.hth)
        self.htg += other.htg.to(self.htg)


def cosine(pred: Tensor, true: Tensor) -> Tensor:
    """(N,) cosine similarity of each predicted gradient row with the true one."""
    pred, true = pred.flatten(1).double(), true.flatten(1).double()
    return (pred * true).sum(1) / (pred.norm(dim=1) * true.norm(dim=1)).clamp_min(_TINY)


def sign_agreement(pred: Tensor, true: Tensor) -> Tensor:
    """(N,) fraction of coordinates where the predicted and the true gradient have the same sign."""
    return (torch.sign(pred.flatten(1)) == torch.sign(true.flatten(1))).double().mean(1)


def choose_lambda(
    fit: RidgeAccumulator, h_holdout: Tensor, g_holdout: Tensor, lambdas: Sequence[float] = DEFAULT_LAMBDAS
) -> tuple[RidgeMap, dict[float, float]]:
    """The map whose λ gives the highest mean held-out cosine, and the mean cosine of every λ tried."""
    if not lambdas:
        raise ConfigError("give at least one lambda")
    scores: dict[float, float] = {}
    best: RidgeMap | None = None
    for lam in lambdas:
        ridge = fit.solve(lam).to(h_holdout.device)
        scores[float(lam)] = float(cosine(ridge(h_holdout), g_holdout).mean())
        if best is None or scores[float(lam)] > scores[best.lam]:
            best = ridge
    assert best is not None
    return best, scores
