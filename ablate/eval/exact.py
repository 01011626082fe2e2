"""Exact ROC-AUC and average precision, as scikit-learn computes them, in bounded memory.

A full-size test set has too many pixel scores to hold (VisA's test split at 518 px is 580 M), so
:class:`SpilledCurves` appends each batch's scores to two files per group (anomalous and normal
pixels, float32, in a temporary folder) and reads them back at the end, one group at a time:

1. the group's anomalous scores are sorted; their distinct values ``u_1 < ... < u_U`` and counts
   ``c_j`` are all that is kept of them;
2. the normal scores are read in chunks; each chunk is sorted and every ``u_j`` looked up in it
   (two binary searches), which counts the normal scores between consecutive anomalous values
   (``below[r]``: ``u_{r-1} <= score < u_r``) and those equal to each (``equal[j]``): the exact
   counts both metrics need.

Memory: the group's anomalous scores and a chunk of normal ones (never the whole set; disk: 4 bytes
a pixel, freed at the end). Both metrics are exact ratios of integer counts:

- AUROC = (#(a, n) with s_a > s_n + 0.5 #(s_a = s_n)) / (A N), over anomalous a and normal n:
  scikit-learn's trapezoidal ROC area, ties included;
- AP = sum over distinct anomalous values u_j, high to low, of (c_j / A) x precision at threshold
  u_j, where precision counts every score >= u_j (ties with normal scores included): scikit-learn's
  ``average_precision_score`` (recall moves only where anomalous scores are).

NaN scores count as the lowest (scikit-learn refuses them); +-inf are ordinary extremes.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablate.eval.curves import EMPTY, NO_NEGATIVE, NO_POSITIVE, CurveMetrics

if TYPE_CHECKING:
    import torch

CHUNK = 1 << 21  # normal scores read back per step (8 MiB of float32; the search adds 3 int64 arrays)


def _finite_order(scores: np.ndarray) -> np.ndarray:
    """float32 scores with NaN replaced by -inf (counted lowest)."""
    s = np.asarray(scores, dtype=np.float32)
    nan = np.isnan(s)
    if nan.any():
        s = np.where(nan, np.float32(-np.inf), s)
    return s


def exact_curve(positives: np.ndarray, negatives: Iterable[np.ndarray]) -> CurveMetrics:
    """AUROC and AP of one group from its anomalous scores and its normal scores in chunks."""
    pos = np.sort(_finite_order(positives))
    n_pos = int(pos.size)
    if n_pos:
        first = np.flatnonzero(np.concatenate(([True], pos[1:] != pos[:-1])))
        values = pos[first]  # distinct anomalous scores, ascending
        counts = np.diff(np.append(first, n_pos)).astype(np.int64)
    else:
        values, counts = pos, np.zeros(0, np.int64)
    u = values.size
    below = np.zeros(u + 1, np.int64)  # normal scores with r distinct anomalous values <= them
    equal = np.zeros(u, np.int64)  # normal scores equal to u_j
    n_neg = 0
    for chunk in negatives:
        s = np.sort(_finite_order(chunk))  # sorted, the anomalous values are looked up in it
        n_neg += int(s.size)
        if not (u and s.size):
            continue
        lower = np.searchsorted(s, values, side="left")  # normal scores < u_j
        below += np.diff(np.concatenate(([0], lower, [s.size])))  # u_{r-1} <= score < u_r
        equal += np.searchsorted(s, values, side="right") - lower
    if n_pos == 0 or n_neg == 0:
        reason = EMPTY if n_pos == n_neg == 0 else (NO_POSITIVE if n_pos == 0 else NO_NEGATIVE)
        return CurveMetrics(math.nan, math.nan, n_pos, n_neg, reason)
    at_or_below = np.concatenate(([0], np.cumsum(counts)))  # anomalous scores <= u_{r} for r = 0..U
    # Twice the pairs ranked right plus the ties, in integers: exact until the final division.
    ranked = int((below * (n_pos - at_or_below)).sum()) * 2 + int((equal * counts).sum())
    auroc = ranked / (2 * n_pos * n_neg)
    tp = n_pos - at_or_below[:-1]  # anomalous scores >= u_j
    fp = np.cumsum(below[::-1])[::-1][1:]  # normal scores >= u_j (r >= j + 1)
    ap = float((counts / n_pos * (tp / (tp + fp))).sum())
    return CurveMetrics(float(auroc), ap, n_pos, n_neg)


def exact_auroc_ap(scores: np.ndarray, labels: np.ndarray) -> CurveMetrics:
    """AUROC and AP of scores held in memory (labels > 0.5 are anomalous)."""
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    y = np.asarray(labels).reshape(-1) > 0.5
    return exact_curve(s[y], [s[~y]])


class SpilledCurves:
    """Exact AUROC and AP per group (e.g. arms x classes) of scores streamed batch by batch.

    ``update(scores, labels, groups)`` copies a batch to the host and appends it to the group's
    files; :meth:`compute` reads each group back (see the module's docstring) and removes the files.
    ``directory``: where the temporary folder goes (default: the system's, ``TMPDIR``).
    """

    def __init__(self, groups: int, directory: str | None = None, chunk: int = CHUNK) -> None:
        if groups < 1:
            raise ValueError("need at least one group")
        self.groups, self.chunk = groups, chunk
        self._dir = Path(tempfile.mkdtemp(prefix="ablate-eval-", dir=directory))
        self.bytes_written = 0

    def _file(self, group: int, positive: bool) -> Path:
        return self._dir / f"{group}.{'pos' if positive else 'neg'}.f32"

    def update(self, scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | int = 0) -> None:
        """Add scores with their 0/1 labels; ``groups`` (an int, one per leading row of ``scores``,
        e.g. one per image, or any tensor that broadcasts to ``scores``)."""
        s = scores.detach().float()
        y = labels.to(s.device).broadcast_to(s.shape).cpu().numpy() > 0.5
        v = s.cpu().numpy()
        if isinstance(groups, int):
            g = np.full(1, groups, np.int64)
            v, y = v.reshape(1, -1), y.reshape(1, -1)
        elif s.dim() and groups.numel() == s.shape[0]:  # one group per row: no per-score group array
            g = groups.reshape(-1).cpu().numpy().astype(np.int64)
            v, y = v.reshape(len(g), -1), y.reshape(len(g), -1)
        else:
            g = groups.to(s.device).broadcast_to(s.shape).reshape(-1).cpu().numpy().astype(np.int64)
            v, y = v.reshape(-1, 1), y.reshape(-1, 1)
        if g.size and not 0 <= int(g.min()) <= int(g.max()) < self.groups:
            raise ValueError(f"group index outside [0, {self.groups})")
        for k in np.unique(g):
            rows = g == k
            own_v, own_y = v[rows], y[rows]
            for positive in (True, False):
                part = own_v[own_y if positive else ~own_y]
                if part.size:
                    with open(self._file(int(k), positive), "ab") as f:
                        part.tofile(f)
                    self.bytes_written += part.nbytes

    def _chunks(self, path: Path) -> Iterator[np.ndarray]:
        if not path.exists():
            return
        with open(path, "rb") as f:
            while True:
                block = np.fromfile(f, dtype=np.float32, count=self.chunk)
                if not block.size:
                    return
                yield block

    def compute(self) -> list[CurveMetrics]:
        """AUROC and AP per group (each group's files read back, then the folder removed)."""
        try:
            out = []
            for k in range(self.groups):
                pos = self._file(k, True)
                positives = np.fromfile(pos, dtype=np.float32) if pos.exists() else np.zeros(0, np.float32)
                out.append(exact_curve(positives, self._chunks(self._file(k, False))))
            return out
        finally:
            self.close()

    def close(self) -> None:
        """Remove the spilled scores (compute does it; call it when abandoning the evaluation)."""
        shutil.rmtree(self._dir, ignore_errors=True)

    def __del__(self) -> None:  # an evaluation interrupted midway leaves nothing on disk
        if hasattr(self, "_dir"):
            self.close()


def grouped_exact(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_groups: int) -> list[CurveMetrics]:
    """AUROC and AP per group of scores held in memory (e.g. one image score per image)."""
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    y = np.asarray(labels).reshape(-1) > 0.5
    g = np.asarray(groups).reshape(-1)
    return [exact_curve(s[(g == k) & y], [s[(g == k) & ~y]]) for k in range(n_groups)]
