"""Pareto-front maths for the loss-versus-ratio tradeoff, kept free of pandas and matplotlib.

A point dominates another when it is at least as good on both axes and strictly better on one.
Exact duplicates do not dominate each other, so both stay on the front (a researcher should see
that two trials tie, not have one silently dropped). Points with a NaN coordinate are excluded:
a trial whose metric was never computed cannot claim a place on the front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]], maximize_x: bool = True, minimize_y: bool = True) -> list[int]:
    """Indices of the non-dominated points, sorted by x ascending (ties: y ascending, then index).

    Default directions fit the tradeoff plot: maximise the gradient ratio (x), minimise the loss
    slope (y, negative = learning). Runs in O(n log n): sort by the "better x" order and sweep.
    """
    # Map both axes to "smaller is better" so one sweep handles every direction.
    keyed: list[tuple[float, float, int]] = []
    for i, (x, y) in enumerate(points):
        x, y = float(x), float(y)
        if math.isnan(x) or math.isnan(y):
            continue
        keyed.append((-x if maximize_x else x, y if minimize_y else -y, i))
    keyed.sort()

    front: list[int] = []
    best_b_before = math.inf  # best b among points with a strictly better a
    k = 0
    while k < len(keyed):
        a = keyed[k][0]
        group_end = k
        while group_end < len(keyed) and keyed[group_end][0] == a:
            group_end += 1
        group_best_b = keyed[k][1]  # sorted, so the first of the group has the smallest b
        if group_best_b < best_b_before:
            front.extend(i for (_, b, i) in keyed[k:group_end] if b == group_best_b)
        best_b_before = min(best_b_before, group_best_b)
        k = group_end

    front.sort(key=lambda i: (float(points[i][0]), float(points[i][1]), i))
    return front
