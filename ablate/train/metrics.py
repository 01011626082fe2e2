"""Loss-series maths (DESIGN.md §4); intervals and ratio averages live in ablate/stats.py."""

from __future__ import annotations

import math
from collections.abc import Sequence


def loss_slope(losses: Sequence[float], warmup_frac: float = 0.1) -> float:
    """Least-squares slope of loss against step after a warm-up, in loss per 100 steps.

    Non-finite losses are skipped; fewer than two usable points give NaN.
    """
    start = int(len(losses) * warmup_frac)
    pts = [(i, v) for i, v in enumerate(losses) if i >= start and math.isfinite(v)]
    if len(pts) < 2:
        return float("nan")
    n = len(pts)
    mx = sum(i for i, _ in pts) / n
    my = sum(v for _, v in pts) / n
    sxx = sum((i - mx) ** 2 for i, _ in pts)
    sxy = sum((i - mx) * (v - my) for i, v in pts)
    return 100.0 * sxy / sxx


def edge_means(values: Sequence[float], frac: float = 0.1) -> tuple[float, float]:
    """Means of the first and last `frac` of a series (at least one point each)."""
    if not values:
        return float("nan"), float("nan")
    k = max(1, int(round(len(values) * frac)))
    return sum(values[:k]) / k, sum(values[-k:]) / k
