"""Threat models: the set of allowed perturbations around an input.

A threat model owns everything geometric about an attack and nothing about its optimizer:

* the ball ``B(x, ε) = {x' : ‖x' − x‖ ≤ ε}`` for the L∞, L2 or L1 norm, with ε a float or a per-sample
  tensor of shape (B,) (class-wise budgets, curricula, ε-curves all need per-sample radii);
* optional box bounds ``lo ≤ x' ≤ hi`` (pixels in [0, 1]); ``bounds=None`` for embedding or feature
  spaces that have no box;
* the projection onto ``B(x, ε) ∩ box``, a random start inside it, and the normalized ascent step
  (``sign(g)`` for L∞, ``g / ‖g‖₂`` for L2, the top-k coordinates of ``|g|`` for L1) that steepest ascent uses.

Norms are taken over all non-batch dimensions. Step sizes may be floats or (B,) tensors too.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from sparring.errors import ThreatModelError
from sparring.registry import Registry

if TYPE_CHECKING:
    from sparring.attacks.rng import SampleStreams

Radius = float | Tensor
THREATS: Registry[type[ThreatModel]] = Registry("threat model")

_TINY = 1e-12


def per_sample(value: Radius, x: Tensor) -> Tensor:
    """Broadcast a float or a (B,) tensor to shape (B, 1, ..., 1) matching ``x``."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            value = value.expand(x.shape[0])
        return value.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return torch.full((x.shape[0],) + (1,) * (x.dim() - 1), float(value), device=x.device, dtype=x.dtype)


def _tracked(*tensors: Tensor) -> bool:
    """Is autograd recording an op on these? (Then no in-place/``out=`` shortcuts.)"""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _flat_norm(v: Tensor, p: float) -> Tensor:
    """Per-sample norm over all non-batch dims, shape (B,)."""
    return torch.linalg.vector_norm(v.flatten(1), ord=p, dim=1)


