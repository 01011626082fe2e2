"""Interval and averaging maths shared by the engine, the queries and the plots (pure Python).

Why t-intervals and not the percentile bootstrap: the units we resample are few (3-8 probe batches,
2-5 seeds), and a percentile bootstrap of so few values undercovers badly (77% for a nominal 95%
with 3 batches, measured). A Student-t interval on the mean of the logs is exact for normal data at
any n >= 2; ``tests/test_stats.py`` measures its coverage by simulation.

Two-level data (seeds, and batches or steps within a seed) use the two-stage rule: each seed's mean,
then a t-interval over the seed means (df = seeds - 1). The seed means already carry the batch
noise, so the interval covers both sources. With one seed there is nothing to resample but batches:
the interval is then *within-seed* (it says how well that one initialisation is measured, not how
another seed would come out), and :func:`two_stage_ci` says so in its ``scope``.

Ratios are averaged geometrically (mean of logs): a ratio of 2 and one of 0.5 average to 1.
This module imports nothing heavier than ``math``, so read commands stay light.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

LEVEL = 0.95
# A ratio of a group that did not move at all (frozen adapters: update 0) has log -inf; we floor it
# so averages and objectives stay finite. 1e-6 reads as "six orders of magnitude below the baseline".
RATIO_FLOOR = 1e-6
SCOPE_SEEDS = "seeds"  # interval over seed means: another seed would fall in it
SCOPE_WITHIN = "within-seed"  # one seed: batch (or step-block) noise only
SCOPE_NONE = "none"  # one value, no interval


def finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean(values: Sequence[float]) -> float:
    v = finite(values)
    return sum(v) / len(v) if v else math.nan


def sample_std(values: Sequence[float]) -> float:
    v = finite(values)
    if len(v) < 2:
        return math.nan
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def log_ratio(r: float) -> float:
    """log of a ratio, with ratios below RATIO_FLOOR (including 0) counted as the floor; NaN stays NaN."""
    if r is None or math.isnan(r):
        return math.nan
    return math.log(max(r, RATIO_FLOOR))


def geo_mean(ratios: Sequence[float]) -> float:
    """Geometric mean of ratios (see :func:`log_ratio` for zeros); NaN when none is finite."""
    logs = finite([log_ratio(r) for r in ratios])
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


def dilution(ratio: float) -> float:
    """max(0, -log R): 0 when the group gets at least the baseline's gradient, growing as it shrinks.

    An amplified gradient (R > 1) scores 0, not better than 1: amplification is not rewarded.
    """
    if ratio is None or math.isnan(ratio):
        return math.nan
    return max(0.0, -log_ratio(ratio))


# --------------------------------------------------------------------------------- Student t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log(1.0 - x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


@lru_cache(maxsize=256)
def t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t (bisection on :func:`t_cdf`; exact to ~1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------- intervals


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval; ``scope`` says what the interval covers."""

    estimate: float
    lo: float
    hi: float
    n: int  # units the interval is over (seeds, or batches/blocks within one seed)
    scope: str

    def map(self, f) -> Interval:  # noqa: ANN001 - a monotone increasing float function
        return Interval(f(self.estimate), f(self.lo), f(self.hi), self.n, self.scope)


def mean_ci(values: Sequence[float], level: float = LEVEL, scope: str = SCOPE_WITHIN) -> Interval:
    """t-interval of the mean of finite ``values``; one value gives NaN bounds (no interval)."""
    v = finite(values)
    if not v:
        return Interval(math.nan, math.nan, math.nan, 0, SCOPE_NONE)
    m = sum(v) / len(v)
    if len(v) == 1:
        return Interval(m, math.nan, math.nan, 1, SCOPE_NONE)
    half = t_ppf(0.5 + level / 2.0, len(v) - 1) * sample_std(v) / math.sqrt(len(v))
    return Interval(m, m - half, m + half, len(v), scope)


def two_stage_ci(groups: Sequence[Sequence[float]], level: float = LEVEL) -> Interval:
    """Mean over groups (seeds) of each group's mean, with a t-interval over the group means.

    With a single group the interval is over that group's values, scope ``within-seed``.
    """
    groups = [finite(g) for g in groups]
    groups = [g for g in groups if g]
    if not groups:
        return Interval(math.nan, math.nan, math.nan, 0, SCOPE_NONE)
    if len(groups) == 1:
        return mean_ci(groups[0], level, SCOPE_WITHIN)
    return mean_ci([sum(g) / len(g) for g in groups], level, SCOPE_SEEDS)


def ratio_ci(groups: Sequence[Sequence[float]], level: float = LEVEL) -> Interval:
    """Geometric mean of ratios with its interval: :func:`two_stage_ci` on the logs, mapped back."""
    return two_stage_ci([[log_ratio(r) for r in g] for g in groups], level).map(math.exp)


def block_means(series: Sequence[float], n_blocks: int = 5) -> list[float]:
    """Means of ``n_blocks`` contiguous blocks of a series (the batch-means rule for autocorrelated
    per-step values: neighbouring steps are not independent, blocks of steps nearly are)."""
    v = finite(series)
    if not v:
        return []
    k = max(1, min(n_blocks, len(v)))
    edges = [round(i * len(v) / k) for i in range(k + 1)]
    return [sum(v[a:b]) / (b - a) for a, b in zip(edges, edges[1:]) if b > a]
