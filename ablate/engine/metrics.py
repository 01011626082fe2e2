"""Loss-series maths (docs/concepts.md, "What the numbers mean").

Intervals and ratio averages live in ablate/stats.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _fit(losses: Sequence[float], warmup_frac: float) -> tuple[int, float, float, float, float] | None:
    """(first fitted step, mean step, mean loss, Sxx, Sxy) after the warm-up; None below 2 points."""
    start = int(len(losses) * warmup_frac)
    pts = [(i, v) for i, v in enumerate(losses) if i >= start and math.isfinite(v)]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(i for i, _ in pts) / n
    my = sum(v for _, v in pts) / n
    sxx = sum((i - mx) ** 2 for i, _ in pts)
    sxy = sum((i - mx) * (v - my) for i, v in pts)
    return start, mx, my, sxx, sxy


def loss_slope(losses: Sequence[float], warmup_frac: float = 0.1) -> float:
    """Least-squares slope of loss against step after a warm-up, in loss per 100 steps.

    Non-finite losses are skipped; fewer than two usable points give NaN.
    """
    fit = _fit(losses, warmup_frac)
    return float("nan") if fit is None else 100.0 * fit[4] / fit[3]


def loss_line(losses: Sequence[float], warmup_frac: float = 0.1) -> tuple[int, float, float]:
    """The line ``loss_slope`` fits: (first fitted step, slope per step, intercept at step 0);
    NaN slope and intercept below two usable points. Plots draw it over the curve."""
    fit = _fit(losses, warmup_frac)
    if fit is None:
        return int(len(losses) * warmup_frac), float("nan"), float("nan")
    start, mx, my, sxx, sxy = fit
    return start, sxy / sxx, my - sxy / sxx * mx


def edge_means(values: Sequence[float], frac: float = 0.1) -> tuple[float, float]:
    """Means of the first and last `frac` of a series (at least one point each)."""
    if not values:
        return float("nan"), float("nan")
    k = max(1, int(round(len(values) * frac)))
    return sum(values[:k]) / k, sum(values[-k:]) / k
