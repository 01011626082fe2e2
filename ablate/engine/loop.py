"""The short training run (MAE's engine role): N Adam steps with per-step diagnostics and probes.

Per-step values stay on the device and reach the host only at a flush (no per-step ``.item()``);
``on_flush`` hands each flushed block to the caller (the store writes it in one transaction).
"""

from __future__ import annotations

import contextlib
import functools
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ablate import faults
from ablate.engine.device import arm_norms, autocast, batch_tensors, peak_flops
from ablate.engine.metrics import edge_means, loss_slope
from ablate.engine.probe import BYPASSED, DEFAULT_THRESHOLD, ArmLabel, probe_arms
from ablate.engine.result import DEFAULT_GROUP, ProbeResult, TrainResult
from ablate.engine.subject import Subject, watched_groups
from ablate.errors import NonFiniteLossError
from ablate.eval import evaluation_row
from ablate.stats import geo_mean, mean_ci
from ablate.timers import span

StepRows = list[tuple[int, dict[str, float]]]


@dataclass(frozen=True)
class RunConfig:
    steps: int = 100
    lr: float = 5e-4  # AA-CLIP's Adam defaults
    betas: tuple[float, float] = (0.5, 0.999)
    probe_every: int = 50  # probe at step 0, every K steps, and at the end; 0 = start and end only; -1 = never
    threshold: float = DEFAULT_THRESHOLD
    probe_dropout: bool = False
    warmup_frac: float = 0.1  # steps skipped before fitting the loss slope
    flush_every: int = 50
    group: str = DEFAULT_GROUP  # the adapter group verdicts and adapter_gain judge
    # Adapter groups the optimiser leaves alone (their gradient is still measured): the frozen control.
    freeze: tuple[str, ...] = ()
    compile: bool = False  # torch.compile the loss computation (GPU runs; first steps pay the compile)
    count_flops: bool = True  # FLOPs per step (once per configuration) for the MFU
    precision: str = "fp32"  # fp32 | tf32 | bf16 (autocast), ablate/engine/device.py


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
    """Train one arm's adapters and branch for ``cfg.steps`` steps; return the result.

    ``train_batches(step)`` returns the batch for a step (already on ``device``); ``eval_batches``
    (default: the probe batches) are the held-out batches ``adapter_gain`` is measured on.
    """
    return train_arms(
        subject,
        train_batches,
        probe_batches,
        cfg,
        device,
        [ArmLabel(fix, scale, seed)],
        on_flush=None if on_flush is None else lambda _arm, rows: on_flush(rows),
        on_probe=None if on_probe is None else lambda _arm, p: on_probe(p),
        on_step=on_step,
        eval_batches=eval_batches,
    )[0]


