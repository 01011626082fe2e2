"""Interval and averaging maths shared by the engine, the queries and the plots (pure Python).

Why t-intervals and not the percentile bootstrap: the units we resample are few (3-8 probe batches,
2-5 seeds), and a percentile bootstrap of so few values undercovers badly (77% for a nominal 95%
with 3 batches, measured). A Student-t interval on the mean of the logs is exact for normal data at
any n >= 2; ``tests/test_stats.py`` measures its coverage by simulation.

Two-level data (seeds, and batches or steps within a seed) use the two-stage rule: each seed's mean,
then a t-interval over the seed means (df = seeds - 1). The seed means already carry the batch
noise, so the interval covers both sources. With one seed there is nothing to resample but batches
or steps: the interval is then *within-seed* (it says how well that one initialisation is measured,
not how another seed would come out), and :func:`two_stage_ci` says so in its ``scope``. Steps of
one run are autocorrelated, unlike probe batches: :func:`series_ci` widens their interval by the
effective sample size and reports the lag-1 autocorrelation it used.

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
SCOPE_WITHIN = "within-seed"  # one seed: batch (or step-to-step) noise only
# Lag-1 autocorrelation of a run's per-step ratios from which its within-seed interval is flagged (the
# report's caveats): the interval then rests on few effective steps (n_eff <= n / 9), so it is wide.
HIGH_AUTOCORRELATION = 0.8
CHECKED_AUTOCORRELATION = 0.95  # the largest at which tests/test_stats.py measures series_ci's coverage
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


def welch_ci(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """mean(a) - mean(b) of two independent samples (the finite values), with Welch's t-interval:
    standard error sqrt(s_a^2 / n_a + s_b^2 / n_b), Welch-Satterthwaite degrees of freedom. For
    seeds that are not paired (two studies that ran different seeds); fewer than two values on a
    side: the difference without an interval."""
    x, y = finite(a), finite(b)
    if not x or not y:
        return Interval(math.nan, math.nan, math.nan, 0, SCOPE_NONE)
    d = sum(x) / len(x) - sum(y) / len(y)
    n = len(x) + len(y)
    if len(x) < 2 or len(y) < 2:
        return Interval(d, math.nan, math.nan, n, SCOPE_NONE)
    va, vb = sample_std(x) ** 2 / len(x), sample_std(y) ** 2 / len(y)
    se = math.sqrt(va + vb)
    if se == 0.0:  # nothing varies on either side: the difference is exact
        return Interval(d, d, d, n, SCOPE_SEEDS)
    df = (va + vb) ** 2 / (va * va / (len(x) - 1) + vb * vb / (len(y) - 1))
    half = t_ppf(0.5 + level / 2.0, df) * se
    return Interval(d, d - half, d + half, n, SCOPE_SEEDS)


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


def lag1_autocorrelation(series: Sequence[float]) -> float:
    """Sample lag-1 autocorrelation of the finite values in order, sum((x[t] - m) (x[t+1] - m)) /
    sum((x[t] - m)^2); NaN with fewer than 3 values or none that differ."""
    v = finite(series)
    if len(v) < 3 or min(v) == max(v):  # equal values (a frozen group's floored ratios): rounding only
        return math.nan
    m = sum(v) / len(v)
    d = [x - m for x in v]
    den = sum(x * x for x in d)
    if den <= 0.0:
        return math.nan
    return sum(a * b for a, b in zip(d, d[1:])) / den


def series_ci(series: Sequence[float], level: float = LEVEL) -> tuple[Interval, float]:
    """t-interval of the mean of one run's per-step values, and their lag-1 autocorrelation r.

    Neighbouring steps are correlated, so the series holds fewer independent values than steps: the
    interval uses the AR(1) effective sample size n_eff = n (1 - rho) / (1 + rho) for the standard
    error s / sqrt(n_eff) and t with floor(n_eff - 1) degrees of freedom (at least 1). In a short
    series r is both low on average and noisy, and taken at face value the interval undercovers
    (85% at rho 0.9 and 78% at 0.95 over 54 steps, measured). So rho is r with its first-order bias removed
    (E[r] ~ rho - (1 + 3 rho) / n for a series whose mean is estimated: rho ~ (n r + 1) / (n - 3))
    plus one standard error sqrt((1 - rho^2) / n), and never below 0: a negatively correlated
    series gets the interval of independent steps. ``tests/test_stats.py`` measures the coverage on
    AR(1) series of 54 and 270 steps (quick's 60 and a real run's 300, less warm-up) up to
    rho = 0.95 (95-97%; 96-98% for independent steps, so it errs wide); past CHECKED_AUTOCORRELATION
    it is not checked. At rho >= 0.9 over 54 steps n_eff is 1-3 and the interval is very wide: the
    run's mean is not pinned down by one seed, which is what it should say.
    """
    v = finite(series)
    n = len(v)
    if n > 1 and min(v) == max(v):  # nothing varies: the value itself, not an interval of rounding errors
        m = sum(v) / n
        return Interval(m, m, m, n, SCOPE_WITHIN), math.nan
    r = lag1_autocorrelation(v)
    if not math.isfinite(r):  # under 3 values: nothing to correct for
        return mean_ci(v, level), r
    rho = min(max((n * r + 1.0) / (n - 3) if n > 3 else r, 0.0), 1.0)
    rho = min(rho + math.sqrt((1.0 - rho * rho) / n), 1.0)
    n_eff = max(1.0, n * (1.0 - rho) / (1.0 + rho))
    m = sum(v) / n
    half = t_ppf(0.5 + level / 2.0, max(1, math.floor(n_eff - 1.0))) * sample_std(v) / math.sqrt(n_eff)
    return Interval(m, m - half, m + half, n, SCOPE_WITHIN), r
