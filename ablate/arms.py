"""One ablation arm end to end: config -> its subject builds it -> the engine probes or trains it.

These are the functions a CLI command, the study runner or a notebook calls. The subject is looked
up in the registry (ablate/subjects/__init__.py) by ``cfg.subject.kind``; the engine
(ablate/engine/) does the rest and knows no subject.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ablate.engine.arm import ArmConfig, BuiltArm, probe_built, train_built
from ablate.engine.compare import compare_to_baseline
from ablate.engine.fixes import NO_BRANCH
from ablate.engine.loop import StepRows
from ablate.engine.result import ProbeResult, TrainResult
from ablate.ranking import REFERENCE_LABELS
from ablate.subjects import subject_kind
from ablate.subjects.kind import SubjectKind


def kind_of(cfg: ArmConfig) -> SubjectKind:
    return subject_kind(cfg.subject.kind)


def groups_of(cfg: ArmConfig) -> tuple[str, ...]:
    """The subject's disjoint adapter groups, in order (their union, ``all``, is not among them)."""
    return kind_of(cfg).groups(cfg.subject)


def validate(cfg: ArmConfig) -> None:
    """Field checks of the engine and the subject, before anything is built or written."""
    kind_of(cfg).validate(cfg)


def build(cfg: ArmConfig, like: Any = None, stage1: Any = None) -> BuiltArm:
    """One arm built; ``like`` is an arm built before whose frozen parts and data it may share;
    ``stage1`` its seed's Stage 1 state (a study trains it once per seed; None: the subject's own)."""
    return kind_of(cfg).build(cfg, like, stage1)


def build_pack(cfgs: Sequence[ArmConfig], like: Any = None, stage1: Sequence[Any] | None = None) -> BuiltArm:
    """Several arms of one subject built to train side by side (``stage1``: per arm, as ``build``)."""
    return kind_of(cfgs[0]).build_pack(cfgs, like, stage1)


def probe_arm(cfg: ArmConfig, built: BuiltArm | None = None) -> ProbeResult:
    """The paired gradient probe at initialisation for one arm."""
    return probe_built(built or build(cfg), cfg)[0]


def train_arm(
    cfg: ArmConfig,
    on_flush: Callable[[StepRows], None] | None = None,
    on_probe: Callable[[ProbeResult], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    built: BuiltArm | None = None,
) -> TrainResult:
    """Build the arm (unless given) and run the short training; callbacks stream metrics and probes."""
    return train_built(
        built or build(cfg),
        cfg,
        on_flush=None if on_flush is None else lambda _arm, rows: on_flush(rows),
        on_probe=None if on_probe is None else lambda _arm, p: on_probe(p),
        on_step=on_step,
    )[0]


def train_pack(
    cfgs: Sequence[ArmConfig],
    on_flush: Callable[[int, StepRows], None] | None = None,
    on_probe: Callable[[int, ProbeResult], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    built: BuiltArm | None = None,
    on_nonfinite: Callable[[int, int], None] | None = None,
) -> list[TrainResult]:
    """Train several arms side by side (one result each, in order); callbacks get the arm's index."""
    return train_built(
        built or build_pack(cfgs),
        cfgs[0],
        on_flush=on_flush,
        on_probe=on_probe,
        on_step=on_step,
        on_nonfinite=on_nonfinite,
    )


def baseline_row(result: TrainResult, base: TrainResult, groups: Sequence[str]) -> dict[str, Any]:
    """A run's comparison with its seed's no-branch baseline run (``train_*_ratio*``, gain ratios,
    ``loss_slope_rel``): the columns the store keeps beside the run's own summary."""
    row = compare_to_baseline(
        result.metrics,
        base.metrics,
        result.adapter_gain_batches,
        base.adapter_gain_batches,
        (*groups, "all"),
        result.group,
    )
    row["loss_slope_rel"] = result.loss_slope - base.loss_slope
    return row


@dataclass
class ComparedRun:
    """An arm's training and, when asked, its no-branch baseline of the same seed and batches."""

    result: TrainResult
    baseline: TrainResult | None
    comparison: dict[str, Any]


def baseline_config(cfg: ArmConfig) -> ArmConfig:
    """The no-branch baseline of an arm: same subject, seed and batches, no branch, nothing frozen."""
    return replace(cfg.with_fix(NO_BRANCH, None), frozen=False)


def train_compared(
    cfg: ArmConfig,
    baseline: bool = True,
    on_start: Callable[[str], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    on_end: Callable[[str, TrainResult], None] | None = None,
) -> ComparedRun:
    """``ablate train``: the arm and (unless it is itself the plain baseline, or ``baseline`` is off)
    its no-branch baseline, then the comparison of the two. ``on_start``/``on_end`` get a label
    ("no-branch (baseline)", "train FIX")."""
    built = build(cfg)
    with_base = baseline and not (cfg.fix == NO_BRANCH and not cfg.frozen)
    base = None
    if with_base:
        label = REFERENCE_LABELS["baseline"]
        if on_start:
            on_start(label)
        base = train_arm(baseline_config(cfg), on_step=on_step, built=build(baseline_config(cfg), like=built))
        if on_end:
            on_end(label, base)
    label = f"train {built.labels[0].fix}"
    if on_start:
        on_start(label)
    result = train_arm(cfg, on_step=on_step, built=built)
    if on_end:
        on_end(label, result)
    comparison = baseline_row(result, base, groups_of(cfg)) if base is not None else {}
    return ComparedRun(result, base, comparison)
