"""Streaming, binned ROC-AUC and average precision on the device, in memory fixed by the bins.

The option beside the exact computation (:mod:`ablate.eval.exact`, the default): scores are never
stored; each batch is added to two histograms per group (positives and negatives) of ``bins``
counters, and the curves are read off the histograms at the end. Memory is
``2 x groups x (bins + 2)`` integers whatever the size of the set, and nothing touches the disk.

The bins of a group cover the scores it has seen (no fixed range, no clamp): bins are ``2^e`` wide
on a grid aligned at multiples of ``2^e``, and when a batch falls outside the covered range the
width doubles (pairs of bins merge exactly) until the group's observed ``[min, max]`` fits. So a
bin is narrower than ``2 (max - min) / (bins - 1)`` of that group's own scores, and never narrower
than ``2^-40`` of their magnitude. ``+inf`` and ``-inf`` (a probability of exactly 1 or 0 on the
log-odds scale) have a bin each at the ends; NaN counts as ``-inf``.

Scores are given on any scale whose order is what matters (``update_logits``: e.g. AA-CLIP's map
as its mean logit difference over levels) or as probabilities (``update``: binned on their
log-odds, so that the scores a CLIP softmax crowds near 0 and 1 spread over the bins).

Two scores in one bin count as a tie, the only difference from the exact computation; ties are
handled as scikit-learn does (half a correctly ordered pair for AUROC; one threshold for AP). The
error this makes is bounded per group by what the histogram itself holds: the binned AUROC is
within ``tied / 2`` of the exact one, ``tied`` being the share of (positive, negative) pairs that
share a bin (:class:`CurveMetrics`).

Definitions (those of ``sklearn.metrics.roc_auc_score`` and ``average_precision_score``):
AUROC = P(score of a positive > score of a negative) + 0.5 P(equal); AP = sum over thresholds,
high to low, of (recall_k - recall_{k-1}) * precision_k. A group with no positive or no negative
has neither (NaN), and :class:`CurveMetrics` says why.
"""

from __future__ import annotations

import math

import torch

from ablate.eval.curves import EMPTY, NO_NEGATIVE, NO_POSITIVE, CurveMetrics

__all__ = ["DEFAULT_BINS", "EMPTY", "NO_NEGATIVE", "NO_POSITIVE", "BinnedCurves", "CurveMetrics", "binned_auroc_ap"]

DEFAULT_BINS = 65_536
PRECISION_BITS = 40  # a bin is at least 2^-40 of the scores' magnitude wide (float64 resolves 2^-52)
MIN_EXPONENT = -1000  # the width of a group whose every score so far is exactly 0
# Scores binned per step of an update, which bounds its temporaries. On the CPU, small: a dozen
# float64/int64 arrays per step are fresh memory each time while the evaluation returns freed
# memory (ablate/allocator.py), and small ones fault in fewer pages. On a GPU, large: fewer launches.
CHUNK = {"cpu": 1 << 17}
DEVICE_CHUNK = 1 << 22


