"""Detection metrics on score tensors: AUROC, recall at a fixed false-positive rate, best F1.

Scores are "higher = more likely adversarial"; clean inputs are the negatives, attacked inputs the positives.
Everything is exact (no binning) and vectorised: sorted scores and ``searchsorted`` replace per-threshold loops.
Inputs may be tensors, NumPy arrays or lists of any shape; they are flattened to float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparring.errors import ConfigError, DataError

ScoreLike = Tensor | np.ndarray | Sequence[float]


def _as_scores(values: ScoreLike, name: str) -> Tensor:
    scores = torch.as_tensor(values).detach().to("cpu", torch.float64).flatten()
    if scores.isnan().any():
        raise DataError(f"{name} scores contain NaN: check the detector's inputs")
    return scores


def auroc(clean_scores: ScoreLike, adv_scores: ScoreLike) -> float | None:
    """P(adv score > clean score) + ½·P(equal): the Mann–Whitney U statistic over n_clean·n_adv, exactly.

    None when either side is empty.
    """
    clean, adv = _as_scores(clean_scores, "clean"), _as_scores(adv_scores, "adversarial")
    if clean.numel() == 0 or adv.numel() == 0:
        return None
    ordered = clean.sort().values
    below = torch.searchsorted(ordered, adv, right=False)  # clean scores < a
    at_or_below = torch.searchsorted(ordered, adv, right=True)  # clean scores ≤ a
    wins = below.sum() + 0.5 * (at_or_below - below).sum()
    return float(wins / (clean.numel() * adv.numel()))


def threshold_at_fpr(clean_scores: ScoreLike, fpr: float) -> float:
    """The smallest clean score t with (share of clean scores > t) ≤ ``fpr``; flag inputs with score > t."""
    if not 0.0 <= fpr < 1.0:
        raise ConfigError(f"fpr must be in [0, 1), got {fpr}")
    clean = _as_scores(clean_scores, "clean")
    if clean.numel() == 0:
        raise DataError("no clean scores to set a threshold on: pass at least one clean input")
    ordered = clean.sort().values
    above = clean.numel() - torch.searchsorted(ordered, ordered, right=True)  # non-increasing along `ordered`
    # the tolerance keeps e.g. 0.29 * 100 = 28.999... from dropping a whole false positive
    allowed = fpr * clean.numel() + 1e-9
    first = int(torch.nonzero(above <= allowed)[0])  # the largest score always qualifies (0 above it)
    return float(ordered[first])


def tpr_at_fpr(clean_scores: ScoreLike, adv_scores: ScoreLike, fpr: float) -> tuple[float | None, float]:
    """(recall on adversarial inputs, threshold) at the threshold of :func:`threshold_at_fpr`.

    The recall is None when there are no adversarial scores.
    """
    threshold = threshold_at_fpr(clean_scores, fpr)
    adv = _as_scores(adv_scores, "adversarial")
    if adv.numel() == 0:
        return None, threshold
    return float((adv > threshold).double().mean()), threshold


def max_f1(clean_scores: ScoreLike, adv_scores: ScoreLike) -> float | None:
    """The best F1 (adversarial = positive) over every rule "score ≥ t"; None when either side is empty."""
    clean, adv = _as_scores(clean_scores, "clean"), _as_scores(adv_scores, "adversarial")
    if clean.numel() == 0 or adv.numel() == 0:
        return None
    candidates = torch.cat([clean, adv]).unique()  # every distinct partition of the scores
    true_pos = adv.numel() - torch.searchsorted(adv.sort().values, candidates, right=False)
    false_pos = clean.numel() - torch.searchsorted(clean.sort().values, candidates, right=False)
    false_neg = adv.numel() - true_pos
    f1 = 2 * true_pos / (2 * true_pos + false_pos + false_neg).clamp_min(1)
    return float(f1.max())


def detection_metrics(clean_scores: ScoreLike, adv_scores: ScoreLike) -> dict[str, Any]:
    """AUROC, recall at 1% and 5% FPR, max-F1 and the sample counts; metrics are None when a side is empty."""
    clean, adv = _as_scores(clean_scores, "clean"), _as_scores(adv_scores, "adversarial")
    empty = clean.numel() == 0 or adv.numel() == 0
    return {
        "auroc": auroc(clean, adv),
        "tpr_at_1fpr": None if empty else tpr_at_fpr(clean, adv, 0.01)[0],
        "tpr_at_5fpr": None if empty else tpr_at_fpr(clean, adv, 0.05)[0],
        "max_f1": max_f1(clean, adv),
        "n_clean": clean.numel(),
        "n_adv": adv.numel(),
    }
