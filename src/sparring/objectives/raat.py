"""Robust Alignment adversarial training with DICAR (RAAT; Wang, Ye, Liu, Liang & Hu, "Robust Alignment:
Harmonizing Clean Accuracy and Adversarial Robustness in Adversarial Training", arXiv 2604.26496).

For a batch (x, y) of B examples, two augmented views x¹, x² are made inside the objective:

    X = [x¹; x²],  Y = [y; y]                     (2B rows)
    X_adv = PGD(X, Y),  δ = X_adv − X,  X_red = X + κ·δ          (boundary rows get a reduced, fixed step)
    partition, in eval mode without grad:  misclassified = f(X) ≠ Y
        boundary = f(X) = Y ∧ f(X_adv) ≠ Y ∧ f(X_red) ≠ Y,       other = the rest
    X_sel = X_red on boundary rows, X_adv elsewhere
    L_base = CE(f(X_sel), Y)                                        (mean over the 2B rows)
    I = examples whose BOTH views are clean-correct;  λ ~ Beta(a, a),  m = max(λ, 1 − λ)
    x_mix = m·x¹_adv + (1 − m)·x²_adv,   z_tgt = m·f(x¹) + (1 − m)·f(x²)      (a mix of clean LOGITS)
    L_DICAR = lam · mean_{i ∈ I} JS( softmax(f(x_mix)/T), softmax(z_tgt/T) )
    L = L_base + L_DICAR

with JS(p, q) = ½[KL(p‖M) + KL(q‖M)], M = ½(p + q), log M clamped at 1e-8 (:func:`js_divergence`).
Boundary samples flip even under a tenth of the perturbation: the paper finds that training them at full
strength costs clean accuracy and buys no robustness. DICAR asks the prediction on an interpolation of
the two views' adversarial domains to match the interpolation of their clean logits (ICT-style).

Defaults are the authors' code (``RAAT_Code_(Sec_5.1&5.2)/training/adv_train/adv_train_bd.py``; the
paper's tables were not retrievable): L∞ ε = 8/255, PGD-10 with step 2/255 (= ε/4, last iterate),
κ = 0.1, a = 0.75, T = 0.5, lam = 1.0; β = 6 for the "++" variants; SGD 0.1, batch 128, 110 epochs there.

Pluggable base loss (``base_loss``), always on the partition's chosen inputs X_sel:

* ``"ce"`` (RAAT, on PGD-AT): CE(f(X_sel), Y).
* ``"mart"`` (RAAT++): MART's ``BCE(f(X_sel), Y) + β · KL(p(X) ‖ p(X_sel)) · (1 − p_y(X))``.
* ``"trades"``: ``CE(f(X), Y) + β · KL(p(X) ‖ p(X_sel))``. X_adv still comes from the CE attack (not
  TRADES' KL maximizer), so that the partition means the same thing for every base loss.

Per example (B,): the mean over the example's two views of the base term, plus its DICAR term. The code
averages DICAR over |I|; ``dicar_norm="selected"`` (default) gives example i ∈ I the entry
``lam · JS_i · B / |I|`` (0 outside I), so the MEAN of the returned vector is exactly the code's loss. That
makes an entry depend on its batch mates (through |I|), hence ``batch_dependent``. ``dicar_norm="batch"``
gives ``lam · JS_i`` (i ∈ I): batch-independent, but the regularizer's weight then scales with |I|/B
(weak early in training, when few examples are clean-correct on both views) — not the code's schedule.

Where this differs from the code:

* The views are augmented here, with :func:`sparring.data.augment.make_augment` (``augment="auto"``: a
  crop for images, no flip because digits are not flip-invariant; the code's CIFAR ``base`` is
  ``"crop_flip"``), instead of a two-view data loader.
* The CE term is one forward on X_sel in row order rather than on the concatenation
  [X_adv[other]; X_red[boundary]; X_adv[misclassified]]: the same rows, so the same loss and the same
  BatchNorm batch statistics. The clean and mixed forwards run on all rows (x_mix masked to I afterwards,
  not indexed), which avoids a host sync; under BatchNorm in train mode the x_mix statistics then include
  the examples outside I.
* The clean logits of the DICAR target are not detached, as in the code (``detach_target=True`` stops
  their gradient, the usual ICT/mean-teacher choice).
* λ is drawn on the device from the objective's generator (Marsaglia–Tsang gamma draws, :func:`sample_beta`)
  instead of NumPy's global state, so a seed gives one result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparring.attacks import PGD, Attack
from sparring.context import frozen_model
from sparring.data.augment import SPECS, make_augment
from sparring.errors import ConfigError
from sparring.losses import cross_entropy, js_divergence, kl_to_reference
from sparring.objectives.base import OBJECTIVES, Objective, ObjectiveOutput
from sparring.objectives.mart import boosted_cross_entropy
from sparring.threat import LinfBall, ThreatModel

BaseLoss = Literal["ce", "mart", "trades"]


def _sample_gamma(shape: float, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """(n,) Gamma(shape, 1) draws by Marsaglia–Tsang, with a fixed number of candidates per draw.

    A fixed candidate count keeps the generator's consumption data-independent and needs no host sync;
    each candidate is accepted with probability ≥ 0.95 (shape ≥ 1), so 32 all failing (≈ 1e-41) falls
    back to the mode. Shapes < 1 use Gamma(shape + 1) · U^(1/shape).
    """
    boosted = shape + 1.0 if shape < 1.0 else shape
    d = boosted - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn(n, 32, generator=generator, device=device)
    u = torch.rand(n, 32, generator=generator, device=device)
    v = (1.0 + c * z) ** 3
    accept = (v > 0) & (u.log() < 0.5 * z**2 + d - d * v + d * v.clamp_min(1e-30).log())
    first = accept.int().argmax(1, keepdim=True)  # the first accepted candidate (0 if none)
    draw = torch.where(accept.any(1), d * v.gather(1, first).squeeze(1), torch.full_like(z[:, 0], d))
    if shape < 1.0:
        draw = draw * torch.rand(n, generator=generator, device=device) ** (1.0 / shape)
    return draw


def sample_beta(
    a: float, b: float, n: int = 1, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """(n,) draws of Beta(a, b) = G_a / (G_a + G_b), deterministic under ``generator`` (on its device)."""
    device = torch.device(device)
    g_a, g_b = _sample_gamma(a, n, generator, device), _sample_gamma(b, n, generator, device)
    return g_a / (g_a + g_b).clamp_min(1e-30)


@OBJECTIVES.register("raat")
@dataclass(kw_only=True)
class RAAT(Objective):
    """PGD-AT on two augmented views with reduced steps for boundary samples, plus DICAR consistency.

    Attributes:
        threat: the training threat model (default L∞, ε = 8/255, box [0, 1]).
        attack: the inner maximizer of CE (default PGD-10, α = ε/4, random start, last iterate).
        kappa: the boundary samples' share of the adversarial perturbation, in [0, 1] (code: 0.1).
        lam: DICAR weight (code: 1.0); 0 disables DICAR and its forwards.
        mix_alpha: a of the Beta(a, a) mixing weight (code: 0.75).
        temperature: JS temperature T (code: 0.5).
        augment: the spec making each view (:data:`sparring.data.augment.SPECS`; default ``"auto"``).
        base_loss: ``"ce"`` (RAAT), ``"mart"`` (RAAT++) or ``"trades"``, on the partition's inputs.
        beta: the KL weight of the MART / TRADES base losses (code: 6.0).
        dicar_norm: ``"selected"`` divides DICAR by |I| as the code does; ``"batch"`` by B (batch-independent).
        detach_target: stop the gradient through the clean-logit target (code: not detached).
    """

    name = "raat"
    #: Two augmented views and DICAR: not CE on the clean input at ε = 0.
    reduces_to_clean_ce: ClassVar[bool] = False
    #: DICAR is averaged over the batch's both-views-correct set I: each entry carries B / |I|.
    batch_dependent: ClassVar[bool] = True
    threat: ThreatModel = field(default_factory=lambda: LinfBall(eps=8 / 255))
    attack: Attack = field(default_factory=lambda: PGD(steps=10, keep_best=False, score=False))
    kappa: float = 0.1
    lam: float = 1.0
    mix_alpha: float = 0.75
    temperature: float = 0.5
    augment: str = "auto"
    base_loss: BaseLoss = "ce"
    beta: float = 6.0
    dicar_norm: Literal["selected", "batch"] = "selected"
    detach_target: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.kappa <= 1.0:
            raise ConfigError(f"RAAT needs kappa in [0, 1], got {self.kappa}")
        if not self.temperature > 0:
            raise ConfigError(f"RAAT needs temperature > 0, got {self.temperature}")
        if not self.mix_alpha > 0:
            raise ConfigError(f"RAAT needs mix_alpha > 0, got {self.mix_alpha}")
        if self.lam < 0 or self.beta < 0:
            raise ConfigError(f"RAAT needs lam >= 0 and beta >= 0, got lam={self.lam}, beta={self.beta}")
        if self.augment not in SPECS:
            raise ConfigError(f"unknown augmentation {self.augment!r}; available: {', '.join(SPECS)}")
        if self.base_loss not in ("ce", "mart", "trades"):
            raise ConfigError(f"unknown RAAT base_loss {self.base_loss!r}; available: ce, mart, trades")
        if self.dicar_norm not in ("selected", "batch"):
            raise ConfigError(f"RAAT dicar_norm must be 'selected' or 'batch', got {self.dicar_norm!r}")

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None
    ) -> ObjectiveOutput:
        n = x.shape[0]
        augment = make_augment(self.augment, tuple(x.shape[1:]), bounds=self.threat.bounds)
        views = torch.cat([augment(x, generator), augment(x, generator)])  # X = [x¹; x²], (2B, ...)
        labels = torch.cat([y, y])  # Y, (2B,)
        threat = self.threat
        if isinstance(threat.eps, Tensor) and threat.eps.dim() == 1:  # per-sample ε: each view keeps its own
            threat = threat.with_eps(torch.cat([threat.eps, threat.eps]))
        x_adv = self.attack(model, views, labels, threat, generator=generator).x_adv
        # lerp is exact at κ = 1 (gives X_adv) and κ = 0; a convex mix stays in the ball and the box.
        x_red = torch.lerp(views, x_adv, self.kappa)
        mix = None
        if self.lam > 0:  # drawn at a fixed point of the generator stream, whatever the data
            lam_draw = sample_beta(self.mix_alpha, self.mix_alpha, generator=generator, device=x.device)
            mix = torch.maximum(lam_draw, 1.0 - lam_draw).to(x.dtype)  # m = max(λ, 1 − λ), (1,)

        misclassified, boundary, other, adv_ok = self.partition(model, views, x_adv, x_red, labels)
        clean_ok = ~misclassified

        rows = boundary.view(-1, *([1] * (x.dim() - 1)))
        selected = model(torch.where(rows, x_red, x_adv))  # f(X_sel), (2B, K), in the model's own mode
        clean = model(views) if self.lam > 0 or self.base_loss != "ce" else None  # f(X), (2B, K)
        per_row = self._base(selected, clean, labels)  # (2B,)
        loss = per_row.view(2, n).mean(0)  # the mean over each example's two views, (B,)

        both_ok = clean_ok[:n] & clean_ok[n:]  # I, (B,)
        count = both_ok.sum()
        metrics: dict[str, float | Tensor] = {
            "misclassified": misclassified.float().mean(),
            "boundary": boundary.float().mean(),
            "other": other.float().mean(),
            "attack_success": (~adv_ok).float().mean(),
            "dicar_fraction": both_ok.float().mean(),
            "base": per_row.detach().mean(),
        }
        if mix is not None and clean is not None:
            mixed = model(mix * x_adv[:n] + (1 - mix) * x_adv[n:])  # f(x_mix), (B, K)
            target = mix * clean[:n] + (1 - mix) * clean[n:]  # z_tgt, a mix of clean logits
            js = js_divergence(mixed, target.detach() if self.detach_target else target, self.temperature)
            js = torch.where(both_ok, js, torch.zeros_like(js))
            metrics["dicar"] = js.detach().sum() / count.clamp_min(1)  # the code's mean over I
            scale = n / count.clamp_min(1) if self.dicar_norm == "selected" else 1.0
            loss = loss + self.lam * scale * js
        return ObjectiveOutput(loss=loss, logits=selected[:n], metrics=metrics)

    def partition(
        self, model: nn.Module, views: Tensor, x_adv: Tensor, x_red: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(misclassified, boundary, other, adv_correct) masks (2B,), judged in eval mode without grad.

        The first three are disjoint and cover every row. The model is restored to its own mode after.
        """
        with frozen_model(model), torch.no_grad():
            stacked = [views, x_adv] if self.kappa == 1.0 else [views, x_adv, x_red]
            preds = model(torch.cat(stacked)).argmax(1).view(len(stacked), -1)  # one eval forward
            clean_ok, adv_ok, red_ok = preds[0] == labels, preds[1] == labels, preds[-1] == labels
        boundary = clean_ok & ~adv_ok & ~red_ok  # flips even under κ·δ
        return ~clean_ok, boundary, clean_ok & ~boundary, adv_ok

    def _base(self, selected: Tensor, clean: Tensor | None, labels: Tensor) -> Tensor:
        """The base loss per row (2B,) on the partition's inputs X_sel."""
        if self.base_loss == "ce":
            return cross_entropy(selected, labels)
        assert clean is not None
        clean_probs = F.softmax(clean.float(), dim=1)
        kl = kl_to_reference(selected, clean_probs)  # KL(p(X) ‖ p(X_sel))
        if self.base_loss == "mart":
            weight = 1.0 - clean_probs.gather(1, labels[:, None]).squeeze(1)  # 1 − p_y(X)
            return boosted_cross_entropy(selected, labels) + self.beta * kl * weight
        return cross_entropy(clean, labels) + self.beta * kl
