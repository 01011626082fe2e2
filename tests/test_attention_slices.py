"""The branch's explicit (dropout) attention runs in batch slices on CPU: the same numbers as whole."""

import pytest
import torch

from ablate.subjects.aaclip import layers


def _inputs(n: int = 5):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(n, 2, 7, 4, generator=g, requires_grad=True)
    k = torch.randn(n, 2, 11, 4, generator=g, requires_grad=True)
    v = torch.randn(n, 2, 11, 4, generator=g, requires_grad=True)
    keep = torch.rand(n, 2, 7, 11, generator=g) >= 0.3
    return q, k, v, keep


def _run(budget: int, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(layers, "CPU_SLICE_SCORES", budget)
    q, k, v, keep = _inputs()
    out = layers.attend(q, k, v, keep, 0.3)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    return out.detach(), [t.grad for t in (q, k, v)]


@pytest.mark.parametrize("budget", [1, 2 * 7 * 11 * 2, 2 * 7 * 11 * 3 - 1])
def test_sliced_attention_is_bitwise_the_whole_batch(budget, monkeypatch):
    whole, whole_grads = _run(1 << 30, monkeypatch)
    spy = []
    real = layers._attend_dropped
    monkeypatch.setattr(layers, "_attend_dropped", lambda q, *a: spy.append(q.shape[0]) or real(q, *a))
    sliced, sliced_grads = _run(budget, monkeypatch)
    assert len(spy) > 1 and sum(spy) == 5  # it did slice, and covered every sample once
    assert torch.equal(sliced, whole)
    assert all(torch.equal(a, b) for a, b in zip(sliced_grads, whole_grads))


def test_slices_hold_at_most_the_budget_of_scores(monkeypatch):
    spy = []
    real = layers._attend_dropped
    monkeypatch.setattr(layers, "_attend_dropped", lambda q, *a: spy.append(q.shape[0]) or real(q, *a))
    _run(2 * 7 * 11 * 4, monkeypatch)  # four samples' scores: 5 samples in two even slices
    assert spy == [3, 2]
    spy.clear()
    _run(2 * 7 * 11 * 2, monkeypatch)  # two samples' scores
    assert spy == [2, 2, 1]


def test_without_dropout_attention_is_not_sliced(monkeypatch):
    monkeypatch.setattr(layers, "CPU_SLICE_SCORES", 1)
    q, k, v, _ = _inputs()
    calls = []
    monkeypatch.setattr(layers, "_attend_dropped", lambda *a: calls.append(1))
    out = layers.attend(q, k, v, None, 0.0)  # SDPA's fused kernel materialises no scores
    assert out.shape == q.shape and not calls
