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

from ablate.train.device import autocast, grad_norm
from ablate.train.metrics import edge_means, loss_slope
from ablate.train.probe import DEFAULT_THRESHOLD, run_probe
from ablate.train.result import ProbeResult, TrainResult
from ablate.train.subject import Subject

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


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; raised at the flush that saw it (its rows are flushed)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


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
) -> TrainResult:
    """Train the subject's adapters and branch for ``cfg.steps`` steps; return the result.

    ``train_batches(step)`` returns the batch for a step (already on ``device``).
    """
    torch.manual_seed(seed)
    groups = {"adapter": subject.adapter_parameters(), "branch": subject.branch_parameters()}
    params = [p for ps in groups.values() for p in ps]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)

    gate_names = sorted(subject.gate_values())
    names = ["loss", "grad_norm_adapter", "grad_norm_branch", "upd_adapter", "upd_branch"]
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
        p = run_probe(subject, probe_batches, device, fix, scale, step, cfg.threshold, cfg.probe_dropout, seed)
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
        with autocast(device):
            loss, _ = subject.compute_loss(batch)
        loss.backward()
        before = {k: [p.detach().clone() for p in ps] for k, ps in groups.items()}
        opt.step()
        row = [
            loss.detach().float(),
            grad_norm(groups["adapter"]),
            grad_norm(groups["branch"]) if groups["branch"] else zero,
        ]
        for k in ("adapter", "branch"):
            row.append(_update_ratio(groups[k], before[k]) if groups[k] else zero)
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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    losses = metrics["loss"]
    first, last = edge_means(losses)
    train_s = max(wall - probe_s, 1e-9)
    ratios = [p.grad_ratio for p in probes]
    return TrainResult(
        fix=fix,
        scale=scale,
        seed=seed,
        steps=cfg.steps,
        device=str(device),
        loss_first=first,
        loss_last=last,
        loss_slope=loss_slope(losses, cfg.warmup_frac),
        grad_ratio_init=probes[0].grad_ratio,
        grad_ratio_final=probes[-1].grad_ratio,
        grad_ratio_mean=sum(ratios) / len(ratios),
        wall_s=wall,
        steps_per_s=cfg.steps / train_s,
        peak_mem_mb=_peak_mem_mb(device),
        metrics=metrics,
        probes=probes,
    )


def _update_ratio(params: list[torch.nn.Parameter], before: list[torch.Tensor]) -> torch.Tensor:
    """||delta theta|| / ||theta|| over a parameter group, for the step just taken."""
    delta = torch._foreach_sub([p.detach() for p in params], before)
    num = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(delta)))
    den = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(before)))
    return num / den.clamp_min(1e-30)
