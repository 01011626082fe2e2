"""The fix registry: the one place that knows the fix names (docs/concepts.md, "The fixes").

A fix decides how the branch output ``c`` joins the residual stream ``x``. Each fix is one
registered ``Join`` subclass; ``zero-init`` is the one fix that changes the branch's
initialisation instead of the join, so it can also be combined with a join as ``JOIN+zero-init``.
``no-branch`` is the reference arm: the branch is absent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ablate.errors import AblateInputError

NO_BRANCH = "no-branch"
ZERO_INIT = "zero-init"

_REGISTRY: dict[str, type[Join]] = {}


def register(cls: type[Join]) -> type[Join]:
    """Class decorator adding a fix to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise RuntimeError(f"fix {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


class Join(nn.Module):
    """How c joins x: ``forward(x, c) -> x'``. Subclasses set the class attributes below."""

    name: ClassVar[str]
    formula: ClassVar[str]
    source: ClassVar[str]
    takes_scale: ClassVar[bool] = False
    default_scale: ClassVar[float | None] = None
    zero_init_branch: ClassVar[bool] = False  # zero the branch's out_proj at build time
    combines_with_zero_init: ClassVar[bool] = True
    # Reason a combination with zero-init is rejected (shown to the user).
    zero_init_conflict: ClassVar[str] = ""
    # A study's default search range for the scale, (min, max, log), when the fix needs its own:
    # None = use the study's shared range.
    search_range: ClassVar[tuple[float, float, bool] | None] = None

    def __init__(self, width: int, scale: float | None) -> None:
        super().__init__()
        self.width = width
        self.scale = scale

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def gate_values(self) -> dict[str, torch.Tensor]:
        """Learnable gate scalars to log per step (0-d tensors, kept on device)."""
        return {}


@register
class NoFix(Join):
    name = "none"
    formula = "x + c"
    source = "the seed's bug"

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x + c


@register
class FixedScale(Join):
    name = "fixed-scale"
    formula = "x + s*c"
    source = "seed, solution 1"
    takes_scale = True
    default_scale = 0.1

    def __init__(self, width: int, scale: float | None) -> None:
        super().__init__(width, scale)
        # A buffer, not a float: arms packed side by side may each have their own constant.
        self.register_buffer("s", torch.tensor(float(scale)), persistent=False)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x + self.s.to(c.dtype) * c


@register
class LearnableAlpha(Join):
    name = "learnable-alpha"
    formula = "x + alpha*c, scalar alpha init s"
    source = "seed, solution 2; ReZero, SkipInit"
    takes_scale = True
    default_scale = 0.1

    def __init__(self, width: int, scale: float | None) -> None:
        super().__init__(width, scale)
        self.alpha = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x + self.alpha.to(c.dtype) * c

    def gate_values(self) -> dict[str, torch.Tensor]:
        return {"alpha": self.alpha.detach()}


@register
class ZeroInit(Join):
    name = ZERO_INIT
    formula = "x + c, out_proj weight and bias = 0"
    source = "seed, solution 3; ControlNet zero conv, adaLN-Zero"
    zero_init_branch = True

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x + c


@register
class TanhGate(Join):
    name = "tanh-gate"
    formula = "x + tanh(alpha)*c, scalar alpha init s"
    source = "Flamingo gated cross-attention"
    takes_scale = True
    default_scale = 0.0  # Flamingo's init: the branch starts closed
    search_range = (0.0, 1.0, False)  # a log range cannot hold the default 0

    def __init__(self, width: int, scale: float | None) -> None:
        super().__init__(width, scale)
        self.alpha = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.alpha).to(c.dtype) * c

    def gate_values(self) -> dict[str, torch.Tensor]:
        return {"tanh_alpha": self.alpha.detach()}


@register
class LayerScale(Join):
    name = "layerscale"
    formula = "x + diag(lambda)*c, per-channel lambda init s"
    source = "CaiT LayerScale"
    takes_scale = True
    default_scale = 1e-4

    def __init__(self, width: int, scale: float | None) -> None:
        super().__init__(width, scale)
        self.gamma = nn.Parameter(torch.full((width,), float(scale)))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x + self.gamma.to(c.dtype) * c

    def gate_values(self) -> dict[str, torch.Tensor]:
        return {"layerscale_mean": self.gamma.detach().abs().mean()}