@dataclass(frozen=True, kw_only=True)
class ThreatModel(ABC):
    """A norm ball of radius ``eps`` around each input, intersected with optional box ``bounds``."""

    eps: Radius
    bounds: tuple[float, float] | None = (0.0, 1.0)
    norm: ClassVar[str]
    # Does :meth:`step` exist? Norm balls: yes. Combinatorial sets (a point budget) have no steepest-ascent step:
    # gradient attacks such as PGD / APGD do not apply and the evaluation skips the checks that need them.
    steppable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        eps = self.eps
        if isinstance(eps, Tensor):
            if eps.dim() > 1:
                raise ThreatModelError(f"eps must be a float or a (B,) tensor, got shape {tuple(eps.shape)}")
            if not torch.isfinite(eps).all():
                raise ThreatModelError("eps contains NaN or infinite values")
            if (eps < 0).any():
                raise ThreatModelError(f"eps must be >= 0, got min {eps.min().item():g}")
        else:
            if not isinstance(eps, int | float) or isinstance(eps, bool):
                raise ThreatModelError(f"eps must be a float or a (B,) tensor, got {type(eps).__name__}")
            if not float(eps) >= 0.0 or float(eps) == float("inf"):
                raise ThreatModelError(f"eps must be a finite number >= 0, got {eps}")
        if self.bounds is not None:
            lo, hi = self.bounds
            if not lo < hi:
                raise ThreatModelError(f"bounds must satisfy lo < hi, got {self.bounds}")

    # ---------------------------------------------------------------- helpers
    def with_eps(self, eps: Radius) -> ThreatModel:
        """The same threat model with another radius (for ε-curves and subsets)."""
        return replace(self, eps=eps)

    def subset(self, index: Tensor) -> ThreatModel:
        """Restrict a per-sample ε to the rows ``index`` (a float ε is kept as is)."""
        if isinstance(self.eps, Tensor) and self.eps.dim() == 1:
            return replace(self, eps=self.eps[index.to(self.eps.device)])
        return self

    def eps_for(self, x: Tensor) -> Tensor:
        """ε broadcast against ``x``: shape (B, 1, ..., 1). Checks a per-sample ε has B entries."""
        if isinstance(self.eps, Tensor) and self.eps.dim() == 1 and self.eps.shape[0] != x.shape[0]:
            raise ThreatModelError(
                f"per-sample eps has {self.eps.shape[0]} entries but the batch has {x.shape[0]} samples"
            )
        return per_sample(self.eps, x)

    def max_eps(self) -> float:
        return float(self.eps.max()) if isinstance(self.eps, Tensor) and self.eps.numel() else float(self.eps)

    def clip_box(self, x: Tensor) -> Tensor:
        return x if self.bounds is None else x.clamp(*self.bounds)

    def _clip_box_(self, x: Tensor) -> Tensor:
        """:meth:`clip_box` in place, for a buffer the caller owns."""
        return x if self.bounds is None else x.clamp_(*self.bounds)

    def describe(self) -> dict[str, object]:
        eps = self.eps.tolist() if isinstance(self.eps, Tensor) else float(self.eps)
        return {"norm": self.norm, "eps": eps, "bounds": list(self.bounds) if self.bounds else None}

    def contains(self, x_adv: Tensor, x: Tensor, atol: float = 1e-5) -> Tensor:
        """(B,) bool: is each ``x_adv`` inside the threat set around ``x`` (up to ``atol``)?"""
        inside = self.distance(x_adv, x) <= self.eps_for(x).flatten() + atol
        if self.bounds is not None:
            lo, hi = self.bounds
            flat = x_adv.flatten(1)
            inside &= (flat >= lo - atol).all(1) & (flat <= hi + atol).all(1)
        return inside

    # ---------------------------------------------------------- the geometry
    @abstractmethod
    def distance(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """(B,) distance ‖x_adv − x‖ in this norm."""

    @abstractmethod
    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Map ``x_adv`` into ``B(x, ε) ∩ box``."""

    @abstractmethod
    def random_start(
        self, x: Tensor, generator: torch.Generator | None = None, *, streams: SampleStreams | None = None
    ) -> Tensor:
        """A random point of the threat set around ``x``; with ``streams`` (one per row, see
        :mod:`sparring.attacks.rng`) row i's draws depend on its stream alone, else they come from ``generator``."""

    @abstractmethod
    def step(self, grad: Tensor, step_size: Radius) -> Tensor:
        """The steepest-ascent displacement of length ``step_size`` in this norm for gradient ``grad``."""


@THREATS.register("linf")
@dataclass(frozen=True, kw_only=True)
class LinfBall(ThreatModel):
    """``‖δ‖∞ ≤ ε``: each coordinate moves by at most ε. Step: ``α · sign(g)``."""

    norm: ClassVar[str] = "linf"

    def distance(self, x_adv: Tensor, x: Tensor) -> Tensor:
        return _flat_norm(x_adv - x, float("inf"))

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        eps = self.eps_for(x)
        if _tracked(x_adv, x, eps):
            delta = torch.maximum(torch.minimum(x_adv - x, eps), -eps)
            return self.clip_box(x + delta)
        # The same arithmetic on one fresh buffer (the attack loop's hot path; nothing is differentiated).
        delta = torch.sub(x_adv, x)
        torch.minimum(delta, eps, out=delta)
        torch.maximum(delta, eps.neg(), out=delta)
        return self._clip_box_(delta.add_(x))

    def random_start(
        self, x: Tensor, generator: torch.Generator | None = None, *, streams: SampleStreams | None = None
    ) -> Tensor:
        if streams is not None:
            noise = streams.uniform(x.shape[1:], dtype=x.dtype)
        else:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        # x + (2u − 1)·ε, computed in place on the fresh noise buffer.
        return self._clip_box_(noise.mul_(2).sub_(1).mul_(self.eps_for(x)).add_(x))

    def step(self, grad: Tensor, step_size: Radius) -> Tensor:
        return grad.sign().mul_(per_sample(step_size, grad))


@THREATS.register("l2")
@dataclass(frozen=True, kw_only=True)
class L2Ball(ThreatModel):
    """``‖δ‖₂ ≤ ε`` over all non-batch dims. Step: ``α · g / ‖g‖₂``."""

    norm: ClassVar[str] = "l2"

    def distance(self, x_adv: Tensor, x: Tensor) -> Tensor:
        return _flat_norm(x_adv - x, 2.0)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        eps = self.eps_for(x)
        delta = x_adv - x
        norm = per_sample(_flat_norm(delta, 2.0), x).clamp_min(_TINY)
        # Clipping to the box only shrinks |δ_i|, so the result stays inside the ball.
        if _tracked(x_adv, x, eps):
            delta = delta * torch.clamp(eps / norm, max=1.0)
            return self.clip_box(x + delta)
        return self._clip_box_(delta.mul_(torch.clamp(eps / norm, max=1.0)).add_(x))

    def random_start(
        self, x: Tensor, generator: torch.Generator | None = None, *, streams: SampleStreams | None = None
    ) -> Tensor:
        # A uniformly random direction with a radius drawn uniformly in [0, ε] (as torchattacks and
        # robustness do); uniform-in-volume would put every start on the sphere in high dimension.
        if streams is not None:
            direction, radius = streams.normal(x.shape[1:], dtype=x.dtype), streams.uniform((), dtype=x.dtype)
        else:
            direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            radius = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / per_sample(_flat_norm(direction, 2.0), x).clamp_min(_TINY)
        return self.project(x + direction * per_sample(radius, x) * self.eps_for(x), x)

    def step(self, grad: Tensor, step_size: Radius) -> Tensor:
        norm = per_sample(_flat_norm(grad, 2.0), grad).clamp_min(_TINY)
        return (per_sample(step_size, grad) * grad).div_(norm)


@THREATS.register("l1")
@dataclass(frozen=True, kw_only=True)
class L1Ball(ThreatModel):
    """``‖δ‖₁ ≤ ε`` over all non-batch dims: sparse perturbations (Croce & Hein, ICML 2021, "Mind the box").

    * **Projection** onto ``B₁(x, ε) ∩ box``, exactly: with ``u = x' − x`` and the box of δ, ``[lo − x, hi − x]``
      (it contains 0), the nearest point is ``δ_i = clip(sign(u_i) · max(|u_i| − λ, 0), lo − x_i, hi − x_i)``
      with the threshold λ ≥ 0 the root of the piecewise-linear, non-increasing ``Σ_i |δ_i(λ)| = ε`` (λ = 0 when
      the box-clipped u is already inside the ball). λ is found by sorting the 2d breakpoints ``|u_i|`` and
      ``|u_i| − room_i`` (a Duchi et al. 2008-style sort, extended to the box as in Croce & Hein 2021) and
      interpolating on the one linear piece that crosses ε. Computed in float64.
    * **Step**: the top-k steepest ascent of L1: move the ``k = ⌈sparsity · d⌉`` coordinates of largest ``|g|``
      by ``α · sign(g_i) / k`` (so ``‖step‖₁ = α``; SLIDE, Tramèr & Boneh 2019, updates the top 1 %). ``sparsity``
      may be given per call, per sample (APGD-L1 adapts it).
    * **Random start**: a Laplace direction scaled to an L1 radius drawn uniformly in [0, ε], then projected.
    """

    norm: ClassVar[str] = "l1"
    sparsity: float = 0.01  # the fraction of coordinates :meth:`step` moves

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.sparsity <= 1.0:
            raise ThreatModelError(f"sparsity must lie in (0, 1], got {self.sparsity}")

    def distance(self, x_adv: Tensor, x: Tensor) -> Tensor:
        return _flat_norm(x_adv - x, 1.0)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        eps = self.eps_for(x).flatten()
        u = (x_adv - x).flatten(1)
        if self.bounds is None:
            room_hi = room_lo = torch.full_like(u, float("inf"))
        else:
            lo, hi = self.bounds
            room_hi, room_lo = (hi - x).flatten(1).clamp_min(0), (x - lo).flatten(1).clamp_min(0)
        delta = project_l1_box(u, eps, room_lo, room_hi)
        return (x + delta.view_as(x)) if self.bounds is None else self.clip_box(x + delta.view_as(x))

    def random_start(
        self, x: Tensor, generator: torch.Generator | None = None, *, streams: SampleStreams | None = None
    ) -> Tensor:
        if streams is not None:
            u = streams.at(0).uniform(x.shape[1:], dtype=x.dtype)
            sign = streams.at(1).uniform(x.shape[1:], dtype=x.dtype)
            radius = streams.at(2).uniform((), dtype=x.dtype)
        else:
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            sign = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            radius = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype)
        laplace = torch.log1p(-u).neg_().mul_(torch.where(sign < 0.5, -1.0, 1.0))  # |t| ~ Exp(1), random sign
        laplace = laplace / per_sample(_flat_norm(laplace, 1.0), x).clamp_min(_TINY)
        return self.project(x + laplace * per_sample(radius, x) * self.eps_for(x), x)

    def step(self, grad: Tensor, step_size: Radius, sparsity: Radius | None = None) -> Tensor:
        """``α · sign(g) · 1[top-k |g|] / k``, ``k = ⌈sparsity · d⌉`` (ties included; zero gradients never move)."""
        flat = grad.flatten(1).abs()
        d = flat.shape[1]
        frac = self.sparsity if sparsity is None else sparsity
        if isinstance(frac, Tensor):  # one k per sample: the k-th largest |g| of each row
            k = torch.ceil(frac.to(flat.device, torch.float64).expand(flat.shape[0]) * d - 1e-6).clamp(1, d).long()
            kth = flat.sort(dim=1, descending=True).values.gather(1, (k - 1)[:, None])
        else:
            k_int = min(max(math.ceil(float(frac) * d - 1e-9), 1), d)
            kth = flat.topk(k_int, dim=1).values[:, -1:]
        chosen = (flat >= kth) & (flat > 0)
        count = chosen.sum(1, keepdim=True).clamp_min(1).to(grad.dtype)
        direction = grad.flatten(1).sign().mul_(chosen).div_(count)
        return direction.view_as(grad).mul_(per_sample(step_size, grad))


