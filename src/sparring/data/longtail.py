"""Long-tailed subsets with the exponential profile of Cui et al. (CVPR 2019) / Cao et al. (LDAM, 2019).

Class c keeps ``n_c = ⌊n_max · ρ^(−c/(C−1))⌋`` samples, so class 0 is the head, class C−1 the tail and
``n_0 / n_{C−1} ≈ ρ`` (the imbalance ratio). ``n_max = min_c ⌊a_c · ρ^(c/(C−1))⌋`` is the largest head size
for which every class c can supply its quota from its ``a_c`` available samples (on balanced data,
``n_max = a_0``). Which samples are kept is drawn under ``seed``.
"""

from __future__ import annotations

import math

import torch

from sparring.data.dataset import Dataset
from sparring.errors import DataError


def long_tail_counts(available: list[int], imbalance_ratio: float) -> list[int]:
    """Per-class quotas ``n_c`` of the exponential profile, given ``available[c]`` samples of each class."""
    rho = float(imbalance_ratio)
    if not math.isfinite(rho) or rho < 1.0:
        raise DataError(f"imbalance_ratio must be a finite number >= 1, got {imbalance_ratio}")
    num = len(available)
    if num == 0:
        raise DataError("long_tail needs at least one class")
    if min(available) == 0:
        raise DataError(f"class {available.index(0)} has no samples; long_tail needs every class present")
    span = max(num - 1, 1)
    n_max = min(math.floor(a * rho ** (c / span)) for c, a in enumerate(available))
    counts = [min(math.floor(n_max * rho ** (-c / span)), a) for c, a in enumerate(available)]
    if counts[-1] < 1:
        raise DataError(
            f"imbalance_ratio {rho:g} is too large for a head of {n_max} samples: the tail class would be empty; "
            f"use imbalance_ratio <= {n_max}"
        )
    return counts


def long_tail(ds: Dataset, *, imbalance_ratio: float, seed: int = 0) -> Dataset:
    """A long-tailed subset of ``ds`` (class 0 the head) named ``f"{ds.name}-lt{ρ:g}"``; order is kept."""
    counts = long_tail_counts(ds.class_counts().tolist(), imbalance_ratio)
    gen = torch.Generator().manual_seed(int(seed))
    y = ds.y.cpu()
    keep = []
    for c, n_c in enumerate(counts):
        members = torch.nonzero(y == c).flatten()
        keep.append(members[torch.randperm(members.numel(), generator=gen)[:n_c]])
    out = ds.subset(torch.cat(keep).sort().values)
    out.name = f"{ds.name}-lt{float(imbalance_ratio):g}"
    return out