def train_arms(
    subject: Subject,
    train_batches: Callable[[int], Any],
    probe_batches: Sequence[Any],
    cfg: RunConfig,
    device: torch.device,
    arms: Sequence[ArmLabel],
    on_flush: Callable[[int, StepRows], None] | None = None,
    on_probe: Callable[[int, ProbeResult], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    eval_batches: Sequence[Any] | None = None,
    on_nonfinite: Callable[[int, int], None] | None = None,
    evaluate: Callable[[], Sequence[Any] | None] | None = None,
    evaluate_every: int = 0,
) -> list[TrainResult]:
    """Train every arm of ``subject`` (one model, or several packed) side by side; one result per arm.

    Callbacks get the arm's index. All per-step values stay on the device until a flush.
    ``evaluate`` (one result per arm, each with a ``metrics`` dict of means) runs after every
    ``evaluate_every`` updates before the last: its means join that step's row (``eval/<name>``,
    :func:`ablate.eval.evaluation_row`) and ``TrainResult.step_evaluations``; its time, like the
    probes', is not training time. The end of the run is evaluated by the caller (``train_built``).
    A non-finite loss raises NonFiniteLossError at the flush that sees it, unless ``on_nonfinite``
    is given: it is then called once per arm that went non-finite (arm, first such step) and may
    raise; the other arms train on unaffected (arms share no trained state, and the backbone mixes
    nothing across samples), and the dead arm's later blocks are not handed to ``on_flush``.
    """
    n_arms = getattr(subject, "n_arms", 1)
    if len(arms) != n_arms:
        raise ValueError(f"{len(arms)} arm labels for a subject of {n_arms} arms")
    torch.manual_seed(arms[0].seed)
    groups = watched_groups(subject)
    for name in (cfg.group, *cfg.freeze):
        if name not in groups:
            raise ValueError(f"unknown adapter group {name!r}; this subject has {', '.join(groups)}")
    frozen = {id(p) for name in cfg.freeze for p in groups[name]}
    branch = subject.branch_parameters()
    trained = [p for p in groups["all"] if id(p) not in frozen] + branch
    # Fused Adam on CUDA: one kernel for every parameter (same update rule, elementwise per arm).
    opt = torch.optim.Adam(trained, lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda" or None)
    judged_init = [p.detach().clone() for p in groups[cfg.group]]  # for adapter_gain at the end
    flops = math.nan
    if cfg.count_flops and cfg.compile:  # a compiled step hides its operations from the counter
        with span("flops"):
            flops = step_flops(subject, train_batches(0), device, cfg.precision)
    # Otherwise the first step is counted as it trains (FlopCounterMode runs the same operations).
    count_first = cfg.count_flops and not cfg.compile
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    compute_loss = torch.compile(subject.compute_loss) if cfg.compile else subject.compute_loss

    gate_names = sorted(subject.gate_values())
    watched = {**groups, "branch": branch}
    names = ["loss", *(f"grad_norm_{g}" for g in watched), *(f"upd_{g}" for g in watched)]
    names += [f"gate/{g}" for g in gate_names]
    metrics: list[dict[str, list[float]]] = [{n: [] for n in names} for _ in arms]
    probes: list[list[ProbeResult]] = [[] for _ in arms]
    pending: list[torch.Tensor] = []
    pending_start = 0
    probe_s = 0.0
    zero = torch.zeros(n_arms, device=device)
    parts = [k for k in groups if k != "all"]

    dead: set[int] = set()  # arms whose loss went non-finite (with on_nonfinite)
    arm_ids = range(n_arms)
    evaluated: list[dict[int, dict[str, float]]] = [{} for _ in arms]  # per arm: step -> eval/<name> values

    def flush() -> None:
        nonlocal pending, pending_start
        if not pending:
            return
        block = torch.stack(pending).cpu().double().tolist()  # [steps][columns][arms]
        start = pending_start
        pending, pending_start = [], pending_start + len(block)
        # Per arm, the first step whose loss (column 0) is not finite.
        bad = [next((start + i for i, v in enumerate(block) if not math.isfinite(v[0][a])), None) for a in arm_ids]
        for a in range(n_arms):
            rows = [
                (start + i, {**{n: col[a] for n, col in zip(names, vals)}, **evaluated[a].get(start + i, {})})
                for i, vals in enumerate(block)
            ]
            for _, vals in rows:
                for n in names:
                    metrics[a][n].append(vals[n])
            if on_flush is not None and a not in dead:
                on_flush(a, rows)
        first_bad = min((b for b in bad if b is not None), default=None)
        if first_bad is not None and on_nonfinite is None:
            raise NonFiniteLossError(first_bad)
        for a, step in enumerate(bad):
            if step is not None and a not in dead:
                dead.add(a)
                on_nonfinite(a, step)

    def probe(step: int) -> None:
        nonlocal probe_s
        faults.point("probe")
        t = time.perf_counter()
        with span("probe"):
            # On the initial weights, the passes without the branch are every arm of a seed's own
            # (the shared adapter initialisation): the process reuses them (BypassedPasses).
            memo = BYPASSED if step == 0 else None
            results = probe_arms(
                subject,
                probe_batches,
                device,
                arms,
                step,
                cfg.threshold,
                cfg.probe_dropout,
                cfg.group,
                cfg.precision,
                memo,
            )
        probe_s += time.perf_counter() - t
        for a, p in enumerate(results):
            probes[a].append(p)
            if on_probe is not None:
                on_probe(a, p)

    def evaluate_now(step: int) -> None:
        nonlocal probe_s
        t = time.perf_counter()
        with span("evaluation"):
            results = evaluate() if evaluate is not None else None
        probe_s += time.perf_counter() - t
        for a, ev in enumerate(results or ()):
            evaluated[a][step] = evaluation_row(ev.metrics)

    t0 = time.perf_counter()
    subject.train(True)
    for step in range(cfg.steps):
        if cfg.probe_every >= 0 and (step == 0 or (cfg.probe_every and step % cfg.probe_every == 0)):
            probe(step)
        if evaluate_every > 0 and step > 0 and step % evaluate_every == 0:
            evaluate_now(step)
        with span("data"):
            batch = train_batches(step)
        opt.zero_grad(set_to_none=True)
        for p in groups["all"]:  # frozen groups are not in the optimiser; clear their gradient too
            p.grad = None
        counter = None
        if step == 0 and count_first:
            key = _flops_key(subject, batch, device, cfg.precision)
            flops = _FLOPS_CACHE.get(key, math.nan)
            if key not in _FLOPS_CACHE:
                from torch.utils.flop_counter import FlopCounterMode

                counter = FlopCounterMode(display=False)
        with counter if counter is not None else contextlib.nullcontext():
            with autocast(device, cfg.precision):
                loss, _ = compute_loss(batch)
            loss.sum().backward()
        if counter is not None:
            flops = _FLOPS_CACHE[key] = float(counter.get_total_flops())
        before = {k: [p.detach().clone() for p in ps] for k, ps in watched.items() if k != "all"}
        opt.step()
        # Norms per disjoint group once; the union's follow from them (||a, b|| = sqrt(|a|^2 + |b|^2)).
        grads, deltas = {}, {}
        for k, ps in watched.items():
            if k != "all":
                grads[k] = arm_norms([p.grad for p in ps], n_arms, device)
                deltas[k] = _delta_norms(ps, before[k], n_arms, device)
        grads["all"] = torch.linalg.vector_norm(torch.stack([grads[k] for k in parts]), dim=0)
        deltas["all"] = tuple(
            torch.linalg.vector_norm(torch.stack([deltas[k][i] for k in parts]), dim=0) for i in (0, 1)
        )
        row = [loss.detach().float().reshape(n_arms), *(grads[k] for k in watched)]
        row += [deltas[k][0] / deltas[k][1].clamp_min(1e-30) if watched[k] else zero for k in watched]
        gates = subject.gate_values()
        row += [gates[g].float().reshape(n_arms) for g in gate_names]
        pending.append(torch.stack(row))  # [columns, arms]
        if len(pending) >= cfg.flush_every:
            flush()
        if on_step is not None:
            on_step(step)
    flush()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    loop_s = max(time.perf_counter() - t0 - probe_s, 1e-9)
    if cfg.probe_every >= 0 and (cfg.steps == 0 or not probes[0] or probes[0][-1].step != cfg.steps):
        probe(cfg.steps)
    held_out = probe_batches if eval_batches is None else eval_batches
    seeds = [a.seed for a in arms]
    with span("gain"):
        gains = held_out_gain(
            subject, groups[cfg.group], judged_init, held_out, device, seeds, cfg.precision, group=cfg.group
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    peak = peak_flops(device)
    mfu = flops * cfg.steps / loop_s / peak if peak else math.nan
    results = []
    for a, label in enumerate(arms):
        losses = metrics[a]["loss"]
        first, last = edge_means(losses)
        gain = mean_ci(gains[a])
        ratios = [p.grad_ratio for p in probes[a]]
        results.append(
            TrainResult(
                fix=label.fix,
                scale=label.scale,
                seed=label.seed,
                steps=cfg.steps,
                device=str(device),
                group=cfg.group,
                frozen=tuple(cfg.freeze),
                loss_first=first,
                loss_last=last,
                loss_slope=loss_slope(losses, cfg.warmup_frac),
                grad_ratio_init=probes[a][0].grad_ratio if probes[a] else math.nan,
                grad_ratio_final=probes[a][-1].grad_ratio if probes[a] else math.nan,
                grad_ratio_mean=geo_mean(ratios) if ratios else math.nan,
                adapter_gain=gain.estimate,
                adapter_gain_lo=gain.lo,
                adapter_gain_hi=gain.hi,
                adapter_gain_batches=gains[a],
                wall_s=wall,
                steps_per_s=cfg.steps / loop_s,
                peak_mem_mb=_peak_mem_mb(device),
                packed_arms=n_arms,
                step_flops=flops,
                mfu=mfu,
                groups=tuple(groups),
                metrics=metrics[a],
                probes=probes[a],
                step_evaluations=evaluated[a],
            )
        )
    return results


_FLOPS_CACHE: dict[tuple, float] = {}


def _flops_key(subject: Subject, batch: Any, device: torch.device, precision: str) -> tuple:
    """A step's configuration: the subject's type, arms, trainable parameter shapes and batch shapes."""
    params = [p for p in subject.parameters() if p.requires_grad]
    shapes = tuple(tuple(t.shape) for t in (*params, *batch_tensors(batch)))
    return (type(subject).__name__, getattr(subject, "n_arms", 1), subject.has_branch, device.type, precision, shapes)


def step_flops(subject: Subject, batch: Any, device: torch.device, precision: str = "fp32") -> float:
    """FLOPs of one training step (forward + backward, all arms), counted once per configuration.

    Counted with torch's FlopCounterMode on one extra step whose gradients are then dropped (and whose
    dropout draws are replayed from a saved state), so training is not disturbed. (``train_arms``
    counts its first step as it trains instead, unless the step is compiled.)
    """
    from torch.utils.flop_counter import FlopCounterMode

    params = [p for p in subject.parameters() if p.requires_grad]
    key = _flops_key(subject, batch, device, precision)
    if key not in _FLOPS_CACHE:
        saved = [p.grad for p in params]
        was_training = getattr(subject, "training", False)
        subject.train(True)
        counter = FlopCounterMode(display=False)
        try:
            with subject.dropout_seeded([0] * getattr(subject, "n_arms", 1)), counter:
                with autocast(device, precision):
                    loss, _ = subject.compute_loss(batch)
                loss.sum().backward()
        finally:
            for p, g in zip(params, saved):
                p.grad = g
            subject.train(was_training)
        _FLOPS_CACHE[key] = float(counter.get_total_flops())
    return _FLOPS_CACHE[key]


@torch.no_grad()
def held_out_gain(
    subject: Subject,
    params: list[torch.nn.Parameter],
    initial: list[torch.Tensor],
    batches: Sequence[Any],
    device: torch.device,
    rng_seeds: Sequence[int],
    precision: str = "fp32",
    group: str | None = None,
) -> list[list[float]]:
    """Per arm, per held-out batch: loss with ``params`` reset to ``initial`` minus loss as trained.

    Everything else (the other adapter groups, the branch) keeps its trained weights, so the
    difference is what this group's learning is worth to the model. Eval mode (no dropout); the
    weights are restored afterwards.

    The two passes of a batch differ only in ``params``, so a subject that can split its forward
    (``loss_after(batch, group)``, ablate/engine/subject.py) runs what comes before the group's first
    use once; and when ``params`` never moved from ``initial`` (the frozen control), the reset pass
    is the trained pass. Either way the numbers are those of two full passes.
    """
    arms = getattr(subject, "n_arms", 1)
    was_training = getattr(subject, "training", False)
    subject.train(False)
    trained = [p.detach().clone() for p in params]
    unchanged = all(torch.equal(p, w) for p, w in zip(trained, initial))
    split = getattr(subject, "loss_after", None) if group is not None else None
    out = []
    try:
        for i, batch in enumerate(batches):
            loss_of = split(batch, group) if split is not None else functools.partial(subject.compute_loss, batch)
            pair: list[torch.Tensor] = []
            for weights in (trained, initial):
                if pair and unchanged:
                    pair.append(pair[0])
                    break
                _load(params, weights)
                with subject.dropout_seeded([s + i for s in rng_seeds]), autocast(device, precision):
                    loss, _ = loss_of()
                pair.append(loss.float().reshape(arms))
            out.append(pair[1] - pair[0])
    finally:
        _load(params, trained)
        subject.train(was_training)
    if not out:
        return [[] for _ in range(arms)]
    return [list(col) for col in zip(*torch.stack(out).cpu().double().tolist())]


def _load(params: list[torch.nn.Parameter], weights: list[torch.Tensor]) -> None:
    for p, w in zip(params, weights):
        p.data.copy_(w)


def _delta_norms(
    params: list[torch.nn.Parameter], before: list[torch.Tensor], arms: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per arm, (||delta theta||, ||theta before||) over a parameter group for the step just taken; their
    ratio is the update-to-weight ratio (kept apart so groups combine into their union)."""
    if not params:
        return torch.zeros(arms, device=device), torch.zeros(arms, device=device)
    delta = torch._foreach_sub([p.detach() for p in params], before)
    return arm_norms(delta, arms, device), arm_norms(before, arms, device)
