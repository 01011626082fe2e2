"""One ablation arm, generically: its config, what a built arm offers the engine, and the two things
the engine does with it (probe it at initialisation, train it).

A subject (ablate/subjects/) turns an ``ArmConfig`` into a ``BuiltArm``: the model under study
(the ``Subject`` interface), its device, held-out probe and gain batches, and a training batch per
step. Everything here works on any subject; nothing here knows one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from ablate.engine.fixes import parse_fix
from ablate.engine.loop import RunConfig, StepRows, train_arms
from ablate.engine.probe import ArmLabel, probe_arms
from ablate.engine.result import ProbeResult, TrainResult
from ablate.errors import AblateInputError
from ablate.eval import evaluation_row
from ablate.timers import span


@dataclass(frozen=True)
class ArmConfig:
    """Everything one arm needs: the subject's own settings, the fix, and the engine's settings.

    ``subject`` is the subject's config object (hashable, frozen; its ``kind`` names the registered
    subject that builds it). ``frozen`` marks the frozen control: the judged group (``run.group``)
    gets its gradient measured but is never updated.
    """

    subject: Any
    fix: str = "none"
    scale: float | None = None
    run: RunConfig = field(default_factory=RunConfig)
    probe_batches: int = 8
    seed: int = 0
    device: str = "auto"
    frozen: bool = False
    gain_batches: int = 16  # held-out batches for adapter_gain (forward passes only, so cheap)

    @property
    def frozen_groups(self) -> tuple[str, ...]:
        return (self.run.group,) if self.frozen else ()

    def with_fix(self, fix: str, scale: float | None) -> ArmConfig:
        return replace(self, fix=fix, scale=scale)

    def packing_key(self) -> Hashable:
        """The engine settings arms must share to train packed (a subject adds its own): the training
        and probe settings, the frozen groups and the device; seeds and scales may differ."""
        return (self.run, self.frozen_groups, self.probe_batches, self.gain_batches, self.device)


def validate_arm(cfg: ArmConfig) -> None:
    """The engine's field-level checks (cheap, before anything is built or written)."""
    parse_fix(cfg.fix, cfg.scale)
    checks = [
        ("steps", cfg.run.steps >= 1, "must be >= 1"),
        ("batches", cfg.probe_batches >= 1, "must be >= 1"),
        ("gain_batches", cfg.gain_batches >= 2, "must be >= 2 (one batch gives no interval)"),
        ("lr", cfg.run.lr > 0, "must be > 0"),
        ("probe_every", cfg.run.probe_every >= -1, "must be >= 0 (or -1: no probes)"),
        ("threshold", 0 < cfg.run.threshold, "must be > 0"),
    ]
    for name, ok, msg in checks:
        if not ok:
            raise AblateInputError(name, msg)


class BuiltArm(Protocol):
    """A built arm (or a pack of arms trained side by side): what the engine runs."""

    model: Any  # the Subject (packed: ``n_arms`` arms)
    device: torch.device
    probe_batches: Sequence[Any]
    gain_batches: Sequence[Any]
    labels: list[ArmLabel]

    def train_batch(self, step: int) -> Any: ...

    def evaluate(self) -> list[Any] | None:
        """The evaluation, one result per arm (each with a ``metrics`` dict of means), or None when
        the arm is not evaluated. A built arm may also have ``eval_every`` (int, default 0): evaluate
        every that many steps during training too (``train_built``)."""
        ...


def probe_built(built: BuiltArm, cfg: ArmConfig) -> list[ProbeResult]:
    """The paired gradient probe at initialisation, one result per arm of ``built``."""
    return probe_arms(
        built.model,
        built.probe_batches,
        built.device,
        built.labels,
        step=0,
        threshold=cfg.run.threshold,
        dropout=cfg.run.probe_dropout,
        group=cfg.run.group,
    )


def train_built(
    built: BuiltArm,
    cfg: ArmConfig,
    on_flush: Callable[[int, StepRows], None] | None = None,
    on_probe: Callable[[int, ProbeResult], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    on_nonfinite: Callable[[int, int], None] | None = None,
) -> list[TrainResult]:
    """Train every arm of ``built`` side by side (one result each, in order), then evaluate them.

    Callbacks get the arm's index; ``on_nonfinite(arm, step)``: see :func:`ablate.engine.loop.train_arms`
    (default: a non-finite loss in any arm stops them all). With ``built.eval_every`` = N > 0 the arms
    are also evaluated every N steps, and each evaluation (the end's too, at step ``steps``) is a step
    row of ``eval/<metric>`` values, handed to ``on_flush``.
    """
    every = int(getattr(built, "eval_every", 0) or 0)
    results = train_arms(
        built.model,
        built.train_batch,
        built.probe_batches,
        replace(cfg.run, freeze=cfg.frozen_groups),
        built.device,
        built.labels,
        on_flush=on_flush,
        on_probe=on_probe,
        on_step=on_step,
        eval_batches=built.gain_batches,
        on_nonfinite=on_nonfinite,
        evaluate=built.evaluate if every > 0 else None,
        evaluate_every=every,
    )
    with span("evaluation"):
        evaluations = built.evaluate()
    if evaluations is not None:
        for arm, (result, ev) in enumerate(zip(results, evaluations, strict=True)):
            result.evaluation = ev
            if every > 0:
                row = evaluation_row(ev.metrics)
                result.step_evaluations[cfg.run.steps] = row
                if on_flush is not None:
                    on_flush(arm, [(cfg.run.steps, row)])
    return results