def project_l1_box(u: Tensor, eps: Tensor, room_lo: Tensor, room_hi: Tensor) -> Tensor:
    """The nearest ``δ`` to ``u`` (B, d) with ``‖δ‖₁ ≤ ε`` (B,) and ``−room_lo ≤ δ ≤ room_hi`` (rooms ≥ 0, inf: none).

    ``δ_i(λ) = sign(u_i) · min(max(|u_i| − λ, 0), c_i)`` with ``c_i`` the room on the side of ``sign(u_i)``, so
    ``‖δ(λ)‖₁ = Σ_i [max(a_i − λ, 0) − max(a_i − c_i − λ, 0)]`` (a = |u|): two sums of ramps, evaluated at every
    breakpoint of both from one sort and prefix sums; λ is interpolated on the linear piece that crosses ε.
    """
    dtype = u.dtype
    u64 = u.double()
    a = u64.abs()
    room = torch.where(u64 >= 0, room_hi.double(), room_lo.double())
    eps64 = eps.double().view(-1, 1)
    capped = torch.minimum(a, room)  # δ at λ = 0: the box clip of u
    inside = capped.sum(1, keepdim=True) <= eps64
    e = (a - room).clamp_min(0.0)  # the second ramp's breakpoints (0 where the box does not bind before λ = 0)
    points = torch.cat([torch.zeros_like(a[:, :1]), a, e], 1).sort(dim=1).values  # (B, 2d + 1) candidate λ

    def ramp_sum(t: Tensor, lam: Tensor) -> Tensor:
        """Σ_i max(t_i − λ, 0) for each λ of a row: prefix sums over t sorted ascending."""
        t_sorted = t.sort(dim=1).values
        suffix = t_sorted.flip(1).cumsum(1).flip(1)  # suffix[j] = Σ_{i ≥ j} t_i
        suffix = torch.cat([suffix, torch.zeros_like(suffix[:, :1])], 1)
        first = torch.searchsorted(t_sorted, lam, right=True)  # the first t_i > λ
        n_above = t_sorted.shape[1] - first
        return suffix.gather(1, first) - lam * n_above

    size = ramp_sum(a, points) - ramp_sum(e, points)  # ‖δ(λ)‖₁ at each candidate, non-increasing
    # The last candidate with size ≥ ε and the next one (size < ε): λ lies on the linear piece between them.
    j = (size >= eps64).sum(1, keepdim=True).clamp(1, points.shape[1] - 1) - 1
    lam0, lam1 = points.gather(1, j), points.gather(1, j + 1)
    s0, s1 = size.gather(1, j), size.gather(1, j + 1)
    slope = (s0 - s1).clamp_min(1e-300)
    lam = torch.where(s0 > s1, lam0 + (s0 - eps64) * (lam1 - lam0) / slope, lam1)
    lam = torch.where(inside, torch.zeros_like(lam), lam.clamp_min(0.0))
    delta = u64.sign() * torch.minimum((a - lam).clamp_min(0.0), room)
    # Guard the rounding of the float64 sums: never leave the ball (shrinking towards 0 stays in the box).
    total = delta.abs().sum(1, keepdim=True)
    delta = delta * torch.where(total > eps64, eps64 / total.clamp_min(1e-300), torch.ones_like(total))
    out = delta.to(dtype)
    if dtype != torch.float64:  # the cast may round up: shrink the rows that left the ball by a hair
        norm = out.abs().sum(1, keepdim=True)
        over = norm > eps.view(-1, 1).to(dtype)
        out = torch.where(over, out * (eps.view(-1, 1).to(dtype) / norm.clamp_min(_TINY) * (1 - 1e-6)), out)
    return out


