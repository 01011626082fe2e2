"""Non-dominated sorting, the one copy: the tradeoff plot's front, the report's Pareto ranks and the
recommendation of ``ablate query --group-by fix`` all come from here. Free of pandas and matplotlib.

A point dominates another when it is at least as good on every objective and strictly better on
one. Exact duplicates do not dominate each other, so both stay on the front (a researcher should see
that two trials tie, not have one silently dropped). Points with a NaN coordinate are left out of
:func:`pareto_front`: a trial whose metric was never computed cannot claim a place on the front.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence


def _ranks_2d(keyed: list[tuple[float, float]]) -> list[int]:
    """Non-dominated sorting of points where smaller is better on both axes, in O(n log n).

    Points are taken best x first (ties: best y first); a point goes to the first layer none of whose
    points dominates it. Every point already placed has x <= this one's, so a distinct earlier point
    dominates it exactly when its y is <= this y; a layer is free when its lowest y is above this y,
    and the layers' lowest ys never decrease with the layer, so a binary search finds it. Exact
    duplicates do not dominate each other and share a rank.
    """
    order = sorted(range(len(keyed)), key=lambda i: keyed[i])
    ranks = [0] * len(keyed)
    lowest: list[float] = []  # per layer, the lowest y placed in it
    previous: int | None = None
    for i in order:
        if previous is not None and keyed[i] == keyed[previous]:
            ranks[i] = ranks[previous]
            continue
        y = keyed[i][1]
        layer = bisect.bisect_right(lowest, y)
        if layer == len(lowest):
            lowest.append(y)
        else:
            lowest[layer] = min(lowest[layer], y)
        ranks[i] = layer + 1
        previous = i
    return ranks


def pareto_ranks(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Non-dominated sorting: rank 1 is the front, rank 2 the front once rank 1 is removed, ...

    ``directions`` holds 'minimize' or 'maximize' per coordinate. One or two objectives in
    O(n log n); more, pairwise. The points must be finite.
    """
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    keyed = [tuple(s * v for s, v in zip(signs, p)) for p in points]  # smaller is better on every axis
    if len(directions) <= 2:
        return _ranks_2d([(k[0], k[1] if len(k) > 1 else 0.0) for k in keyed])
    ranks = [0] * len(points)
    left = list(range(len(points)))
    rank = 0
    while left:
        rank += 1
        front = [
            i
            for i in left
            if not any(all(a <= b for a, b in zip(keyed[j], keyed[i])) and keyed[j] != keyed[i] for j in left)
        ]
        for i in front:
            ranks[i] = rank
        chosen = set(front)
        left = [i for i in left if i not in chosen]
    return ranks


def pareto_front(points: Sequence[tuple[float, float]], maximize_x: bool = True, minimize_y: bool = True) -> list[int]:
    """Indices of the non-dominated points (NaN points left out), sorted by x ascending (ties: y
    ascending, then index): rank 1 of :func:`pareto_ranks`."""
    finite = [i for i, (x, y) in enumerate(points) if not (math.isnan(float(x)) or math.isnan(float(y)))]
    directions = ("maximize" if maximize_x else "minimize", "minimize" if minimize_y else "maximize")
    ranks = pareto_ranks([(float(points[i][0]), float(points[i][1])) for i in finite], directions)
    front = [i for i, r in zip(finite, ranks) if r == 1]
    front.sort(key=lambda i: (float(points[i][0]), float(points[i][1]), i))
    return front
