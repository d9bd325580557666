"""WB-Softmax: a differentiable surrogate of a fitted Fuzzy ARTMAP, and the gradient source that attacks through it
(Cairns, Brito da Silva, Petrenko, Wunsch & Liu, arXiv 2605.06902; methods.md §9.1).

The ARTMAP's decision (winner-take-all over the choices T_j, then the map field) is piecewise constant in the
input, so its input gradient is zero and gradient attacks on it (or transfer from another model) mislead. The
surrogate keeps the category competition and the map field and relaxes only the two non-smooth steps:

    I = [a, 1 − a]                                    (complement coding, as the ARTMAP)
    T_j = Σ_i min_γ(I_i, w_ji) / (α + |w_j|)          (min_γ = min, or the smooth min −γ log(e^{−u/γ} + e^{−v/γ}))
    p_j = softmax_j(T_j / τ)                          (winner-take-all → softmax at temperature τ)
    s_k = log Σ_{j: c(j) = k} p_j                     (map field: each class sums its categories' probabilities)

The class scores s (B, K) are log-probabilities, so CE on them is −log P(y); a class with no category gets a score
far below the others (finite, so gradients stay finite). As τ → 0 the softmax becomes the winner-take-all and
argmax_k s_k is the ARTMAP's prediction. With ``smooth=None`` (default) the minimum is ``torch.minimum`` and its
subgradient (1 on the smaller argument) is used.

Defaults (RECONSTRUCTION: the paper's τ and smooth-min settings are not in the abstract; methods.md §9.1):
τ = 0.002, on the scale of the choice values T ∈ [0, 1) (neighbouring categories' T differ by a few thousandths to
hundredths on 8x8 digits and MNIST-1D). Measured on both (PGD-20, L∞): τ from 5e-4 to 5e-3 break the same points
(within 1-2%), τ = 0.002 agrees with the ARTMAP's prediction on 92-100% of test points, τ ≥ 0.02 on far fewer
(40-85%) and breaks fewer; subgradient min.

:class:`WBSoftmax` is a gradient source (:mod:`sparring.gradients`): any core attack (FGSM, PGD, APGD, ...) runs
with ``gradients=WBSoftmax()`` on the *real* :class:`~sparring.streaming.artmap.FuzzyARTMAP`: the gradient and the
loss come from the surrogate built from the model's current weights, the logits from the model's real decision. So
``Problem.success`` and the keep-best bookkeeping see only real breaks: a point counts as broken only when the
ARTMAP itself misclassifies it. (PGD's last-iterate scoring uses the model's loss; keep-best ranks first by real
success, so the mix only orders the non-broken iterates.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparring.errors import ConfigError, DataError
from sparring.gradients import GradientStep
from sparring.losses import LossFn
from sparring.streaming.artmap import CHUNK_ELEMENTS, FuzzyARTMAP

#: How far below a row's lowest category log-probability a class with no category scores.
EMPTY_CLASS_GAP = 100.0


def smooth_min(u: Tensor, v: Tensor, gamma: float) -> Tensor:
    """−γ log(e^{−u/γ} + e^{−v/γ}): a smooth lower bound of min(u, v), within γ log 2 of it."""
    return -gamma * torch.logaddexp(-u / gamma, -v / gamma)


class WBSoftmaxSurrogate(nn.Module):
    """The surrogate of ``artmap`` (it reads the ARTMAP's weights at every call, so it follows a model that is still
    learning). Output: class log-probabilities (B, K)."""

    def __init__(self, artmap: FuzzyARTMAP, *, tau: float = 0.002, smooth: float | None = None) -> None:
        super().__init__()
        check_settings(tau, smooth)
        self.artmap, self.tau, self.smooth = artmap, float(tau), smooth

    def category_logits(self, x: Tensor) -> Tensor:
        """T / τ (B, n), differentiable in ``x``."""
        art = self.artmap
        art._check_fitted()
        coded = art.code(x)  # (B, 2d)
        w = art.weights.detach()
        denominator = art.config.alpha + w.sum(1)  # (n,)
        rows = max(1, CHUNK_ELEMENTS // max(1, w.numel()))
        parts = []
        for chunk in coded.split(rows):
            pair = (chunk.unsqueeze(1), w.unsqueeze(0))  # (b, 1, 2d), (1, n, 2d)
            low = torch.minimum(*pair) if self.smooth is None else smooth_min(*pair, self.smooth)
            parts.append(low.sum(2) / denominator)
        return torch.cat(parts) / self.tau

    def forward(self, x: Tensor) -> Tensor:
        logits = self.category_logits(x)  # (B, n)
        k = self.artmap.config.num_classes
        members = nn.functional.one_hot(self.artmap.category_class, k).T.bool()  # (K, n)
        log_p = logits.log_softmax(1)  # (B, n)
        # s_k = logsumexp of log p_j over the class's categories. Non-members enter at a floor far below every
        # member (per row, so a sample's scores do not depend on its batch mates): exp(floor − max) = 0 for a class
        # with members, and an empty class scores about the floor, finite, with finite gradients.
        floor = log_p.detach().amin(1, keepdim=True).unsqueeze(2) - EMPTY_CLASS_GAP  # (B, 1, 1)
        masked = torch.where(members.unsqueeze(0), log_p.unsqueeze(1), floor)  # (B, K, n)
        return torch.logsumexp(masked, dim=2)

    def margin(self, x: Tensor, y: Tensor) -> Tensor:
        """(B,) s_y − max_{k ≠ y} s_k, without gradient: > 0 where the surrogate is right, small near its boundary."""
        with torch.no_grad():
            scores = self(x)
        true = scores.gather(1, y[:, None]).squeeze(1)
        other = scores.scatter(1, y[:, None], -math.inf).amax(1)
        return true - other


@dataclass(frozen=True, kw_only=True)
class WBSoftmax:
    """Gradient source: ∇ₓ of the loss on the WB-Softmax surrogate of the attacked ARTMAP; real ARTMAP logits.

    Attributes:
        tau: softmax temperature τ over the choice values (default 0.002).
        smooth: γ of the smooth min; None (default) uses the min and its subgradient.

    The model handed to the attack must be the :class:`FuzzyARTMAP` itself (its weights are read at every query,
    its ``forward`` gives the logits that judge success).
    """

    tau: float = 0.002
    smooth: float | None = None

    def __post_init__(self) -> None:
        check_settings(self.tau, self.smooth)

    def surrogate(self, model: nn.Module) -> WBSoftmaxSurrogate:
        if not isinstance(model, FuzzyARTMAP):
            raise ConfigError(f"the WBSoftmax gradient source attacks a FuzzyARTMAP, got {type(model).__name__}")
        return WBSoftmaxSurrogate(model, tau=self.tau, smooth=self.smooth)

    def __call__(self, model: nn.Module, x: Tensor, loss_fn: LossFn, ref: Tensor) -> GradientStep:
        surrogate = self.surrogate(model)
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(surrogate(xg), ref)
            (grad,) = torch.autograd.grad(loss.sum(), xg)
        if not torch.isfinite(grad).all():
            raise DataError("the WB-Softmax surrogate gave a non-finite gradient: raise tau or use smooth=None")
        with torch.no_grad():
            logits = model(x.detach())  # the real decision judges success
        return GradientStep(grad=grad, loss=loss.detach(), logits=logits)


def check_settings(tau: float, smooth: float | None) -> None:
    if not tau > 0:
        raise ConfigError(f"WB-Softmax tau must be > 0, got {tau}")
    if smooth is not None and not smooth > 0:
        raise ConfigError(f"WB-Softmax smooth (the smooth-min gamma) must be > 0 or None, got {smooth}")
