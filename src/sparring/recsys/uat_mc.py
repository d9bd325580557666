r"""UAT-MC: untargeted adversarial training with multimodal coordination, and its γ = 0 special case (APR-style AT).

Xian, Yang & Yu, "Band Together: Untargeted Adversarial Training with Multimodal Coordination against
Evasion-based Promotion Attacks", IJCAI 2026 (``methods.md`` §7.4, from the authors' ``vbpr_uat_mc.py`` /
``mmgcn_uat_mc.py``). Per batch of triples (u, i⁺, i⁻), with v̂, t̂ the aligned features of *all* items:

    L_bpr(δ)  = BPR(u, i⁺, i⁻; v̂ + δ_v, t̂ + δ_t),              g_v = ∂L_bpr/∂δ_v |_{δ=0},  g_t likewise
    J         = L_bpr + γ · mean_j cos(g_v[j], g_t[j])             (second-order path live: create_graph)
    δ_m       = clamp(ε · ∇_{δ_m}J / ‖∇_{δ_m}J‖₂ (row-wise),  −ε, ε)     one FGM-ℓ2 step per item row, m ∈ {v, t}
    loss      = BPR(clean) + w_adv · BPR(v̂ + δ_v, t̂ + δ_t)      (the trainer adds reg_weight · Reg)

Every item is a potential promotion target ("untargeted"); the alignment term pushes the two modal
perturbations to agree, because promotion attacks are weaker exactly where visual and text gradients disagree
(cross-modal gradient mismatch) and AT against the weak attack underestimates the worst case. The per-row
budget is ε·‖v̂_j‖₂, which is ε for the L2-normalised aligned features. Defaults (VBPR-Baby config, §7.5):
ε 0.05, w_adv 5, γ 4. With γ = 0 the update is APR's (He et al., SIGIR 2018) on the multimodal features:
registered as ``apr``.

Released-code behaviours, behind named flags (defaults follow the paper):

* ``param_grad_leak`` (code: ``J.backward()`` runs before the main loss and the trainer zero-grads once per
  batch, so θ's update also receives ∇θ[L_bpr(δ=0) + γ·cos]): adds that term to the loss.
* ``second_order=False`` (code, MMGCN variant: the modal gradients are taken without ``create_graph``, so the
  cosine term has no effect on δ): δ from ∇L_bpr alone, the cosine only logged.

Diagnostics logged each batch: ``grad_cosine`` (mean cos(g_v[j], g_t[j]) over the items the batch touches: the
cross-modal mismatch), ``delta_cosine`` (the same for δ_v, δ_t), ``adv_bpr``. Batch-dependent by design: one
δ for all items is computed from the whole batch's loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparring.errors import ConfigError
from sparring.losses import cross_entropy
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from sparring.recsys.models import Recommender, check_triples

_TINY = 1e-12


def _touched(g_v: Tensor, g_t: Tensor) -> Tensor:
    """(n_items,) bool: rows where both modal gradients are non-zero (the items the batch reaches)."""
    return (g_v.abs().sum(1) > 0) & (g_t.abs().sum(1) > 0)


def _mean_cosine(a: Tensor, b: Tensor, rows: Tensor) -> Tensor:
    if not bool(rows.any()):
        return a.new_zeros(())
    return F.cosine_similarity(a[rows], b[rows], dim=1, eps=_TINY).mean()


@OBJECTIVES.register("uat_mc")
@dataclass(kw_only=True)
class UATMC(Objective):
    """BPR plus w_adv times BPR under the aligned, all-item FGM perturbation (see the module docstring).

    Attributes:
        eps: per-row budget relative to the row's norm (``ε·‖v̂_j‖``; aligned features are unit rows).
        adv_weight: w_adv, the weight of the adversarial BPR term.
        gamma: γ, the weight of the cross-modal gradient-alignment term (0: APR-style AT).
        second_order: differentiate through the modal gradients (False: the MMGCN code's first-order δ).
        param_grad_leak: add the released code's ∇θ[L_bpr(δ=0) + γ·cos] leak to the update.
    """

    name = "uat_mc"
    inputs: ClassVar[str] = "recsys"
    batch_dependent: ClassVar[bool] = True
    eps: float = 0.05
    adv_weight: float = 5.0
    gamma: float = 4.0
    second_order: bool = True
    param_grad_leak: bool = False

    def __post_init__(self) -> None:
        if not self.eps >= 0 or not self.adv_weight >= 0 or not self.gamma >= 0:
            raise ConfigError(f"{self.name} needs eps >= 0, adv_weight >= 0 and gamma >= 0")

    def perturbation(
        self, model: Recommender, x: Tensor, y: Tensor, v_hat: Tensor, t_hat: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor], Tensor]:
        """(δ_v, δ_t) for all items (detached), the clean logits (B, 2) with their graph (δ = 0: the clean forward,
        reused for the clean loss), diagnostics, and the code's parameter-gradient leak (0 unless set)."""
        delta_v = torch.zeros_like(v_hat, requires_grad=True)
        delta_t = torch.zeros_like(t_hat, requires_grad=True)
        with torch.enable_grad():
            logits = model(x, v_hat=v_hat + delta_v, t_hat=t_hat + delta_t)  # (B, 2) at δ = 0
            clean = cross_entropy(logits, y)  # (B,) BPR
            live = self.second_order and self.gamma > 0
            g_v, g_t = torch.autograd.grad(clean.mean(), (delta_v, delta_t), create_graph=live, retain_graph=True)
            rows = _touched(g_v.detach(), g_t.detach())
            # Over all items, as the code's mean: untouched rows contribute cos(0, 0) = 0.
            cosine = F.cosine_similarity(g_v, g_t, dim=1, eps=_TINY).mean()
            if live:
                d_v, d_t = torch.autograd.grad(clean.mean() + self.gamma * cosine, (delta_v, delta_t),
                                               retain_graph=True)
            else:
                d_v, d_t = g_v.detach(), g_t.detach()
        with torch.no_grad():
            budget_v = self.eps * v_hat.norm(dim=1, keepdim=True)
            budget_t = self.eps * t_hat.norm(dim=1, keepdim=True)
            delta_v = torch.maximum(torch.minimum(budget_v * F.normalize(d_v, dim=1, eps=_TINY), budget_v), -budget_v)
            delta_t = torch.maximum(torch.minimum(budget_t * F.normalize(d_t, dim=1, eps=_TINY), budget_t), -budget_t)
            diagnostics = {
                "grad_cosine": _mean_cosine(g_v.detach(), g_t.detach(), rows),
                "delta_cosine": _mean_cosine(delta_v, delta_t, rows),
            }
        leak = clean.mean() + self.gamma * cosine if self.param_grad_leak else clean.new_zeros(())
        return delta_v, delta_t, logits, diagnostics, leak

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        if not isinstance(model, Recommender):
            raise ConfigError(f"{self.name} trains a sparring.recsys Recommender (vbpr, mmgcn), got "
                              f"{type(model).__name__}")
        check_triples(x)
        v_hat, t_hat = model.aligned()  # (n_items, 64) each, differentiable in the projector
        delta_v, delta_t, logits, diagnostics, leak = self.perturbation(model, x, y, v_hat, t_hat)
        adv = cross_entropy(model(x, v_hat=v_hat + delta_v, t_hat=t_hat + delta_t), y)
        loss = cross_entropy(logits, y) + self.adv_weight * adv + leak
        return ObjectiveOutput(loss=loss, logits=logits, metrics={**diagnostics, "adv_bpr": adv.detach().mean()})


@OBJECTIVES.register("apr")
@dataclass(kw_only=True)
class APR(UATMC):
    """APR-style untargeted AT on the aligned multimodal features: UAT-MC with γ = 0 (no alignment term)."""

    name = "apr"
    gamma: float = 0.0


__all__ = ["APR", "UATMC"]
