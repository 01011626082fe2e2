"""Metric maths shared by the engine, the store's queries and the plots (DESIGN.md §4)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


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


def median(values: Sequence[float]) -> float:
    """Conventional median (midpoint of the two middle values for even counts); NaN if empty."""
    s = sorted(values)
    if not s:
        return float("nan")
    m = len(s) // 2
    return float(s[m]) if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


def bootstrap_ci(
    values: Sequence[float],
    stat: str = "median",
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the median (or mean) of `values`; deterministic by `seed`.

    One value gives a degenerate interval [v, v]; no values give (nan, nan).
    """
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    if len(vals) == 1:
        return vals[0], vals[0]
    x = torch.tensor(vals, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(vals), (n_resamples, len(vals)), generator=gen)
    samples = x[idx]
    if stat == "median":
        # torch's median picks the lower middle; sort to get the conventional midpoint.
        s = samples.sort(dim=1).values
        m = len(vals) // 2
        stats = s[:, m] if len(vals) % 2 else 0.5 * (s[:, m - 1] + s[:, m])
    elif stat == "mean":
        stats = samples.mean(dim=1)
    else:
        raise ValueError(f"stat must be 'median' or 'mean', got {stat!r}")
    alpha = (1.0 - level) / 2.0
    lo, hi = torch.quantile(stats, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    return float(lo), float(hi)
