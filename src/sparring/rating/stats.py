"""The statistics of a human rating study, numpy and the standard library only.

* :func:`t_cdf` / :func:`t_ppf`: Student's t distribution through the regularised incomplete beta function
  (:func:`betainc`, Lentz's continued fraction), so that scipy need not be a dependency.
* :func:`welch_tost`: two one-sided Welch t-tests (TOST) for the equivalence of two means within ``±delta``.
* :func:`krippendorff_alpha`: Krippendorff's α for units × raters with missing ratings, nominal, ordinal or interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_EPS = 1e-15
_TINY = 1e-300


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1.

    The continued fraction of Numerical Recipes (§6.4) evaluated by the modified Lentz method, on the side of the
    symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where it converges fast; about 1e-14 accurate.
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float, max_terms: int = 500) -> float:
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, max_terms + 1):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for numerator in (even, odd):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            step = d * c
            h *= step
        if abs(step - 1.0) < _EPS:
            break
    return h


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (not necessarily an integer: Welch's)."""
    if df <= 0 or math.isnan(df):
        raise ValueError(f"t_cdf needs df > 0, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    if df > 1e7:  # the normal limit (error below 1e-7), where lgamma of huge arguments would cost precision
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_ppf needs 0 < q < 1, got {q}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Equivalence:
    """The result of :func:`welch_tost`: ``difference`` = mean(a) - mean(b), its ``ci`` at level 1 - 2α (the
    interval that lies inside ``±delta`` exactly when TOST rejects), the two one-sided ``p_lower`` (H0: difference
    <= -delta) and ``p_upper`` (H0: difference >= +delta), ``p`` = their maximum, Welch's ``df`` and the verdict.
    ``p`` is None (and ``equivalent`` False) when a group has fewer than two ratings."""

    difference: float
    delta: float
    alpha: float
    equivalent: bool
    p: float | None
    p_lower: float | None
    p_upper: float | None
    df: float | None
    ci: tuple[float, float] | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (a non-finite number, such as the infinite df of two constant groups, becomes None)."""

        def finite(value: float | None) -> float | None:
            return value if value is not None and math.isfinite(value) else None

        return {"difference": finite(self.difference), "delta": self.delta, "alpha": self.alpha,
                "equivalent": self.equivalent, "p": self.p, "p_lower": self.p_lower, "p_upper": self.p_upper,
                "df": finite(self.df), "ci": list(self.ci) if self.ci is not None else None}


def welch_tost(a: Sequence[float], b: Sequence[float], delta: float, alpha: float = 0.05) -> Equivalence:
    """Two one-sided Welch t-tests that mean(a) - mean(b) lies within ``(-delta, +delta)``.

    Equivalence is shown when both one-sided nulls are rejected at ``alpha`` (then the 1 - 2α confidence interval
    of the difference lies inside the bounds). Unequal variances and group sizes are allowed (Welch–Satterthwaite
    degrees of freedom). When both groups have zero variance the difference is known exactly: equivalent iff
    ``|difference| < delta`` (p = 0 or 1).
    """
    if delta <= 0:
        raise ValueError(f"the equivalence bound delta must be > 0, got {delta}")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(xa.mean() - xb.mean()) if len(xa) and len(xb) else math.nan
    if len(xa) < 2 or len(xb) < 2:
        return Equivalence(difference, delta, alpha, False, None, None, None, None, None)
    va, vb = float(xa.var(ddof=1)) / len(xa), float(xb.var(ddof=1)) / len(xb)
    se = math.sqrt(va + vb)
    if se == 0.0:
        inside = abs(difference) < delta
        p = 0.0 if inside else 1.0
        return Equivalence(difference, delta, alpha, inside, p, p, p, math.inf, (difference, difference))
    df = (va + vb) ** 2 / ((va * va / (len(xa) - 1) if va else 0.0) + (vb * vb / (len(xb) - 1) if vb else 0.0))
    p_lower = 1.0 - t_cdf((difference + delta) / se, df)
    p_upper = t_cdf((difference - delta) / se, df)
    p = max(p_lower, p_upper)
    half = t_ppf(1.0 - alpha, df) * se
    return Equivalence(difference, delta, alpha, p < alpha, p, p_lower, p_upper, df,
                       (difference - half, difference + half))


LEVELS = ("nominal", "ordinal", "interval")


def krippendorff_alpha(ratings: Mapping[Any, Mapping[Any, float]] | np.ndarray, level: str = "ordinal",
                       values: Sequence[float] | None = None) -> float | None:
    """Krippendorff's α of ratings with missing values (Krippendorff, *Computing Krippendorff's alpha-reliability*,
    2011): 1 = perfect agreement, 0 = agreement at chance, below 0 = systematic disagreement.

    ``ratings`` is ``{unit: {rater: value}}`` or a raters × units array with NaN for missing. Units rated by fewer
    than two raters are not pairable and ignored. ``level`` picks the difference function: ``nominal``,
    ``ordinal`` (ranks through the marginal frequencies, for Likert scales) or ``interval``. ``values`` is the
    ordered list of possible values (default: those that occur). Returns None when α is undefined: no pairable
    unit, or every pairable value is the same (no variation to agree on).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    units = _units(ratings)
    pairable = [u for u in units if len(u) >= 2]
    if not pairable:
        return None
    domain = sorted({v for u in pairable for v in u} | set(values or ()))
    index = {v: i for i, v in enumerate(domain)}
    k = len(domain)
    coincidence = np.zeros((k, k))
    for unit in pairable:
        counts = np.bincount([index[v] for v in unit], minlength=k).astype(float)
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (len(unit) - 1)
    marginals = coincidence.sum(axis=1)
    n = marginals.sum()
    delta2 = _differences(np.asarray(domain, dtype=float), marginals, level)
    expected = float((np.outer(marginals, marginals) * delta2).sum()) / (n * (n - 1))
    if expected == 0.0:
        return None
    observed = float((coincidence * delta2).sum()) / n
    return 1.0 - observed / expected


def _units(ratings: Mapping[Any, Mapping[Any, float]] | np.ndarray) -> list[list[float]]:
    if isinstance(ratings, Mapping):
        return [[float(v) for v in by_rater.values() if v is not None and not math.isnan(float(v))]
                for by_rater in ratings.values()]
    table = np.asarray(ratings, dtype=float)
    if table.ndim != 2:
        raise ValueError(f"ratings must be a raters x units array, got shape {table.shape}")
    return [[float(v) for v in column if not math.isnan(v)] for column in table.T]


def _differences(domain: np.ndarray, marginals: np.ndarray, level: str) -> np.ndarray:
    """The squared difference δ²(c, k) between every two values of the domain."""
    k = len(domain)
    if level == "nominal":
        return 1.0 - np.eye(k)
    if level == "interval":
        return (domain[:, None] - domain[None, :]) ** 2
    cumulative = np.concatenate([[0.0], np.cumsum(marginals)])  # ordinal: Σ_{g=c}^{k} n_g - (n_c + n_k) / 2
    lo, hi = np.minimum.outer(np.arange(k), np.arange(k)), np.maximum.outer(np.arange(k), np.arange(k))
    between = cumulative[hi + 1] - cumulative[lo]
    return (between - (marginals[:, None] + marginals[None, :]) / 2.0) ** 2
