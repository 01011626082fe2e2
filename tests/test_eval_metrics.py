"""AUROC / AP against scikit-learn's: the exact computation (the default) to 1e-6, the binned,
streaming one within its own bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

sk = pytest.importorskip("sklearn.metrics")

from ablate.eval.exact import SpilledCurves, exact_auroc_ap, grouped_exact  # noqa: E402
from ablate.eval.metrics import (  # noqa: E402
    NO_NEGATIVE,
    NO_POSITIVE,
    BinnedCurves,
    binned_auroc_ap,
)


def _reference(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    return sk.roc_auc_score(labels, scores), sk.average_precision_score(labels, scores)


def saturated_maps(kind: str, n: int = 60_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """AA-CLIP-like map values (the mean blurred logit difference over levels, 100 x cosines) where
    most pixels lie past +-24: medical-like (a third anomalous, both bands wide) and industrial-like
    (2% anomalous, normal pixels too above +24)."""
    rng = np.random.default_rng(seed)
    if kind == "medical":
        y = rng.random(n) < 0.33
        s = rng.normal(31.0, 9.0, n) + 7.0 * y
    else:
        y = rng.random(n) < 0.02
        s = rng.normal(26.0, 6.0, n) + 8.0 * y
    return s.astype(np.float32), y.astype(int)


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


MAPS = [("medical-like map past +-24", *saturated_maps("medical")),
        ("industrial-like map past +-24", *saturated_maps("industrial"))]  # fmt: skip


@pytest.mark.parametrize("name,scores,labels", _cases() + MAPS, ids=[c[0] for c in _cases() + MAPS])
def test_exact_metrics_equal_sklearn(name, scores, labels):
    s = scores.astype(np.float32)  # the float32 scores a map holds
    auroc, ap = _reference(s, labels)
    got = exact_auroc_ap(s, labels)
    assert abs(got.auroc - auroc) < 1e-6 and abs(got.ap - ap) < 1e-6, (name, got, auroc, ap)
    assert got.positives == labels.sum() and got.negatives == (1 - labels).sum() and got.tied == 0.0
    # spilled to disk and read back in chunks of 997 scores, in 5 batches: the same numbers
    curves = SpilledCurves(1, chunk=997)
    for part in np.array_split(np.arange(len(s)), 5):
        curves.update(torch.from_numpy(s[part]), torch.from_numpy(labels[part]))
    spilled = curves.compute()[0]
    assert (spilled.auroc, spilled.ap) == pytest.approx((got.auroc, got.ap), abs=1e-12)


@pytest.mark.parametrize("name,scores,labels", MAPS, ids=[c[0] for c in MAPS])
def test_saturated_maps_lie_mostly_past_the_old_clamp_and_bin_over_their_own_range(name, scores, labels):
    assert np.mean(np.abs(scores) > 24) > 0.5  # the regime the fixed +-24 clamp lumped together
    curves = BinnedCurves(1, bins=65_536)
    curves.update_logits(torch.from_numpy(scores), torch.from_numpy(labels))
    got = curves.compute()[0]
    auroc, ap = _reference(scores, labels)
    assert abs(got.auroc - auroc) <= got.tied / 2 + 1e-12 and got.tied < 1e-3
    assert abs(got.auroc - auroc) < 1e-4 and abs(got.ap - ap) < 1e-3
    span = float(scores.max()) - float(scores.min())
    assert float(curves.width()[0]) < 2 * span / (65_536 - 1)  # the bins span this group's range
    # what the clamp did: every score past +-24 in one bin at either end
    clamped = np.clip(scores, -24, 24)
    old = binned_auroc_ap(torch.from_numpy(1 / (1 + np.exp(-clamped.astype(np.float64)))), torch.from_numpy(labels))
    assert abs(old.auroc - auroc) > 0.05  # it lumped most pixels into one tie


@pytest.mark.parametrize("name,scores,labels", _cases(), ids=[c[0] for c in _cases()])
def test_binned_metrics_match_sklearn_within_their_bound(name, scores, labels):
    got = binned_auroc_ap(torch.from_numpy(scores).float(), torch.from_numpy(labels))
    # the reference sees the same float32 scores the device bins
    auroc, ap = _reference(scores.astype(np.float32), labels)
    assert abs(got.auroc - auroc) <= got.tied / 2 + 1e-12, (name, got.auroc, auroc, got.tied)
    assert abs(got.auroc - auroc) < 1e-3 and abs(got.ap - ap) < 1e-3, (name, got, auroc, ap)
    assert got.positives == labels.sum() and got.negatives == (1 - labels).sum()
    assert got.reason is None


def test_known_values_and_separation():
    y = torch.tensor([0, 0, 1, 1])
    for metric in (binned_auroc_ap, lambda s, y: exact_auroc_ap(s.numpy(), y.numpy())):
        assert metric(torch.tensor([0.1, 0.4, 0.35, 0.8]), y).auroc == pytest.approx(0.75)
        good = metric(torch.tensor([0.1, 0.2, 0.8, 0.9]), y)
        assert (good.auroc, good.ap) == (1.0, 1.0)
        bad = metric(torch.tensor([0.9, 0.8, 0.2, 0.1]), y)
        assert bad.auroc == 0.0 and bad.ap == pytest.approx(sk.average_precision_score(y, [0.9, 0.8, 0.2, 0.1]))
    # probabilities of exactly 0 and 1 are -inf and +inf on the log-odds scale: the end bins
    ends = binned_auroc_ap(torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([0, 1, 1, 0]))
    assert ends.auroc == pytest.approx(0.5) and ends.tied == pytest.approx(0.5)
    assert binned_auroc_ap(torch.tensor([0.0, 1e-30, 1.0, 1.0]), y).auroc == 1.0


def test_one_class_is_nan_with_a_reason():
    for metric in (binned_auroc_ap, lambda s, y: exact_auroc_ap(s.numpy(), y.numpy())):
        only_normal = metric(torch.rand(50), torch.zeros(50))
        assert math.isnan(only_normal.auroc) and math.isnan(only_normal.ap)
        assert only_normal.reason == NO_POSITIVE
        only_bad = metric(torch.rand(50), torch.ones(50))
        assert math.isnan(only_bad.auroc) and only_bad.reason == NO_NEGATIVE


def test_streaming_per_group_equals_each_group_at_once():
    """Batches in any order and split, per group (arms x classes), match sklearn per group: exact to
    1e-12, binned to 1e-3; and the binned histograms do not depend on the order."""
    rng = np.random.default_rng(1)
    n, groups = 30_000, 6
    g = rng.integers(0, groups, n)
    y = (rng.random(n) < 0.1 + 0.1 * g / groups).astype(int)
    s = (rng.normal(0, 1, n) + (0.5 + 0.3 * g) * y) * 10.0 ** (g - 2)  # each group on its own scale
    s = s.astype(np.float32)
    binned, other, spilled = BinnedCurves(groups), BinnedCurves(groups), SpilledCurves(groups, chunk=1000)
    for chunk in np.array_split(rng.permutation(n), 7):
        args = torch.from_numpy(s[chunk]), torch.from_numpy(y[chunk]), torch.from_numpy(g[chunk])
        binned.update_logits(*args)
        spilled.update(*args)
    other.update_logits(torch.from_numpy(s), torch.from_numpy(y), torch.from_numpy(g))
    assert torch.equal(binned.counts, other.counts)
    in_memory = grouped_exact(s, y, g, groups)
    for k, (b, e, m) in enumerate(zip(binned.compute(), spilled.compute(), in_memory)):
        sel = g == k
        auroc, ap = _reference(s[sel], y[sel])
        assert abs(e.auroc - auroc) < 1e-12 and abs(e.ap - ap) < 1e-12 and (m.auroc, m.ap) == (e.auroc, e.ap)
        assert abs(b.auroc - auroc) < 1e-3 and abs(b.ap - ap) < 1e-3


def test_memory_is_bounded_by_the_bins_and_the_spill_is_removed():
    curves = BinnedCurves(3, bins=4096)
    spilled = SpilledCurves(3)
    for _ in range(5):
        s, y, g = torch.rand(2, 64, 64), torch.rand(2, 64, 64) < 0.1, torch.tensor([0, 2]).view(2, 1, 1)
        curves.update(s, y, g)
        spilled.update(s, y, g)
    assert curves.pos.numel() == curves.neg.numel() == 3 * (4096 + 2)
    res = curves.compute()
    assert res[1].reason is not None and res[0].positives + res[0].negatives == 5 * 64 * 64
    folder = spilled._dir
    assert spilled.bytes_written == 4 * 10 * 64 * 64 and any(folder.iterdir())
    assert [r.reason for r in spilled.compute()] == [r.reason for r in res]
    assert not folder.exists()


def test_a_group_whose_range_grows_keeps_its_counts():
    curves = BinnedCurves(1, bins=64)
    curves.update_logits(torch.tensor([0.0, 0.0]), torch.tensor([0, 1]))  # all equal: no width yet
    curves.update_logits(torch.tensor([1.0, 2.0]), torch.tensor([1, 0]))
    curves.update_logits(torch.tensor([-1e6, 1e6]), torch.tensor([0, 1]))
    assert int(curves.counts.sum()) == 6
    got = curves.compute()[0]
    want = _reference(np.array([0, 0, 1, 2, -1e6, 1e6]), np.array([0, 1, 1, 0, 0, 1]))
    # at this width 0, 1 and 2 share a bin: the difference is within the bound the histogram states
    assert abs(got.auroc - want[0]) <= got.tied / 2 + 1e-12
    assert float(curves.width()[0]) < 2 * 2e6 / 63


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_device_histograms_match_the_cpu_ones():
    rng = np.random.default_rng(2)
    s = torch.from_numpy(1 / (1 + np.exp(-rng.normal(0, 3, 100_000)))).float()
    y = torch.from_numpy(rng.random(100_000) < 0.05)
    cpu = binned_auroc_ap(s, y)
    gpu = binned_auroc_ap(s.cuda(), y.cuda())
    assert (gpu.auroc, gpu.ap, gpu.positives) == pytest.approx((cpu.auroc, cpu.ap, cpu.positives))
