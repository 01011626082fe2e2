"""Streaming, binned ROC-AUC and average precision on the device, in bounded memory.

A full-size evaluation set has too many pixels to keep (MVTec AD's test split at 518 px is about
460 M pixel scores), so scores are never stored: each batch is added to two histograms per group
(positives and negatives), ``bins`` counts each, and the curves are read off the histograms at the
end. Memory is ``2 x groups x bins`` integers whatever the size of the set.

Scores are probabilities in [0, 1] (``update``) or log-odds (``update_logits``: any score on that
scale, e.g. AA-CLIP's map as the mean logit difference over levels). Binning probabilities linearly
would lump every score below 1/bins together, and a CLIP anomaly map (softmax of logits scaled by
100) puts most normal pixels there, so the histogram is over the log-odds ``log p - log(1 - p)``
clamped to ``[-LOGIT_RANGE, LOGIT_RANGE]``: bins are 2 * 24 / 65536 = 7e-4 log-odds wide, finer
than a float32 probability near 1 can tell apart (1 - p >= 6e-8, log-odds <= 16.6). Two scores in
one bin count as a tie, the only difference from the exact computation; ties are handled as
scikit-learn does (half a correctly ordered pair for AUROC; one threshold for AP).

Definitions (those of ``sklearn.metrics.roc_auc_score`` and ``average_precision_score``):
AUROC = P(score of a positive > score of a negative) + 0.5 P(equal); AP = sum over thresholds,
high to low, of (recall_k - recall_{k-1}) * precision_k. A group with no positive or no negative
has neither (NaN), and :func:`curve_metrics` says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_BINS = 65_536
LOGIT_RANGE = 24.0

NO_POSITIVE = "no anomalous samples"
NO_NEGATIVE = "no normal samples"
EMPTY = "no samples"


@dataclass(frozen=True)
class CurveMetrics:
    """One group's AUROC and AP (NaN with ``reason`` when undefined) and its sample counts."""

    auroc: float
    ap: float
    positives: int
    negatives: int
    reason: str | None = None  # why auroc/ap are NaN


class BinnedCurves:
    """Histograms of positive and negative scores for ``groups`` groups (e.g. arms x classes).

    ``update(scores, labels, groups)`` adds a batch (any shapes, flattened together); nothing is
    copied to the host until :meth:`compute`.
    """

    def __init__(self, groups: int, device: torch.device | str = "cpu", bins: int = DEFAULT_BINS) -> None:
        if groups < 1 or bins < 2:
            raise ValueError("need at least one group and two bins")
        self.groups, self.bins = groups, bins
        self.counts = torch.zeros(2, groups * bins, dtype=torch.int64, device=device)  # [negative, positive]

    @property
    def pos(self) -> torch.Tensor:
        return self.counts[1]

    @property
    def neg(self) -> torch.Tensor:
        return self.counts[0]

    def bin_of(self, scores: torch.Tensor) -> torch.Tensor:
        """The bin of each probability (its log-odds, see :meth:`bin_of_logit`)."""
        p = scores.detach().double().clamp(0.0, 1.0)
        return self.bin_of_logit(torch.log(p) - torch.log1p(-p))

    def bin_of_logit(self, logits: torch.Tensor) -> torch.Tensor:
        """The bin of each log-odds score (clamped to [-LOGIT_RANGE, LOGIT_RANGE], linear over it)."""
        logit = logits.detach().double().nan_to_num(nan=0.0, posinf=LOGIT_RANGE, neginf=-LOGIT_RANGE)
        unit = (logit.clamp(-LOGIT_RANGE, LOGIT_RANGE) + LOGIT_RANGE) / (2 * LOGIT_RANGE)
        return (unit * self.bins).long().clamp_(0, self.bins - 1)

    @torch.no_grad()
    def update(self, scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | int = 0) -> None:
        """Add scores (probabilities) with their 0/1 labels; ``groups`` broadcasts to ``scores``."""
        self._add(self.bin_of(scores), scores, labels, groups)

    @torch.no_grad()
    def update_logits(self, logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | int = 0) -> None:
        """Add scores given on the log-odds scale (any monotone score of that scale: ranking is all
        AUROC and AP read), with their 0/1 labels."""
        self._add(self.bin_of_logit(logits), logits, labels, groups)

    def _add(self, bins: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | int) -> None:
        if isinstance(groups, int):
            groups = torch.full_like(labels, groups, dtype=torch.long)
        groups = torch.broadcast_to(groups.to(scores.device), scores.shape).reshape(-1).long()
        if groups.device.type == "cpu" and groups.numel():  # (on a GPU the check would wait for it)
            if not 0 <= int(groups.min()) <= int(groups.max()) < self.groups:
                raise ValueError(f"group index outside [0, {self.groups})")
        positive = torch.broadcast_to(labels.to(scores.device), scores.shape).reshape(-1) > 0.5
        # One flat index over [negative | positive] x groups x bins: no boolean masking, no host sync.
        idx = (positive.long() * self.groups + groups) * self.bins + bins.reshape(-1)
        self.counts.view(-1).index_add_(0, idx, torch.ones_like(idx))

    def compute(self) -> list[CurveMetrics]:
        """AUROC and AP per group (one host copy of a few numbers per group)."""
        pos = self.pos.view(self.groups, self.bins).flip(1).double()  # highest scores first
        neg = self.neg.view(self.groups, self.bins).flip(1).double()
        auroc, ap, n_pos, n_neg = _curves(pos, neg)
        out = []
        for a, p, np_, nn_ in zip(auroc.tolist(), ap.tolist(), n_pos.tolist(), n_neg.tolist()):
            reason = None
            if np_ == 0 or nn_ == 0:
                reason = EMPTY if np_ == nn_ == 0 else (NO_POSITIVE if np_ == 0 else NO_NEGATIVE)
                a, p = math.nan, math.nan
            out.append(CurveMetrics(a, p, int(np_), int(nn_), reason))
        return out


def _curves(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """pos, neg: [groups, bins] counts, highest score first -> (auroc, ap, positives, negatives)."""
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    tp = pos.cumsum(1)  # positives at or above each threshold
    fp = neg.cumsum(1)
    above = tp - pos  # positives strictly above the bin
    # Each negative beats none of the positives above it and ties with those in its bin.
    auroc = (neg * (above + 0.5 * pos)).sum(1) / (n_pos * n_neg)
    precision = tp / (tp + fp).clamp_min(1.0)
    ap = (pos * precision).sum(1) / n_pos  # recall steps by pos/P at a threshold that adds positives
    return auroc, ap, n_pos, n_neg


def binned_auroc_ap(scores: torch.Tensor, labels: torch.Tensor, bins: int = DEFAULT_BINS) -> CurveMetrics:
    """AUROC and AP of one set of scores (a convenience over :class:`BinnedCurves`)."""
    curves = BinnedCurves(1, scores.device, bins)
    curves.update(scores, labels)
    return curves.compute()[0]
