"""Threat models: the set of allowed perturbations around an input.

A threat model owns everything geometric about an attack and nothing about its optimizer:

* the ball ``B(x, ε) = {x' : ‖x' − x‖ ≤ ε}`` for the L∞ or L2 norm, with ε a float or a per-sample
  tensor of shape (B,) (class-wise budgets, curricula, ε-curves all need per-sample radii);
* optional box bounds ``lo ≤ x' ≤ hi`` (pixels in [0, 1]); ``bounds=None`` for embedding or feature
  spaces that have no box;
* the projection onto ``B(x, ε) ∩ box``, a random start inside it, and the normalized ascent step
  (``sign(g)`` for L∞, ``g / ‖g‖₂`` for L2) that steepest ascent uses.

Norms are taken over all non-batch dimensions. Step sizes may be floats or (B,) tensors too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from sparring.errors import ThreatModelError
from sparring.registry import Registry

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
    def random_start(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A random point of the threat set around ``x``."""

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

    def random_start(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
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

    def random_start(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # A uniformly random direction with a radius drawn uniformly in [0, ε] (as torchattacks and
        # robustness do); uniform-in-volume would put every start on the sphere in high dimension.
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / per_sample(_flat_norm(direction, 2.0), x).clamp_min(_TINY)
        radius = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype)
        return self.project(x + direction * per_sample(radius, x) * self.eps_for(x), x)

    def step(self, grad: Tensor, step_size: Radius) -> Tensor:
        norm = per_sample(_flat_norm(grad, 2.0), grad).clamp_min(_TINY)
        return (per_sample(step_size, grad) * grad).div_(norm)


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

    def random_start(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        if self.token_ord == 2.0:  # a random direction per token, radius uniform in [0, ε]
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
NORM_ALIASES = {"linf": "linf", "l_inf": "linf", "inf": "linf", "l∞": "linf", "l2": "l2", "l_2": "l2", "2": "l2"}


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
    """Build a threat model by norm name (``"linf"``, ``"l2"``, ``"token_l2"``, ``"token_linf"``, and the point
    clouds' ``"points"``; case-insensitive, ``Linf`` / ``L2`` too); ``settings`` are the threat's own fields (a
    point set's ``radius``). ``eps`` may be written as text, ``"8/255"`` (see :func:`parse_eps`)."""
    if isinstance(eps, str):
        eps = parse_eps(eps)
    return THREATS.get(parse_norm(norm))(eps=eps, bounds=bounds, **settings)
