"""The paired gradient probe (DESIGN.md §4).

With and without the branch on identical weights, the same cached batches and the same RNG
state, dropout off by default: the only difference between the two arms is the branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ablate.train.device import autocast, grad_norm
from ablate.train.metrics import bootstrap_ci, median
from ablate.train.result import ProbeResult
from ablate.train.subject import Subject

DEFAULT_THRESHOLD = 0.8  # the seed's line between "OK" and "CAUTION"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _arm(subject: Subject, batch: Any, device: torch.device, rng_seed: int) -> dict[str, torch.Tensor]:
    """One forward/backward on a batch; returns on-device scalars and the final features."""
    params = [*subject.adapter_parameters(), *subject.branch_parameters()]
    for p in params:
        p.grad = None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(rng_seed)
        with autocast(device):
            loss, out = subject.compute_loss(batch)
        loss.backward()
    inflation = out.norm_inflation if out.norm_inflation is not None else torch.ones((), device=device)
    return {
        "loss": loss.detach().float(),
        "g_a": grad_norm(subject.adapter_parameters()).float(),
        "g_layers": grad_norm(subject.adapter_layer_parameters()).float(),
        "g_x": grad_norm(subject.branch_parameters()).float() if subject.has_branch else torch.zeros((), device=device),
        "inflation": inflation.float(),
        "features": out.final_features.detach().float(),
    }


def run_probe(
    subject: Subject,
    batches: Sequence[Any],
    device: torch.device,
    fix: str,
    scale: float | None,
    step: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    dropout: bool = False,
    bootstrap_seed: int = 0,
) -> ProbeResult:
    """Measure the gradient ratio R = ||grad_A L|| with / without the branch, per batch.

    The subject's gradients and train/eval mode are restored afterwards, so a probe can run in
    the middle of training without disturbing it.
    """
    if not batches:
        raise ValueError("the probe needs at least one batch")
    params = [*subject.adapter_parameters(), *subject.branch_parameters()]
    saved = [p.grad for p in params]
    was_training = getattr(subject, "training", False)
    subject.train(dropout)
    rows = []
    try:
        for i, batch in enumerate(batches):
            with_ = _arm(subject, batch, device, rng_seed=bootstrap_seed + i)
            with subject.branch_bypassed():
                without = _arm(subject, batch, device, rng_seed=bootstrap_seed + i)
            cos = F.cosine_similarity(with_["features"], without["features"], dim=-1).mean()
            share = with_["g_a"] ** 2 / (with_["g_a"] ** 2 + with_["g_x"] ** 2).clamp_min(1e-30)
            rows.append(
                torch.stack(
                    [
                        with_["g_a"],
                        without["g_a"],
                        with_["g_layers"] / without["g_layers"].clamp_min(1e-30),
                        share,
                        with_["g_x"],
                        with_["inflation"],
                        with_["loss"],
                        without["loss"],
                        cos,
                    ]
                )
            )
        # One host transfer for the whole probe.
        table = torch.stack(rows).cpu().double().tolist()
    finally:
        for p, g in zip(params, saved):
            p.grad = g
        subject.train(was_training)
    g_with, g_without, r_layers, share, g_x, infl, l_with, l_without, cos = (list(c) for c in zip(*table))
    ratios = [a / b if b > 0 else float("nan") for a, b in zip(g_with, g_without)]
    ratio = median(ratios)
    return ProbeResult(
        fix=fix,
        scale=scale,
        step=step,
        grad_norm_without=median(g_without),
        grad_norm_with=median(g_with),
        grad_ratio=ratio,
        grad_ratio_ci=bootstrap_ci(ratios, seed=bootstrap_seed),
        grad_ratio_layers=median(r_layers),
        grad_share=median(share),
        grad_norm_branch=median(g_x),
        norm_inflation=_mean(infl),
        loss_with=_mean(l_with),
        loss_without=_mean(l_without),
        feature_cosine=_mean(cos),
        per_batch_ratios=ratios,
        threshold=threshold,
        verdict="OK" if ratio >= threshold else "CAUTION",
    )
