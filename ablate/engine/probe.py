"""The paired gradient probe (docs/concepts.md, "The probe").

With and without the branch on identical weights, the same cached batches and the same RNG
state, dropout off by default: the only difference between the two arms is the branch.
Every adapter group (block adapters, projections, their union) is measured on the same passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ablate.engine.device import arm_norms, autocast
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
) -> list[ProbeResult]:
    """The probe of every arm of ``subject`` (one, or a packed several), on the same passes.

    The subject's gradients and train/eval mode are restored afterwards, so a probe can run in
    the middle of training without disturbing it.
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
    try:
        for i, batch in enumerate(batches):
            seeds = [a.seed + i for a in arms]
            with_, f_with = _arm(subject, groups, batch, device, seeds, precision)
            with subject.branch_bypassed():
                without, f_without = _arm(subject, groups, batch, device, seeds, precision)
            cos = F.cosine_similarity(f_with, f_without, dim=-1).reshape(len(arms), -1).mean(1)
            rows.append(torch.stack([*with_, without[0], *without[3:], cos]))  # [columns, arms]
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
