"""The binned, streaming AUROC / AP against scikit-learn's exact ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

sk = pytest.importorskip("sklearn.metrics")

from ablate.eval.metrics import (  # noqa: E402
    NO_NEGATIVE,
    NO_POSITIVE,
    BinnedCurves,
    binned_auroc_ap,
)


def _reference(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    return sk.roc_auc_score(labels, scores), sk.average_precision_score(labels, scores)


def _cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    n = 20_000
    cases = []
    labels = rng.random(n) < 0.3
    cases.append(("uniform, no signal", rng.random(n), labels))
    logits = rng.normal(0, 1, n) + 1.5 * labels
    cases.append(("overlapping normals", 1 / (1 + np.exp(-logits)), labels))
    # CLIP-like: softmax of logits scaled by 100, so most scores crowd near 0 and 1
    logits = 100 * (rng.normal(-0.1, 0.08, n) + 0.12 * labels)
    cases.append(("saturated (x100 logits)", 1 / (1 + np.exp(-logits)), labels))
    rare = rng.random(n) < 0.01  # pixel-like imbalance
    logits = rng.normal(0, 1, n) + 2.0 * rare
    cases.append(("1% positives", 1 / (1 + np.exp(-logits)), rare))
    tied = rng.integers(0, 5, n) / 4.0  # five distinct values: heavy ties, exactly 0 and 1 included
    cases.append(("ties incl. 0 and 1", tied, rng.random(n) < 0.2 + 0.5 * tied))
    perfect = labels.astype(float) * 0.5 + 0.25
    cases.append(("perfectly separated", perfect, labels))
    cases.append(("perfectly inverted", 1 - perfect, labels))
    cases.append(("all one score", np.full(n, 0.5), labels))
    return [(name, s, y.astype(int)) for name, s, y in cases]


@pytest.mark.parametrize("name,scores,labels", _cases(), ids=[c[0] for c in _cases()])
def test_binned_metrics_match_sklearn(name, scores, labels):
    got = binned_auroc_ap(torch.from_numpy(scores).float(), torch.from_numpy(labels))
    # the reference sees the same float32 scores the device bins
    auroc, ap = _reference(scores.astype(np.float32), labels)
    assert abs(got.auroc - auroc) < 1e-3, (name, got.auroc, auroc)
    assert abs(got.ap - ap) < 1e-3, (name, got.ap, ap)
    assert got.positives == labels.sum() and got.negatives == (1 - labels).sum()
    assert got.reason is None


def test_known_values_and_separation():
    y = torch.tensor([0, 0, 1, 1])
    assert binned_auroc_ap(torch.tensor([0.1, 0.4, 0.35, 0.8]), y).auroc == pytest.approx(0.75)
    good = binned_auroc_ap(torch.tensor([0.1, 0.2, 0.8, 0.9]), y)
    assert (good.auroc, good.ap) == (1.0, 1.0)
    bad = binned_auroc_ap(torch.tensor([0.9, 0.8, 0.2, 0.1]), y)
    assert bad.auroc == 0.0 and bad.ap == pytest.approx(sk.average_precision_score(y, [0.9, 0.8, 0.2, 0.1]))


def test_one_class_is_nan_with_a_reason():
    only_normal = binned_auroc_ap(torch.rand(50), torch.zeros(50))
    assert math.isnan(only_normal.auroc) and math.isnan(only_normal.ap)
    assert only_normal.reason == NO_POSITIVE
    only_bad = binned_auroc_ap(torch.rand(50), torch.ones(50))
    assert math.isnan(only_bad.auroc) and only_bad.reason == NO_NEGATIVE


def test_streaming_per_group_equals_each_group_at_once():
    """Batches in any order and split, per group (arms x classes), match sklearn per group."""
    rng = np.random.default_rng(1)
    n, groups = 30_000, 6
    g = rng.integers(0, groups, n)
    y = (rng.random(n) < 0.1 + 0.1 * g / groups).astype(int)
    s = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + (0.5 + 0.3 * g) * y)))
    curves = BinnedCurves(groups)
    for chunk in np.array_split(rng.permutation(n), 7):
        curves.update(torch.from_numpy(s[chunk]).float(), torch.from_numpy(y[chunk]), torch.from_numpy(g[chunk]))
    for k, got in enumerate(curves.compute()):
        sel = g == k
        auroc, ap = _reference(s[sel].astype(np.float32), y[sel])
        assert abs(got.auroc - auroc) < 1e-3 and abs(got.ap - ap) < 1e-3


def test_memory_is_bounded_by_the_bins_not_the_samples():
    curves = BinnedCurves(3, bins=4096)
    for _ in range(5):
        curves.update(torch.rand(2, 64, 64), torch.rand(2, 64, 64) < 0.1, torch.tensor([0, 2]).view(2, 1, 1))
    assert curves.pos.numel() == curves.neg.numel() == 3 * 4096
    res = curves.compute()
    assert res[1].reason is not None and res[0].positives + res[0].negatives == 5 * 64 * 64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_device_histograms_match_the_cpu_ones():
    rng = np.random.default_rng(2)
    s = torch.from_numpy(1 / (1 + np.exp(-rng.normal(0, 3, 100_000)))).float()
    y = torch.from_numpy(rng.random(100_000) < 0.05)
    cpu = binned_auroc_ap(s, y)
    gpu = binned_auroc_ap(s.cuda(), y.cuda())
    assert (gpu.auroc, gpu.ap, gpu.positives) == pytest.approx((cpu.auroc, cpu.ap, cpu.positives))