class BinnedCurves:
    """Histograms of positive and negative scores for ``groups`` groups (e.g. arms x classes).

    ``update(scores, labels, groups)`` adds a batch (any shapes, flattened together); nothing is
    copied to the host until :meth:`compute` but one flag per batch (whether a group's range grew).
    """

    def __init__(self, groups: int, device: torch.device | str = "cpu", bins: int = DEFAULT_BINS) -> None:
        if groups < 1 or bins < 2:
            raise ValueError("need at least one group and two bins")
        self.groups, self.bins = groups, bins
        # [negative, positive] x group x [-inf | bins | +inf]
        self.counts = torch.zeros(2, groups, bins + 2, dtype=torch.int64, device=device)
        self.exponent = torch.full((groups,), MIN_EXPONENT, dtype=torch.int64, device=device)  # bin width 2^e
        self.offset = torch.zeros(groups, dtype=torch.int64, device=device)  # grid index of the first bin
        self.lo = torch.full((groups,), math.inf, dtype=torch.float64, device=device)  # finite extremes seen
        self.hi = torch.full((groups,), -math.inf, dtype=torch.float64, device=device)

    @property
    def pos(self) -> torch.Tensor:
        return self.counts[1]

    @property
    def neg(self) -> torch.Tensor:
        return self.counts[0]

    def width(self) -> torch.Tensor:
        """Each group's bin width (float64)."""
        return torch.ldexp(torch.ones_like(self.lo), self.exponent)

    @torch.no_grad()
    def update(self, scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | int = 0) -> None:
        """Add probabilities with their 0/1 labels, binned on their log-odds; ``groups`` broadcasts."""
        p = scores.detach().double().clamp(0.0, 1.0)
        self.update_logits(torch.log(p) - torch.log1p(-p), labels, groups)

    @torch.no_grad()
    def update_logits(self, logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | int = 0) -> None:
        """Add scores on any scale whose order is what counts, with their 0/1 labels."""
        scores = logits.detach().reshape(-1)
        if isinstance(groups, int):
            g_all = torch.full_like(scores, groups, dtype=torch.long)
        else:
            g_all = torch.broadcast_to(groups.to(scores.device), logits.shape).reshape(-1).long()
        if g_all.device.type == "cpu" and g_all.numel():  # (on a GPU the check would wait for it)
            if not 0 <= int(g_all.min()) <= int(g_all.max()) < self.groups:
                raise ValueError(f"group index outside [0, {self.groups})")
        y_all = torch.broadcast_to(labels.to(scores.device), logits.shape).reshape(-1) > 0.5
        step = CHUNK.get(scores.device.type, DEVICE_CHUNK)
        for start in range(0, scores.numel(), step):  # float64 temporaries of a chunk, not of the batch
            part = slice(start, start + step)
            self._add(scores[part].double(), y_all[part], g_all[part])

    def _add(self, v: torch.Tensor, positive: torch.Tensor, g: torch.Tensor) -> None:
        v = torch.where(torch.isnan(v), -math.inf, v)
        finite = torch.isfinite(v)
        self._cover(g, torch.where(finite, v, math.inf), torch.where(finite, v, -math.inf))
        scaled = torch.ldexp(torch.where(finite, v, 0.0), -self.exponent[g])
        inner = (torch.floor(scaled).long() - self.offset[g]).clamp_(0, self.bins - 1) + 1
        col = torch.where(finite, inner, torch.where(v > 0, self.bins + 1, 0))
        # One flat index over [negative | positive] x groups x columns: no boolean masking.
        idx = (positive.long() * self.groups + g) * (self.bins + 2) + col
        self.counts.view(-1).index_add_(0, idx, torch.ones_like(idx))

    def _cover(self, g: torch.Tensor, for_min: torch.Tensor, for_max: torch.Tensor) -> None:
        """Widen each group's bins (merging pairs) until they cover its scores seen so far."""
        lo = self.lo.scatter_reduce(0, g, for_min, "amin")
        hi = self.hi.scatter_reduce(0, g, for_max, "amax")
        seen = lo <= hi
        span = torch.where(seen, hi - lo, 0.0)
        need = torch.where(span > 0, torch.ceil(torch.log2(span / (self.bins - 1))), -math.inf)
        size = torch.maximum(lo.abs(), hi.abs())
        floor_e = torch.where(seen & (size > 0), torch.floor(torch.log2(size)) - PRECISION_BITS, -math.inf)
        e = torch.maximum(self.exponent, torch.maximum(need, floor_e).clamp(min=MIN_EXPONENT).long())
        e = torch.where(seen, e, self.exponent)
        low, high = torch.where(seen, lo, 0.0), torch.where(seen, hi, 0.0)
        offset = torch.floor(torch.ldexp(low, -e)).long()
        # log2 rounds: one more doubling where the top score would still fall past the last bin
        e = torch.where(torch.floor(torch.ldexp(high, -e)).long() - offset >= self.bins, e + 1, e)
        offset = torch.where(seen, torch.floor(torch.ldexp(low, -e)).long(), self.offset)
        changed = (e != self.exponent) | (offset != self.offset)
        if bool(changed.any()):
            k = changed.nonzero().squeeze(1)
            shift = (e[k] - self.exponent[k]).clamp(max=62)  # old indices are < 2^41: 62 is as good as more
            grid = self.offset[k, None] + torch.arange(self.bins, device=g.device)
            moved = torch.div(grid, torch.pow(2, shift)[:, None], rounding_mode="floor") - offset[k, None]
            moved = moved.clamp_(0, self.bins - 1).unsqueeze(0).expand(2, -1, -1)
            inner = torch.zeros(2, len(k), self.bins, dtype=torch.int64, device=g.device)
            inner.scatter_add_(2, moved, self.counts[:, k, 1:-1])
            self.counts[:, k, 1:-1] = inner
        self.exponent, self.offset, self.lo, self.hi = e, offset, lo, hi

    def compute(self) -> list[CurveMetrics]:
        """AUROC and AP per group (one host copy of a few numbers per group)."""
        pos = self.pos.flip(1).double()  # highest scores first
        neg = self.neg.flip(1).double()
        auroc, ap, n_pos, n_neg = _curves(pos, neg)
        tied = (pos * neg).sum(1) / (n_pos * n_neg).clamp_min(1.0)
        out = []
        for a, p, np_, nn_, t in zip(auroc.tolist(), ap.tolist(), n_pos.tolist(), n_neg.tolist(), tied.tolist()):
            reason = None
            if np_ == 0 or nn_ == 0:
                reason = EMPTY if np_ == nn_ == 0 else (NO_POSITIVE if np_ == 0 else NO_NEGATIVE)
                a, p, t = math.nan, math.nan, 0.0
            out.append(CurveMetrics(a, p, int(np_), int(nn_), reason, t))
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
    """AUROC and AP of one set of probabilities (a convenience over :class:`BinnedCurves`)."""
    curves = BinnedCurves(1, scores.device, bins)
    curves.update(scores, labels)
    return curves.compute()[0]
