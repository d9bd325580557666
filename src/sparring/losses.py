"""Per-example losses: every function returns a (B,) tensor, never a reduced scalar.

Keeping losses per example is what lets reweighting (DRO), class-adaptive budgets and partition-based
objectives compose with any attack. A ``LossFn`` maps ``(logits, ref)`` to (B,), where ``ref`` is the
per-sample reference the loss needs (labels, target classes, or clean probabilities for TRADES); attacks
index ``ref`` together with the inputs, so a loss never has to know which rows it is working on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from sparring.errors import ConfigError

LossFn = Callable[[Tensor, Tensor], Tensor]
#: Token references equal to this are ignored by sequence losses and success (padding, prompt positions).
IGNORE = -100


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """``CE(z, y) = −log softmax(z)_y``, shape (B,).

    Sequence outputs (logits (B, k, V), token references (B, k)) give the mean token NLL per example, over
    the positions whose reference is not :data:`IGNORE` (−100, Hugging Face's label for padding)."""
    if logits.dim() == 3:
        nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none", ignore_index=IGNORE)
        return nll.sum(1) / (y != IGNORE).sum(1).clamp_min(1)
    return F.cross_entropy(logits.float(), y, reduction="none")


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini–Wagner margin ``max_{i≠y} z_i − z_y`` (positive once misclassified), shape (B,).

    Scale-free in the sense that matters against masking: it does not saturate like CE when the
    softmax is confident.
    """
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.amax(1) - true


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of logits ratio (Croce & Hein 2020), to be maximized; needs ≥ 3 classes.

    ``DLR(z, y) = −(z_y − max_{i≠y} z_i) / (z_{π1} − z_{π3} + 1e-12)``, π sorting z descending.
    """
    logits = logits.float()
    if logits.shape[1] < 3:
        raise ConfigError("the DLR loss needs at least 3 classes")
    top = logits.sort(dim=1, descending=True).values
    return margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: Tensor, ref: Tensor) -> Tensor:
    """Targeted DLR (Croce & Hein 2020), to be maximized; needs ≥ 4 classes.

    ``DLR_t(z, y, t) = −(z_y − z_t) / (z_{π1} − (z_{π3} + z_{π4}) / 2 + 1e-12)``, π sorting z descending.
    ``ref`` is (B, 2) long: ``[label, target]`` per row. Not in :data:`LOSSES`, since it needs the pair;
    APGD-T passes it as ``loss_fn`` with ``loss_ref=torch.stack([y, t], 1)``.
    """
    logits = logits.float()
    if logits.shape[1] < 4:
        raise ConfigError(f"the targeted DLR loss needs at least 4 classes, got {logits.shape[1]}")
    if ref.dim() != 2 or ref.shape[1] != 2:
        raise ConfigError(f"dlr_targeted needs ref of shape (B, 2) = [label, target], got {tuple(ref.shape)}")
    pair = logits.gather(1, ref)  # (B, 2): z_y, z_t
    top = logits.topk(4, dim=1).values
    return (pair[:, 1] - pair[:, 0]) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def kl_to_reference(logits: Tensor, ref_probs: Tensor) -> Tensor:
    """``KL(p_ref ‖ softmax(z))`` per example, as in TRADES (``ref_probs`` are clean probabilities)."""
    log_q = F.log_softmax(logits.float(), dim=1)
    return (ref_probs * (ref_probs.clamp_min(1e-12).log() - log_q)).sum(1)


def js_divergence(p_logits: Tensor, q_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Jensen–Shannon divergence between ``softmax(p/T)`` and ``softmax(q/T)`` per example, shape (B,).

    ``½[KL(p‖M) + KL(q‖M)]`` with ``M = ½(p + q)`` and ``log M`` clamped at 1e-8, as in RAAT's code.
    Symmetric, 0 for identical inputs, at most log 2.
    """
    log_p = F.log_softmax(p_logits.float() / temperature, dim=1)
    log_q = F.log_softmax(q_logits.float() / temperature, dim=1)
    p, q = log_p.exp(), log_q.exp()
    log_m = (0.5 * (p + q)).clamp_min(1e-8).log()
    return 0.5 * ((p * (log_p - log_m)).sum(1) + (q * (log_q - log_m)).sum(1))


def targeted(loss: LossFn) -> LossFn:
    """Turn a loss to maximize for label ``y`` into one to maximize for reaching target ``t``."""

    def to_target(logits: Tensor, target: Tensor) -> Tensor:
        return -loss(logits, target)

    return to_target


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def get_loss(name: str) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; available: {', '.join(sorted(LOSSES))}") from None


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """(B,) bool: is the top-1 prediction correct."""
    return logits.argmax(1) == y


