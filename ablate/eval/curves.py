"""What an AUROC / AP computation returns, whichever way it counts (exact or binned)."""

from __future__ import annotations

from dataclasses import dataclass

NO_POSITIVE = "no anomalous samples"
NO_NEGATIVE = "no normal samples"
EMPTY = "no samples"


@dataclass(frozen=True)
class CurveMetrics:
    """One group's AUROC and AP (NaN with ``reason`` when undefined) and its sample counts.

    ``tied``: the share of (anomalous, normal) pairs the computation could not order (binned: the
    pairs in one bin; exact: 0). Such a pair counts one half in AUROC, so the binned AUROC is within
    ``tied / 2`` of the exact one.
    """

    auroc: float
    ap: float
    positives: int
    negatives: int
    reason: str | None = None  # why auroc/ap are NaN
    tied: float = 0.0
