"""What a subject provides: from an arm's config to a built arm, and what it can say about itself."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Protocol

from ablate.engine.arm import ArmConfig, BuiltArm


class SubjectKind(Protocol):
    """A registered subject (ablate/subjects/__init__.py). ``cfg.subject`` is its own config object."""

    name: str

    def groups(self, subject_cfg: Any) -> tuple[str, ...]:
        """The disjoint adapter groups whose gradient is watched, in order (their union is ``all``)."""
        ...

    def validate(self, cfg: ArmConfig) -> None:
        """Cheap field checks, before anything is built or written (AblateInputError naming the field)."""
        ...

    def check_data(self, cfg: ArmConfig) -> None:
        """Checks that touch files or import code (a study's preflight), before anything is written."""
        ...

    def build(self, cfg: ArmConfig, like: BuiltArm | None = None) -> BuiltArm:
        """One arm built; ``like`` is an arm built before whose frozen parts and data it may share."""
        ...

    def build_pack(self, cfgs: Sequence[ArmConfig], like: BuiltArm | None = None) -> BuiltArm:
        """Several arms (equal ``packing_key``) trained side by side in one forward/backward;
        AblateInputError("training.pack", ...) when this subject's arms cannot be packed."""
        ...

    def check_pack(self, cfg: ArmConfig) -> None:
        """Before a study packs arms: AblateInputError("training.pack", ...) if this subject's arms
        cannot be packed (checked on two arms like ``cfg``)."""
        ...

    def packing_key(self, cfg: ArmConfig) -> Hashable:
        """Arms with equal keys may train packed."""
        ...

    def describe(self, subject_cfg: Any) -> dict[str, Any]:
        """What ``ablate subject check`` prints: groups (names, params, tensors), the branch point,
        the branch's size, how often the branch point runs in one forward."""
        ...
