"""The AA-CLIP subject as the registry sees it (ablate/subjects/__init__.py, name ``aaclip``)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from ablate.engine.arm import ArmConfig, BuiltArm
from ablate.subjects.aaclip.arm import AAClipSubjectConfig, ArmSetup, PackSetup, check_data, packing_key, validate

GROUPS = ("layers", "proj")  # the per-block adapters, the per-level + detection projections


def _first_arm(like: BuiltArm | None) -> ArmSetup | None:
    """The built arm whose backbone and data set a new arm shares (a pack lends its first arm)."""
    if isinstance(like, PackSetup):
        return like.arms[0]
    return like if isinstance(like, ArmSetup) else None


class AAClipSubject:
    name = "aaclip"

    def groups(self, subject_cfg: AAClipSubjectConfig) -> tuple[str, ...]:
        return GROUPS

    def validate(self, cfg: ArmConfig) -> None:
        validate(cfg)

    def check_data(self, cfg: ArmConfig) -> None:
        check_data(cfg)

    def build(self, cfg: ArmConfig, like: BuiltArm | None = None) -> ArmSetup:
        return ArmSetup(cfg, like=_first_arm(like))

    def build_pack(self, cfgs: Sequence[ArmConfig], like: BuiltArm | None = None) -> PackSetup:
        return PackSetup(cfgs, like=_first_arm(like))

    def check_pack(self, cfg: ArmConfig) -> None:
        """AA-CLIP's arms always pack (ablate/subjects/aaclip/packed.py)."""

    def packing_key(self, cfg: ArmConfig) -> Hashable:
        return packing_key(cfg)

    def describe(self, subject_cfg: AAClipSubjectConfig) -> dict[str, Any]:
        from ablate.subjects.aaclip.describe import describe

        return describe(subject_cfg.model)


SUBJECT = AAClipSubject()
