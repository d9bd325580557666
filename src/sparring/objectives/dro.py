"""Distributionally robust reweighting of any objective (WARDEN, Zhang, Birrell, Ebrahimi et al., "Information
Theoretic Adversarial Training of Large Language Models", arXiv 2605.05415).

The per-example losses ℓ_i (B,) of a ``base`` objective (default PGD-AT) are averaged under the worst
distribution Q in an f-divergence ball around the batch's empirical distribution P_B, through the dual:

    sup_{D_f(Q‖P_B) ≤ ρ} E_Q[ℓ]  =  inf_{λ>0, ν∈R}  λρ + ν + λ · (1/B) Σ_i f*((ℓ_i − ν)/λ)

``divergence`` picks f (the paper's loss is "kl"; the others are the options of methods.md §2.2):

* ``"kl"`` (default):   L = λρ + λ · log (1/B) Σ_i exp(ℓ_i/λ),   w_i = softmax_i(ℓ_i/λ),
  with a learnable temperature λ = softplus(η) > 0 (ν is eliminated in closed form). η is updated here,
  once per training call, by an SGD step on the exact derivative
  ∂L/∂λ = ρ + log mean exp(ℓ/λ) − Σ_i w_i ℓ_i/λ = ρ − KL(w ‖ uniform), chained through softplus.
* ``"kl_fixed"``:       L = τ · log (1/B) Σ_i exp(ℓ_i/τ) with τ = ``temperature`` fixed (no ρ, no update).
  τ → ∞ gives the mean (ERM), τ → 0 the batch max.
* ``"chi2"``:           f(t) = (t−1)², f*(s) = s + s²/4 for s ≥ −2 else −1, s_i = (ℓ_i − ν)/λ. For the current λ,
  ν is solved **exactly** on the batch: the optimality condition mean_i (1 + s_i/2)_+ = 1 is piecewise linear
  in ν and is solved by sorting (the simplex-projection threshold), so no Newton/bisection tolerance enters.
  w_i = (1 + s_i/2)_+ / B; λ is learnable as for "kl", with ∂L/∂λ = ρ − mean_i g(s_i), g(s) = s²/4 for s ≥ −2 else 1.
* ``"cvar"``:           CVaR_α = the mean of the top α fraction of the losses (the ρ → ∞ limit of the
  f-divergence family); a fractional last rank gets a fractional weight, so Σ w_i = 1 for any α ∈ (0, 1].

In every case w is the worst-case Q (∂L/∂ℓ_i, Σ_i w_i = 1) and ∇_θ L = Σ_i w_i ∇_θ ℓ_i. The trainer takes the
*mean* of the returned (B,) vector, so the objective returns

    loss_i = B · w_i · ℓ_i + c,    c = stopgrad(L − Σ_j w_j ℓ_j),   w stop-gradient,

whose mean is exactly L and whose θ-gradient is exactly Σ_i w_i ∇_θ ℓ_i; the per-entry value is example i's
weighted share of the robust loss (hard examples get larger entries). The temperature is not a model
parameter: the trainer never sees it, so ``__call__`` updates it itself, only when the model is in training
mode and autograd is on (evaluation and ``torch.no_grad`` calls leave it untouched). Its value survives a
resume through ``state_dict``.

Reconstruction (methods.md §2.2): the paper's ρ, λ and code were not retrievable; the structure is standard
f-DRO duality as in the co-authors' ARMOR_D code (``star-ailab/ARMOR``, ``src/armor_KL_mnist.py``), whose λ is a
parameter initialised to 1.0 and trained by Adam at 2e-4 with ρ (``eps``) = 5e-4 on MNIST. Defaults here:
ρ = 5e-4 (ARMOR's), λ_0 = ``temperature`` = 1.0 (ARMOR's), a plain SGD step on η of ``temperature_lr`` = 1e-2
(ours: SGD, not Adam, so a larger rate), CVaR α = 0.5 (ours). methods.md suggests searching
ρ ∈ {0.01, 0.1, 0.5, 1} and τ ∈ {0.5, 1, 2, 5}.

Batch caveat: the dual is evaluated on the mini-batch, so the log-mean-exp (or χ² threshold) estimate is
biased (the mean sits inside the log) and **a sample's loss depends on its batch mates by design**; keep the
batch size fixed across compared methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparring.errors import ConfigError
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from sparring.objectives.pgd_at import PGDAT

Divergence = Literal["kl", "kl_fixed", "chi2", "cvar"]


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))  # log(exp(v) − 1), stable for large v


def kl_dual(losses: Tensor, temperature: Tensor | float, rho: float) -> tuple[Tensor, Tensor, Tensor]:
    """KL dual at a fixed λ: ``(L, w, ∂L/∂λ)`` for losses (B,); stable log-mean-exp (max subtracted)."""
    top = losses.max()
    d = (losses - top) / temperature  # ≤ 0: no overflow at small λ
    # log mean exp(d) as log1p(mean expm1(d)): no cancellation at large λ, where every d is ≈ 0.
    log_mean_exp = torch.log1p(torch.expm1(d).mean())
    weights = torch.softmax(d, dim=0)
    value = top + temperature * (rho + log_mean_exp)
    d_temperature = rho + log_mean_exp - (weights * d).sum()  # = ρ − KL(w ‖ uniform)
    return value, weights, d_temperature


def chi2_dual(losses: Tensor, temperature: Tensor | float, rho: float) -> tuple[Tensor, Tensor, Tensor]:
    """χ² dual at a fixed λ with ν solved exactly: ``(L, w, ∂L/∂λ)`` for losses (B,)."""
    b = losses.shape[0]
    # mean_i (1 + (ℓ_i − ν)/(2λ))_+ = 1  ⇔  Σ_i (c_i − ν)_+ = 2λB with c_i = ℓ_i + 2λ: a simplex-projection threshold.
    c = losses + 2 * temperature
    c_sorted = torch.sort(c, descending=True).values
    ranks = torch.arange(1, b + 1, device=losses.device, dtype=losses.dtype)
    thresholds = (torch.cumsum(c_sorted, 0) - 2 * temperature * b) / ranks  # ν if the top k are active
    active = (c_sorted > thresholds).to(losses.dtype)  # k = 1 is always active
    nu = thresholds[(active * ranks).argmax()]
    s = (losses - nu) / temperature
    slope = (1 + s / 2).clamp_min(0)  # f*'(s)
    weights = slope / b
    value = temperature * rho + nu + temperature * (slope.square() - 1).mean()  # f*(s) = (1 + s/2)_+² − 1
    d_temperature = rho - torch.where(s >= -2, s.square() / 4, torch.ones_like(s)).mean()  # f* − s·f*' = −s²/4 or −1
    return value, weights, d_temperature


def cvar(losses: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """CVaR_α: ``(L, w)``, the mean of the top α fraction of losses (B,), a fractional last rank included."""
    b = losses.shape[0]
    order = torch.argsort(losses, descending=True)
    mass = alpha * b
    ranks = torch.arange(b, device=losses.device, dtype=losses.dtype)
    rank_weights = (mass - ranks).clamp(0, 1) / mass
    weights = torch.empty_like(losses).scatter_(0, order, rank_weights)
    return (weights * losses).sum(), weights


@OBJECTIVES.register("dro")
@dataclass(kw_only=True)
class DRO(Objective):
    """Worst case of the base objective's per-example losses over an f-divergence ball (see the module doc).

    Attributes:
        base: the objective whose per-example losses are reweighted (default PGD-AT).
        divergence: "kl" (learnable λ, default), "kl_fixed" (τ log-mean-exp), "chi2" (learnable λ, exact ν)
            or "cvar".
        rho: radius ρ of the divergence ball (default 5e-4, ARMOR's MNIST value); unused by kl_fixed / cvar.
        temperature: initial λ (kl, chi2) or the fixed τ (kl_fixed); > 0.
        temperature_lr: SGD step size on η, λ = softplus(η) (kl, chi2); 0 freezes λ.
        min_temperature: floor on the learned λ, so that λ > 0 even in float32 after many updates.
        alpha: the CVaR fraction, in (0, 1].
    """

    name = "dro"
    batch_dependent: ClassVar[bool] = True  # a sample's loss depends on its batch mates, by design
    base: Objective = field(default_factory=PGDAT)
    divergence: Divergence = "kl"
    rho: float = 5e-4
    temperature: float = 1.0
    temperature_lr: float = 1e-2
    min_temperature: float = 1e-3
    alpha: float = 0.5
    _eta: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.divergence not in ("kl", "kl_fixed", "chi2", "cvar"):
            raise ConfigError(f"DRO divergence must be kl, kl_fixed, chi2 or cvar, not {self.divergence!r}")
        if self.rho < 0 or self.temperature_lr < 0:
            raise ConfigError("DRO needs rho >= 0 and temperature_lr >= 0")
        if not (self.temperature > 0 and self.min_temperature > 0):
            raise ConfigError("DRO needs temperature > 0 and min_temperature > 0")
        if self.learns_temperature and self.temperature < self.min_temperature:
            raise ConfigError(f"DRO temperature ({self.temperature}) is below min_temperature ({self.min_temperature})")
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"DRO alpha (the CVaR fraction) must be in (0, 1], not {self.alpha}")
        self._eta = torch.tensor(_inverse_softplus(self.temperature))

    @property
    def learns_temperature(self) -> bool:
        return self.divergence in ("kl", "chi2")

    def current_temperature(self) -> Tensor:
        """λ = softplus(η) (kl, chi2), or the fixed τ; a 0-d tensor, never below ``min_temperature``."""
        if not self.learns_temperature:
            return torch.tensor(self.temperature)
        return F.softplus(self._eta).clamp_min(self.min_temperature)

    def dual(self, losses: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(L, w, ∂L/∂λ or None)`` for per-example losses (B,) at the current temperature; no update."""
        losses = losses.float()
        self._eta = self._eta.to(losses.device)
        temperature = self.current_temperature().to(losses.device)
        if self.divergence == "kl":
            return kl_dual(losses, temperature, self.rho)
        if self.divergence == "kl_fixed":
            value, weights, _ = kl_dual(losses, temperature, 0.0)
            return value, weights, None
        if self.divergence == "chi2":
            return chi2_dual(losses, temperature, self.rho)
        value, weights = cvar(losses, self.alpha)
        return value, weights, None

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        out = self.base(model, x, y, generator=generator)
        if out.loss.numel() == 0:  # nothing to reweight (a language batch with no behaviours): ``extra`` only
            return out
        losses = out.loss.float()  # (B,)
        temperature = self.current_temperature().to(losses.device)
        with torch.no_grad():
            value, weights, d_temperature = self.dual(losses.detach())
            offset = value - (weights * losses.detach()).sum()
        loss = losses.shape[0] * weights * losses + offset  # mean = L, ∇θ mean = Σ w_i ∇θ ℓ_i
        if d_temperature is not None and self.temperature_lr > 0 and model.training and torch.is_grad_enabled():
            with torch.no_grad():  # SGD on η: ∂L/∂η = ∂L/∂λ · sigmoid(η)
                eta = self._eta - self.temperature_lr * d_temperature * torch.sigmoid(self._eta)
                self._eta = eta.clamp_min(_inverse_softplus(self.min_temperature))
        entropy = -(weights * weights.clamp_min(1e-30).log()).sum()
        metrics = {
            **out.metrics,
            "dro_value": value,
            "dro_mean_loss": losses.detach().mean(),
            "dro_weight_entropy": entropy,
            "dro_weight_max": weights.max(),
            "dro_temperature": temperature.detach(),
        }
        return ObjectiveOutput(loss=loss, logits=out.logits, metrics=metrics, extra=out.extra)  # extra: not reweighted

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "eta": float(self._eta)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "eta" in state:
            self._eta = torch.tensor(float(state["eta"]))
        super().load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "current_temperature": float(self.current_temperature())}
