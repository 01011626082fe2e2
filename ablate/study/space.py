"""The conditional search space: the fix type, then a scale only for fixes that take one."""

from __future__ import annotations

from typing import Any

import optuna

from ablate.engine.fixes import parse_fix
from ablate.spec import StudySpec

FIX_PARAM = "fix"


def scale_param(fix: str) -> str:
    # One parameter per fix keeps each scale's distribution fixed (Optuna's conditional-space habit).
    return f"scale[{fix}]"


def suggest_arm(trial: optuna.Trial, spec: StudySpec) -> tuple[str, float | None]:
    fix = trial.suggest_categorical(FIX_PARAM, spec.search.fixes)
    if parse_fix(fix).scale is None:
        return fix, None
    rng = spec.search.range_for(fix)
    return fix, trial.suggest_float(scale_param(fix), rng.min, rng.max, log=rng.log)


def default_arm_params(fix: str) -> dict[str, Any]:
    """Params that make a trial run ``fix`` at its registry default scale."""
    choice = parse_fix(fix)
    params: dict[str, Any] = {FIX_PARAM: fix}
    if choice.scale is not None:
        params[scale_param(fix)] = choice.scale
    return params


def arm_of(params: dict[str, Any]) -> tuple[str, float | None]:
    fix = params[FIX_PARAM]
    return fix, params.get(scale_param(fix))
