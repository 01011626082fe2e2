"""The AA-CLIP subject as the registry sees it (ablate/subjects/__init__.py, name ``aaclip``)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from ablate.engine.arm import ArmConfig
from ablate.engine.device import resolve_device
from ablate.subjects.aaclip.arm import (
    AAClipSubjectConfig,
    ArmData,
    ArmSetup,
    PackSetup,
    arm_data,
    check_data,
    load_text_adapter,
    packing_key,
    run_stage1,
    training_pool,
    validate,
)
from ablate.subjects.aaclip.data.order import steps_per_epoch
from ablate.subjects.aaclip.stage1 import to_bytes

GROUPS = ("layers", "proj")  # the per-block adapters, the per-level + detection projections


def _first_arm(like: Any) -> ArmSetup | ArmData | None:
    """What a new arm shares its backbone and data set with (a pack lends its first arm): a built
    AA-CLIP arm or its data; anything else (another subject's arm) shares nothing."""
    arms = getattr(like, "arms", None)  # a PackSetup lends its first arm
    if arms:
        like = arms[0]
    return like if isinstance(like, ArmData) or isinstance(getattr(like, "data", None), ArmData) else None


class AAClipSubject:
    name = "aaclip"

    def groups(self, subject_cfg: AAClipSubjectConfig) -> tuple[str, ...]:
        return GROUPS

    def validate(self, cfg: ArmConfig) -> None:
        validate(cfg)

    def check_data(self, cfg: ArmConfig) -> None:
        check_data(cfg)

    def build(self, cfg: ArmConfig, like: Any = None, stage1: Any = None) -> ArmSetup:
        return ArmSetup(cfg, like=_first_arm(like), text_adapter=stage1)

    def build_pack(self, cfgs: Sequence[ArmConfig], like: Any = None, stage1: Sequence[Any] | None = None) -> PackSetup:
        return PackSetup(cfgs, like=_first_arm(like), text_adapters=stage1)

    def trains_stage1(self, cfg: ArmConfig) -> bool:
        return cfg.subject.stage1 is not None

    def run_stage1(self, cfg: ArmConfig, like: Any, on_start: Any, on_step: Any) -> tuple[Any, ArmData]:
        data = arm_data(cfg, _first_arm(like))
        s1 = cfg.subject.stage1
        if on_start is not None:
            on_start(s1.steps or s1.epochs * steps_per_epoch(training_pool(cfg, data), s1.batch_size))
        return run_stage1(cfg, data, resolve_device(cfg.device), on_step), data

    def stage1_bytes(self, state: Any) -> bytes:
        return to_bytes(state)

    def stage1_state(self, cfg: ArmConfig, data: bytes) -> Any:
        return load_text_adapter(cfg.subject.model, data)

    def check_pack(self, cfg: ArmConfig) -> None:
        """AA-CLIP's arms always pack (ablate/subjects/aaclip/packed.py)."""

    def packing_key(self, cfg: ArmConfig) -> Hashable:
        return packing_key(cfg)

    def describe(self, subject_cfg: AAClipSubjectConfig) -> dict[str, Any]:
        from ablate.subjects.aaclip.describe import describe

        return describe(subject_cfg.model)


SUBJECT = AAClipSubject()
