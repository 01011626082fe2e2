"""The paired gradient probe (docs/concepts.md, "The probe").

With and without the branch on identical weights, the same cached batches and the same RNG
state, dropout off by default: the only difference between the two arms is the branch.
Every adapter group (block adapters, projections, their union) is measured on the same passes.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ablate.engine.device import arm_norms, autocast, batch_tensors
from ablate.engine.result import DEFAULT_GROUP, GroupProbe, ProbeResult
from ablate.engine.subject import ALL_GROUP, Subject, watched_groups
from ablate.stats import ratio_ci

DEFAULT_THRESHOLD = 0.8  # the seed's line between "OK" and "CAUTION"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@dataclass(frozen=True)
class ArmLabel:
    """Who an arm is: its fix, scale and seed (a packed subject trains several)."""

    fix: str
    scale: float | None
    seed: int


def _arm(  # noqa: ANN202
    subject: Subject,
    groups: dict[str, list],
    batch: Any,
    device: torch.device,
    rng_seeds: Sequence[int],
    precision: str = "fp32",
):
    """One forward/backward on a batch: ([loss, inflation, g_X, g_G for each group] as [arms] tensors,
    final features [arms, ...])."""
    arms = getattr(subject, "n_arms", 1)
    params = [*groups["all"], *subject.branch_parameters()]
    for p in params:
        p.grad = None
    with subject.dropout_seeded(rng_seeds):
        with autocast(device, precision):
            loss, out = subject.compute_loss(batch)
        loss.sum().backward()
    inflation = out.norm_inflation if out.norm_inflation is not None else torch.ones(arms, device=device)
    g_x = arm_norms([p.grad for p in subject.branch_parameters()], arms, device)
    norms = {k: arm_norms([p.grad for p in ps], arms, device) for k, ps in groups.items() if k != ALL_GROUP}
    # The union's norm follows from the disjoint groups' (no second pass over its gradients).
    norms[ALL_GROUP] = torch.linalg.vector_norm(torch.stack(list(norms.values())), dim=0)
    row = [loss.detach(), inflation, g_x, *(norms[k] for k in groups)]
    # A subject without final features (its model's output is not a tensor) gets a NaN cosine.
    missing = out.final_features is None
    features = torch.full((arms, 1), math.nan) if missing else out.final_features.detach().float()
    return [t.float().reshape(arms) for t in row], features.reshape(arms, -1, *features.shape[1:])


class BypassedPasses:
    """Probe passes with the branch bypassed, kept so that an identical pass is not run twice.

    Every arm of a seed starts from the same adapter weights (the pairing the comparison rests on), so
    on the initial weights the pass without the branch of every fix of that seed is the very pass of
    its no-branch baseline (and of the frozen control): the same operations on the same values. A pass
    is reused only when everything it reads is equal: what the subject's ``bypass_state()`` names (a
    signature for what is not in tensors, and the tensors the bypassed pass reads, compared one by one;
    a subject without it is never reused), the batches, the dropout seeds and the precision; and only
    in eval mode (no dropout draws to skip). The numbers are those of a fresh pass.
    """

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity  # probes kept (each: its bypassed rows and final features per batch)
        self._entries: list[
            tuple[Hashable, list[tuple[torch.Tensor, int]], list[list[tuple[torch.Tensor, int]]], list]
        ] = []
        self.hits = 0

    @staticmethod
    def _state(subject: Subject, seeds: Sequence[int], precision: str) -> tuple[Hashable, list] | None:
        state = getattr(subject, "bypass_state", None)
        if state is None or getattr(subject, "training", False):
            return None
        signature, tensors = state()
        return (signature, tuple(seeds), precision), tensors

    def find(self, subject: Subject, batches: Sequence[Any], seeds: Sequence[int], precision: str) -> list | None:
        """The rows of an equal probe's bypassed passes (one per batch), or None."""
        state = self._state(subject, seeds, precision)
        if state is None:
            return None
        key, tensors = state
        for i, (k, kept, kept_batches, rows) in enumerate(self._entries):
            if k != key or len(kept_batches) != len(batches):
                continue
            if _all_same(kept, tensors) and all(_all_same(a, batch_tensors(b)) for a, b in zip(kept_batches, batches)):
                self._entries.append(self._entries.pop(i))  # most recently used last
                self.hits += 1
                return rows
        return None

    def keep(self, subject: Subject, batches: Sequence[Any], seeds: Sequence[int], precision: str, rows: list) -> None:
        state = self._state(subject, seeds, precision)
        if state is None:
            return
        key, tensors = state
        # Trained tensors change in place: keep copies. Frozen ones (the shared backbone) are kept as
        # they are, with their version counter: the same tensor at the same version is equal unread.
        kept = [(t.detach().clone() if t.requires_grad else t, t._version) for t in tensors]
        held = [[(t, t._version) for t in batch_tensors(b)] for b in batches]
        self._entries.append((key, kept, held, rows))
        while len(self._entries) > self.capacity:
            self._entries.pop(0)


def _all_same(kept: Sequence[tuple[torch.Tensor, int]], now: Sequence[torch.Tensor]) -> bool:
    """Kept (tensor, version) pairs against tensors now: equal values, or the same tensor unchanged."""
    return len(kept) == len(now) and all(_same(t, version, u) for (t, version), u in zip(kept, now))


def _same(kept: torch.Tensor, version: int, now: torch.Tensor) -> bool:
    if kept is now:
        return version == now._version
    return kept.shape == now.shape and kept.dtype == now.dtype and kept.device == now.device and torch.equal(kept, now)