@register
class NormMatch(Join):
    name = "norm-match"
    formula = "x + s*c*|x|/(|c|+eps)"
    source = "the AA-CLIP fork's final fix"
    takes_scale = True
    default_scale = 0.1
    combines_with_zero_init = False
    zero_init_conflict = "c is exactly 0 at init, so c/|c| is undefined"
    eps: ClassVar[float] = 1e-6

    def __init__(self, width: int, scale: float | None) -> None:
        super().__init__(width, scale)
        self.register_buffer("s", torch.tensor(float(scale)), persistent=False)  # per arm when packed

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        ratio = x.norm(dim=-1, keepdim=True) / (c.norm(dim=-1, keepdim=True) + self.eps)
        return x + self.s.to(c.dtype) * c * ratio


def fix_names(include_reference: bool = True) -> list[str]:
    """All registered fix names in registry order (plus ``no-branch`` when asked)."""
    names = list(_REGISTRY)
    return names + [NO_BRANCH] if include_reference else names


def fix_class(name: str) -> type[Join]:
    return _REGISTRY[name]


@dataclass(frozen=True)
class FixChoice:
    """A validated fix: the join class, whether the branch is zero-initialised, the scale."""

    name: str  # canonical, e.g. "fixed-scale" or "fixed-scale+zero-init"
    join: type[Join] | None  # None for no-branch
    zero_init: bool
    scale: float | None

    @property
    def has_branch(self) -> bool:
        return self.join is not None

    def build_join(self, width: int) -> Join:
        assert self.join is not None
        return self.join(width, self.scale)


def _valid_list() -> str:
    return ", ".join(fix_names()) + f" (a join may add '+{ZERO_INIT}')"


def unknown_fixes(names: Sequence[str]) -> str | None:
    """The message for every name in ``names`` that holds an unknown fix (each with the close one,
    when there is one), at once; None when every part of every name is a fix."""
    from ablate.errors import did_you_mean

    bad: list[str] = []
    for name in names:
        if name.strip() == NO_BRANCH:  # the baseline's arm, on its own only
            continue
        parts = [q.strip() for q in name.strip().split("+")]
        bad += [p for p in parts if p not in _REGISTRY and p != NO_BRANCH and p not in bad]
    if not bad:
        return None
    listed = ", ".join(f"{p!r}{did_you_mean(p, fix_names())}" for p in bad)
    return f"unknown fix{'es' * (len(bad) > 1)} {listed}; valid: {_valid_list()}"


def parse_fix(name: str, scale: float | None = None, field: str = "fix") -> FixChoice:
    """Validate a fix name (and optional scale) into a ``FixChoice``; errors name ``field``.

    ``scale=None`` takes the fix's default. A scale must be a finite number > 0 (>= 0 for a fix
    whose default is 0: tanh-gate's closed gate) and is only accepted by fixes that take one.
    """
    raw = name.strip()
    parts = [p.strip() for p in raw.split("+")]
    if raw == NO_BRANCH:
        if scale is not None:
            raise AblateInputError("scale", f"fix '{NO_BRANCH}' takes no scale")
        return FixChoice(NO_BRANCH, None, False, None)
    unknown = unknown_fixes([raw])
    if unknown is not None:
        raise AblateInputError(field, unknown)
    if len(parts) > 2:
        raise AblateInputError(field, f"unknown fix {raw!r}; valid: {_valid_list()}")
    if NO_BRANCH in parts:
        raise AblateInputError(field, f"invalid combination {raw!r}: '{NO_BRANCH}' is the baseline's arm, alone")
    if len(parts) == 2:
        joins = [p for p in parts if p != ZERO_INIT]
        if len(joins) != 1:
            raise AblateInputError(field, f"invalid combination {raw!r}: combine exactly one join with '{ZERO_INIT}'")
        join = _REGISTRY[joins[0]]
        if not join.combines_with_zero_init:
            raise AblateInputError(field, f"invalid combination {raw!r}: {join.zero_init_conflict}")
        canonical, zero_init = f"{join.name}+{ZERO_INIT}", True
    else:
        join = _REGISTRY[parts[0]]
        canonical, zero_init = join.name, join.zero_init_branch
    if scale is not None:
        if not join.takes_scale:
            raise AblateInputError("scale", f"fix {join.name!r} takes no scale")
        # 0 is valid only where it is the fix's own default (a closed tanh gate).
        floor_ok = join.default_scale == 0 and scale == 0
        if not isinstance(scale, (int, float)) or not math.isfinite(scale) or (scale <= 0 and not floor_ok):
            bound = ">= 0" if join.default_scale == 0 else "> 0"
            raise AblateInputError("scale", f"must be a finite number {bound}, got {scale!r}")
    elif join.takes_scale:
        scale = join.default_scale
    return FixChoice(canonical, join, zero_init, None if scale is None else float(scale))
