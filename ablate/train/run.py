"""The short training run (MAE's engine role): N Adam steps with per-step diagnostics and probes.

Per-step values stay on the device and reach the host only at a flush (no per-step ``.item()``);
``on_flush`` hands each flushed block to the caller (the store writes it in one transaction).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ablate.errors import NonFiniteLossError
from ablate.stats import geo_mean, mean_ci
from ablate.train.device import autocast, grad_norm
from ablate.train.metrics import edge_means, loss_slope
from ablate.train.probe import DEFAULT_THRESHOLD, run_probe
from ablate.train.result import DEFAULT_GROUP, ProbeResult, TrainResult
from ablate.train.subject import Subject, watched_groups

StepRows = list[tuple[int, dict[str, float]]]


@dataclass(frozen=True)
class RunConfig:
    steps: int = 100
    lr: float = 5e-4  # AA-CLIP's Adam defaults
    betas: tuple[float, float] = (0.5, 0.999)
    probe_every: int = 50  # probe at step 0, every K steps, and at the end; 0 = start and end only
    threshold: float = DEFAULT_THRESHOLD
    probe_dropout: bool = False
    warmup_frac: float = 0.1  # steps skipped before fitting the loss slope
    flush_every: int = 50
    group: str = DEFAULT_GROUP  # the adapter group verdicts and adapter_gain judge
    # Adapter groups the optimiser leaves alone (their gradient is still measured): the frozen control.
    freeze: tuple[str, ...] = ()


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def train_run(
    subject: Subject,
    train_batches: Callable[[int], Any],
    probe_batches: Sequence[Any],
    cfg: RunConfig,
    device: torch.device,
    fix: str,
    scale: float | None,
    seed: int,
    on_flush: Callable[[StepRows], None] | None = None,
    on_probe: Callable[[ProbeResult], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    eval_batches: Sequence[Any] | None = None,
) -> TrainResult:
    """Train the subject's adapters and branch for ``cfg.steps`` steps; return the result.

    ``train_batches(step)`` returns the batch for a step (already on ``device``); ``eval_batches``
    (default: the probe batches) are the held-out batches ``adapter_gain`` is measured on.
    """
    torch.manual_seed(seed)
    groups = watched_groups(subject)
    for name in (cfg.group, *cfg.freeze):
        if name not in groups:
            raise ValueError(f"unknown adapter group {name!r}; this subject has {', '.join(groups)}")
    frozen = {id(p) for name in cfg.freeze for p in groups[name]}
    branch = subject.branch_parameters()
    trained = [p for p in groups["all"] if id(p) not in frozen] + branch
    opt = torch.optim.Adam(trained, lr=cfg.lr, betas=cfg.betas)
    judged_init = [p.detach().clone() for p in groups[cfg.group]]  # for adapter_gain at the end
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)

    gate_names = sorted(subject.gate_values())
    watched = {**groups, "branch": branch}
    names = ["loss", *(f"grad_norm_{g}" for g in watched), *(f"upd_{g}" for g in watched)]
    names += [f"gate/{g}" for g in gate_names]
    metrics: dict[str, list[float]] = {n: [] for n in names}
    probes: list[ProbeResult] = []
    pending: list[torch.Tensor] = []
    pending_start = 0
    probe_s = 0.0
    zero = torch.zeros((), device=device)

    def flush() -> None:
        nonlocal pending, pending_start
        if not pending:
            return
        block = torch.stack(pending).cpu().double().tolist()
        rows = [(pending_start + i, dict(zip(names, vals))) for i, vals in enumerate(block)]
        for _, vals in rows:
            for n in names:
                metrics[n].append(vals[n])
        pending, pending_start = [], pending_start + len(block)
        if on_flush is not None:
            on_flush(rows)
        bad = next((s for s, v in rows if v["loss"] != v["loss"] or abs(v["loss"]) == float("inf")), None)
        if bad is not None:
            raise NonFiniteLossError(bad)

    def probe(step: int) -> None:
        nonlocal probe_s
        t = time.perf_counter()
        p = run_probe(
            subject, probe_batches, device, fix, scale, step, cfg.threshold, cfg.probe_dropout, seed, cfg.group
        )
        probe_s += time.perf_counter() - t
        probes.append(p)
        if on_probe is not None:
            on_probe(p)

    t0 = time.perf_counter()
    subject.train(True)
    for step in range(cfg.steps):
        if step == 0 or (cfg.probe_every and step % cfg.probe_every == 0):
            probe(step)
        batch = train_batches(step)
        opt.zero_grad(set_to_none=True)
        for p in groups["all"]:  # frozen groups are not in the optimiser; clear their gradient too
            p.grad = None
        with autocast(device):
            loss, _ = subject.compute_loss(batch)
        loss.backward()
        before = {k: [p.detach().clone() for p in ps] for k, ps in watched.items() if k != "all"}
        opt.step()
        # Norms per disjoint group once; the union's follow from them (||a, b|| = sqrt(|a|^2 + |b|^2)).
        grads, deltas = {}, {}
        for k, ps in watched.items():
            if k != "all":
                grads[k] = grad_norm(ps) if ps else zero
                deltas[k] = _delta_norms(ps, before[k]) if ps else (zero, zero)
        parts = [k for k in groups if k != "all"]
        grads["all"] = torch.linalg.vector_norm(torch.stack([grads[k] for k in parts]))
        deltas["all"] = tuple(torch.linalg.vector_norm(torch.stack([deltas[k][i] for k in parts])) for i in (0, 1))
        row = [loss.detach().float(), *(grads[k] for k in watched)]
        row += [deltas[k][0] / deltas[k][1].clamp_min(1e-30) if watched[k] else zero for k in watched]
        gates = subject.gate_values()
        row += [gates[g].float() for g in gate_names]
        pending.append(torch.stack([r.float() for r in row]))
        if len(pending) >= cfg.flush_every:
            flush()
        if on_step is not None:
            on_step(step)
    flush()
    if cfg.steps == 0 or not probes or probes[-1].step != cfg.steps:
        probe(cfg.steps)
    held_out = probe_batches if eval_batches is None else eval_batches
    gains = held_out_gain(subject, groups[cfg.group], judged_init, held_out, device, seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    losses = metrics["loss"]
    first, last = edge_means(losses)
    train_s = max(wall - probe_s, 1e-9)
    gain = mean_ci(gains)
    return TrainResult(
        fix=fix,
        scale=scale,
        seed=seed,
        steps=cfg.steps,
        device=str(device),
        group=cfg.group,
        frozen=tuple(cfg.freeze),
        loss_first=first,
        loss_last=last,
        loss_slope=loss_slope(losses, cfg.warmup_frac),
        grad_ratio_init=probes[0].grad_ratio,
        grad_ratio_final=probes[-1].grad_ratio,
        grad_ratio_mean=geo_mean([p.grad_ratio for p in probes]),
        adapter_gain=gain.estimate,
        adapter_gain_lo=gain.lo,
        adapter_gain_hi=gain.hi,
        adapter_gain_batches=gains,
        wall_s=wall,
        steps_per_s=cfg.steps / train_s,
        peak_mem_mb=_peak_mem_mb(device),
        metrics=metrics,
        probes=probes,
    )


@torch.no_grad()
def held_out_gain(
    subject: Subject,
    params: list[torch.nn.Parameter],
    initial: list[torch.Tensor],
    batches: Sequence[Any],
    device: torch.device,
    rng_seed: int,
) -> list[float]:
    """Per held-out batch: loss with ``params`` reset to ``initial`` minus loss as trained.

    Everything else (the other adapter groups, the branch) keeps its trained weights, so the
    difference is what this group's learning is worth to the model. Eval mode (no dropout); the
    weights are restored afterwards.
    """
    was_training = getattr(subject, "training", False)
    subject.train(False)
    trained = [p.detach().clone() for p in params]
    out = []
    try:
        for i, batch in enumerate(batches):
            pair = []
            for weights in (trained, initial):
                _load(params, weights)
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(rng_seed + i)
                    with autocast(device):
                        loss, _ = subject.compute_loss(batch)
                pair.append(loss.float())
            out.append(pair[1] - pair[0])
    finally:
        _load(params, trained)
        subject.train(was_training)
    return torch.stack(out).cpu().double().tolist() if out else []


def _load(params: list[torch.nn.Parameter], weights: list[torch.Tensor]) -> None:
    for p, w in zip(params, weights):
        p.data.copy_(w)


def _delta_norms(params: list[torch.nn.Parameter], before: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(||delta theta||, ||theta before||) over a parameter group, for the step just taken; their
    ratio is the update-to-weight ratio (kept apart so groups combine into their union)."""
    delta = torch._foreach_sub([p.detach() for p in params], before)
    num = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(delta)))
    den = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(before)))
    return num, den
