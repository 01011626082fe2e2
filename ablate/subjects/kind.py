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

    def build(self, cfg: ArmConfig, like: Any = None, stage1: Any = None) -> BuiltArm:
        """One arm built; ``like`` is an arm (or data) built before whose frozen parts and data it may
        share; ``stage1`` is its seed's Stage 1 state (``run_stage1``), None when there is none."""
        ...

    def build_pack(self, cfgs: Sequence[ArmConfig], like: Any = None, stage1: Sequence[Any] | None = None) -> BuiltArm:
        """Several arms (equal ``packing_key``) trained side by side in one forward/backward, each with
        its seed's Stage 1 state; AblateInputError("training.pack", ...) when they cannot be packed."""
        ...

    def trains_stage1(self, cfg: ArmConfig) -> bool:
        """Whether a study trains this subject's Stage 1 once per seed before the seed's arms (AA-CLIP:
        the text adapter), stored as the seed's ``stage1`` run and handed to every arm of the seed."""
        ...

    def run_stage1(self, cfg: ArmConfig, like: Any, on_start: Any, on_step: Any) -> Any:
        """Train the seed's Stage 1: ``(result, data)``; ``result`` has ``state``, ``metrics`` (per step),
        ``steps`` and ``wall_s``; ``data`` is what later arms may share (their ``like``).
        ``on_start(steps)`` is called once the length is known."""
        ...

    def stage1_bytes(self, state: Any) -> bytes:
        """A Stage 1 state as bytes (what the database keeps)."""
        ...

    def stage1_state(self, cfg: ArmConfig, data: bytes) -> Any:
        """A Stage 1 state back from its bytes, checked against ``cfg``."""
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