# The study's process-wide memo (the training loop hands it to the probe on the initial weights).
BYPASSED = BypassedPasses()


def run_probe(
    subject: Subject,
    batches: Sequence[Any],
    device: torch.device,
    fix: str,
    scale: float | None,
    step: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    dropout: bool = False,
    rng_seed: int = 0,
    group: str = DEFAULT_GROUP,
    precision: str = "fp32",
) -> ProbeResult:
    """Measure R_G = ||grad_G L|| with / without the branch, per batch and adapter group G (one arm)."""
    label = [ArmLabel(fix, scale, rng_seed)]
    return probe_arms(subject, batches, device, label, step, threshold, dropout, group, precision)[0]


def probe_arms(
    subject: Subject,
    batches: Sequence[Any],
    device: torch.device,
    arms: Sequence[ArmLabel],
    step: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    dropout: bool = False,
    group: str = DEFAULT_GROUP,
    precision: str = "fp32",
    memo: BypassedPasses | None = None,
) -> list[ProbeResult]:
    """The probe of every arm of ``subject`` (one, or a packed several), on the same passes.

    The subject's gradients and train/eval mode are restored afterwards, so a probe can run in
    the middle of training without disturbing it. ``memo``: passes without the branch to reuse
    when an identical one was run before (:class:`BypassedPasses`), and where to keep this probe's.
    """
    if not batches:
        raise ValueError("the probe needs at least one batch")
    groups = watched_groups(subject)
    if group not in groups:
        raise ValueError(f"unknown adapter group {group!r}; this subject has {', '.join(groups)}")
    params = [*groups["all"], *subject.branch_parameters()]
    saved = [p.grad for p in params]
    was_training = getattr(subject, "training", False)
    subject.train(dropout)
    rows = []
    seeds = [a.seed for a in arms]
    try:
        known = memo.find(subject, batches, seeds, precision) if memo is not None else None
        bypassed = []  # per batch: the pass without the branch ([loss, g_G...], final features)
        for i, batch in enumerate(batches):
            batch_seeds = [s + i for s in seeds]
            if subject.has_branch:
                with_, f_with = _arm(subject, groups, batch, device, batch_seeds, precision)
                if known is None:
                    with subject.branch_bypassed():
                        without, f_without = _arm(subject, groups, batch, device, batch_seeds, precision)
                    bypassed.append(([without[0], *without[3:]], f_without))
                else:
                    bypassed.append(known[i])
            else:  # no branch: the pass with it is the pass without it
                if known is None:
                    with_, f_with = _arm(subject, groups, batch, device, batch_seeds, precision)
                    bypassed.append(([with_[0], *with_[3:]], f_with))
                else:
                    bypassed.append(known[i])
                    values, f_with = known[i]
                    # A pass without a branch has no inflation (1) and no branch gradient (0).
                    with_ = [values[0], torch.ones_like(values[0]), torch.zeros_like(values[0]), *values[1:]]
            without, f_without = bypassed[-1]
            cos = F.cosine_similarity(f_with, f_without, dim=-1).reshape(len(arms), -1).mean(1)
            rows.append(torch.stack([*with_, *without, cos]))  # [columns, arms]
        if memo is not None and known is None:
            memo.keep(subject, batches, seeds, precision, bypassed)
        # One host transfer for the whole probe.
        table = torch.stack(rows).cpu().double().tolist()  # [batches][columns][arms]
    finally:
        for p, g in zip(params, saved):
            p.grad = g
        subject.train(was_training)
    return [
        _summarise([[col[a] for col in batch_row] for batch_row in table], list(groups), label, step, threshold, group)
        for a, label in enumerate(arms)
    ]


def _summarise(
    table: list[list[float]], groups: list[str], arm: ArmLabel, step: int, threshold: float, group: str
) -> ProbeResult:
    """One arm's probe from its per-batch rows [loss, inflation, g_X, g_G..., loss_without, g_G'..., cos]."""
    k = len(groups)
    cols = list(zip(*table))
    l_with, infl, g_x = cols[0], cols[1], cols[2]
    g_with = dict(zip(groups, cols[3 : 3 + k]))
    l_without = cols[3 + k]
    g_without = dict(zip(groups, cols[4 + k : 4 + 2 * k]))
    cos = cols[4 + 2 * k]
    per_group = {}
    for name in groups:
        ratios = [a / b if b > 0 else math.nan for a, b in zip(g_with[name], g_without[name])]
        ci = ratio_ci([ratios])
        shares = [a * a / max(a * a + x * x, 1e-30) for a, x in zip(g_with[name], g_x)]
        per_group[name] = GroupProbe(
            ratio=ci.estimate,
            ratio_lo=ci.lo,
            ratio_hi=ci.hi,
            share=_mean(shares),
            norm_with=_mean(list(g_with[name])),
            norm_without=_mean(list(g_without[name])),
            per_batch_ratios=ratios,
        )
    judged = per_group[group]
    return ProbeResult(
        fix=arm.fix,
        scale=arm.scale,
        step=step,
        group=group,
        grad_ratio=judged.ratio,
        grad_ratio_ci=(judged.ratio_lo, judged.ratio_hi),
        groups=per_group,
        grad_norm_branch=_mean(list(g_x)),
        norm_inflation=_mean(list(infl)),
        loss_with=_mean(list(l_with)),
        loss_without=_mean(list(l_without)),
        feature_cosine=_mean(list(cos)),
        threshold=threshold,
        verdict="OK" if judged.ratio >= threshold else "CAUTION",
    )