@dataclass(frozen=True, kw_only=True)
class TokenBall(ThreatModel):
    """Per-token balls for sequences of token embeddings x (B, T, D): ``‖δ_t‖ ≤ ε`` for every token t.

    Language-model attacks live in embedding space (``inputs_embeds``), where a budget is per token and
    is usually quoted relative to the mean norm of the embedding matrix (see
    :func:`sparring.language.embedding_scale`). ``mask`` (B, T) bool names the positions that may move
    (e.g. the instruction, not the target); rows of ``x`` that are all zero are padding and never move,
    whatever the mask says. ``bounds`` default to None (embeddings have no box).
    """

    bounds: tuple[float, float] | None = None
    mask: Tensor | None = None
    token_ord: ClassVar[float]  # the per-token norm: 2 or inf

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask is not None and (self.mask.dim() != 2 or self.mask.dtype != torch.bool):
            raise ThreatModelError(f"mask must be a (B, T) bool tensor, got {self.mask.dtype} {tuple(self.mask.shape)}")

    def subset(self, index: Tensor) -> ThreatModel:
        sub = super().subset(index)
        return sub if self.mask is None else replace(sub, mask=self.mask[index.to(self.mask.device)])

    def movable(self, x: Tensor) -> Tensor:
        """(B, T, 1) 1.0 where a token may move: inside ``mask`` and not an all-zero (padding) row."""
        if x.dim() != 3:
            raise ThreatModelError(f"a per-token threat needs token embeddings (B, T, D), got shape {tuple(x.shape)}")
        allowed = (x != 0).any(-1)
        if self.mask is not None:
            if self.mask.shape != allowed.shape:
                raise ThreatModelError(f"mask has shape {tuple(self.mask.shape)}, expected {tuple(allowed.shape)}")
            allowed &= self.mask.to(allowed.device)
        return allowed.unsqueeze(-1).to(x.dtype)

    def _token_norm(self, v: Tensor) -> Tensor:
        """(B, T, 1) norm of each token's displacement."""
        return torch.linalg.vector_norm(v, ord=self.token_ord, dim=-1, keepdim=True)

    def distance(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """(B,) the largest per-token displacement (the budget is per token)."""
        return self._token_norm(x_adv - x).flatten(1).amax(1)

    def contains(self, x_adv: Tensor, x: Tensor, atol: float = 1e-5) -> Tensor:
        frozen = (1 - self.movable(x)) * (x_adv - x)  # padding and masked tokens must not move at all
        return super().contains(x_adv, x, atol) & (frozen.flatten(1).abs().amax(1) <= atol)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        eps, delta = self.eps_for(x), x_adv - x
        if self.token_ord == 2.0:
            delta = delta * torch.clamp(eps / self._token_norm(delta).clamp_min(_TINY), max=1.0)
        else:
            delta = torch.maximum(torch.minimum(delta, eps), -eps)
        return self.clip_box(x + delta * self.movable(x))

    def random_start(
        self, x: Tensor, generator: torch.Generator | None = None, *, streams: SampleStreams | None = None
    ) -> Tensor:
        if streams is not None:
            noise = streams.uniform(x.shape[1:], dtype=x.dtype) * 2 - 1
        else:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        if self.token_ord == 2.0:  # a random direction per token, radius uniform in [0, ε]
            if streams is not None:
                noise = streams.normal(x.shape[1:], dtype=x.dtype)
                radius = streams.uniform(x.shape[1:-1] + (1,), dtype=x.dtype)
            else:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                radius = torch.rand(x.shape[:-1] + (1,), generator=generator, device=x.device, dtype=x.dtype)
            noise = noise / self._token_norm(noise).clamp_min(_TINY) * radius
        return self.project(x + noise * self.eps_for(x), x)

    def step(self, grad: Tensor, step_size: Radius) -> Tensor:
        """Steepest ascent per token: ``α g_t / ‖g_t‖₂`` (L2) or ``α sign(g_t)`` (L∞)."""
        if self.token_ord == 2.0:
            return per_sample(step_size, grad) * grad / self._token_norm(grad).clamp_min(_TINY)
        return grad.sign().mul_(per_sample(step_size, grad))


@THREATS.register("token_l2")
@dataclass(frozen=True, kw_only=True)
class TokenL2Ball(TokenBall):
    """``‖δ_t‖₂ ≤ ε`` for each token t of x (B, T, D)."""

    norm: ClassVar[str] = "token_l2"
    token_ord: ClassVar[float] = 2.0


@THREATS.register("token_linf")
@dataclass(frozen=True, kw_only=True)
class TokenLinfBall(TokenBall):
    """``‖δ_t‖∞ ≤ ε`` for each token t of x (B, T, D) (padding and masked tokens stay put)."""

    norm: ClassVar[str] = "token_linf"
    token_ord: ClassVar[float] = float("inf")


#: How people write norms (torchattacks and AutoAttack say ``Linf`` / ``L2``), case-insensitive, to our names.
NORM_ALIASES = {"linf": "linf", "l_inf": "linf", "inf": "linf", "l∞": "linf", "l2": "l2", "l_2": "l2", "2": "l2",
                "l1": "l1", "l_1": "l1", "1": "l1"}


def parse_norm(name: str) -> str:
    """``Linf`` / ``LINF`` / ``inf`` → ``linf``, ``L2`` / ``2`` → ``l2``; any other name lower-cased (``points``,
    ``token_l2``), for the registry to accept or refuse."""
    text = str(name).strip()
    return NORM_ALIASES.get(text.lower(), text.lower())


def parse_eps(value: str | float | int, *, where: str = "eps") -> float:
    """A radius as people write it: ``0.03``, ``8/255`` (a fraction of two numbers; nothing is evaluated), ``1e-2``.

    Raises:
        ThreatModelError: one line naming ``where`` for anything else (text, ``1/0``, a negative or infinite value).
    """
    if isinstance(value, bool):
        raise ThreatModelError(f"{where} must be a number like 0.03 or 8/255, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = str(value).strip()
        numerator, slash, denominator = text.partition("/")
        try:
            number = float(numerator) / float(denominator) if slash else float(text)
        except ValueError:
            raise ThreatModelError(f"{where} must be a number like 0.03 or 8/255, got {text!r}") from None
        except ZeroDivisionError:
            raise ThreatModelError(f"{where}: division by zero in {text!r}") from None
    if not (number >= 0 and number != float("inf")):
        raise ThreatModelError(f"{where} must be a finite number >= 0, got {value!r}")
    return number


def make_threat(
    norm: str, eps: Radius | str, bounds: tuple[float, float] | None = (0.0, 1.0), **settings: object
) -> ThreatModel:
    """Build a threat model by norm name (``"linf"``, ``"l2"``, ``"l1"``, ``"token_l2"``, ``"token_linf"``, and the
    point clouds' ``"points"``; case-insensitive, ``Linf`` / ``L2`` / ``L1`` too); ``settings`` are the threat's own
    fields (a point set's ``radius``). ``eps`` may be written as text, ``"8/255"`` (see :func:`parse_eps`)."""
    if isinstance(eps, str):
        eps = parse_eps(eps)
    return THREATS.get(parse_norm(norm))(eps=eps, bounds=bounds, **settings)
