"""Per-example loss heads of language-model adversarial training, on continuation logits (B, K, V).

* :func:`toward`: the mean token NLL of a continuation, floored at a cutoff (CAT's ``toward_cutoff``);
* :func:`away`: pushes a continuation's likelihood down: CAT's −NLL floored at ``away_cutoff`` (the released
  code: below the cutoff the loss becomes ``cutoff + 0.001·(−NLL)``, so it stops growing), or LAT's
  unlikelihood mean_t −log(1 − p_t), which saturates by itself;
* :func:`sequence_logprob`: the summed or mean token log-probability of a continuation;
* :func:`ipo`: the IPO preference loss (Azar et al. 2023) of CAPO.

Every head returns (B,); padding positions (label :data:`~sparring.losses.IGNORE`) never count.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sparring.losses import IGNORE, cross_entropy

AwayKind = Literal["cutoff", "unlikelihood"]


def _floored(value: Tensor, cutoff: float) -> Tensor:
    """Below ``cutoff`` the loss becomes ``cutoff + 0.001·value``: it keeps a tiny slope but stops driving."""
    return torch.where(value < cutoff, cutoff + 1e-3 * value, value)


def toward(logits: Tensor, labels: Tensor, *, cutoff: float = 0.0) -> Tensor:
    """Mean token NLL of ``labels`` (B, K), floored at ``cutoff`` (0: no floor, NLL ≥ 0)."""
    return _floored(cross_entropy(logits, labels), cutoff)


def away(logits: Tensor, labels: Tensor, *, kind: AwayKind = "cutoff", cutoff: float = -5.0) -> Tensor:
    """Loss that falls as ``labels`` become unlikely: ``"cutoff"``: −NLL floored at ``cutoff``; ``"unlikelihood"``:
    the mean over tokens of −log(1 − p_t)."""
    if kind == "cutoff":
        return _floored(-cross_entropy(logits, labels), cutoff)
    valid = labels != IGNORE
    log_p = torch.gather(F.log_softmax(logits.float(), -1), 2, labels.clamp_min(0)[..., None]).squeeze(-1)
    log_not_p = torch.log1p(-log_p.exp().clamp(max=1 - 1e-6))  # log(1 − p_t), finite at p → 1
    return -(log_not_p * valid).sum(1) / valid.sum(1).clamp_min(1)


def sequence_logprob(logits: Tensor, labels: Tensor, *, mean: bool = False) -> Tensor:
    """Σ_t log p(label_t) over the non-padding tokens (``mean=True``: divided by their number), shape (B,)."""
    valid = labels != IGNORE
    log_p = torch.gather(F.log_softmax(logits.float(), -1), 2, labels.clamp_min(0)[..., None]).squeeze(-1)
    total = (log_p * valid).sum(1)
    return total / valid.sum(1).clamp_min(1) if mean else total


def ipo(chosen: Tensor, rejected: Tensor, chosen_ref: Tensor, rejected_ref: Tensor, *, beta: float) -> Tensor:
    """IPO: ``(h − 1/(2β))²`` with h = (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r)), shape (B,)."""
    h = (chosen - chosen_ref) - (rejected - rejected_ref)
    return (h - 1 / (2 * beta)).square()
