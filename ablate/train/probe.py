"""The paired gradient probe (DESIGN.md §4).

With and without the branch on identical weights, the same cached batches and the same RNG
state, dropout off by default: the only difference between the two arms is the branch.
Every adapter group (block adapters, projections, their union) is measured on the same passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ablate.stats import ratio_ci
from ablate.train.device import autocast, grad_norm
from ablate.train.result import DEFAULT_GROUP, GroupProbe, ProbeResult
from ablate.train.subject import ALL_GROUP, Subject, watched_groups

DEFAULT_THRESHOLD = 0.8  # the seed's line between "OK" and "CAUTION"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _arm(subject: Subject, groups: dict[str, list], batch: Any, device: torch.device, rng_seed: int) -> list:
    """One forward/backward on a batch: [loss, inflation, g_X, g_G for each group], features."""
    params = [*groups["all"], *subject.branch_parameters()]
    for p in params:
        p.grad = None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(rng_seed)
        with autocast(device):
            loss, out = subject.compute_loss(batch)
        loss.backward()
    zero = torch.zeros((), device=device)
    inflation = out.norm_inflation if out.norm_inflation is not None else torch.ones((), device=device)
    g_x = grad_norm(subject.branch_parameters()) if subject.has_branch else zero
    norms = {k: grad_norm(ps) for k, ps in groups.items() if k != ALL_GROUP}
    # The union's norm follows from the disjoint groups' (no second pass over its gradients).
    norms[ALL_GROUP] = torch.linalg.vector_norm(torch.stack(list(norms.values())))
    row = [loss.detach(), inflation, g_x, *(norms[k] for k in groups)]
    return [t.float() for t in row], out.final_features.detach().float()


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
) -> ProbeResult:
    """Measure R_G = ||grad_G L|| with / without the branch, per batch and adapter group G.

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
            with_, f_with = _arm(subject, groups, batch, device, rng_seed + i)
            with subject.branch_bypassed():
                without, f_without = _arm(subject, groups, batch, device, rng_seed + i)
            cos = F.cosine_similarity(f_with, f_without, dim=-1).mean()
            rows.append(torch.stack([*with_, without[0], *without[3:], cos]))
        # One host transfer for the whole probe.
        table = torch.stack(rows).cpu().double().tolist()
    finally:
        for p, g in zip(params, saved):
            p.grad = g
        subject.train(was_training)
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
        fix=fix,
        scale=scale,
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
