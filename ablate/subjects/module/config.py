"""A user's own model as a subject: the config a spec's ``[subject]`` section becomes (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def frozen_value(v: Any) -> Any:
    """A TOML value made hashable (lists -> tuples, tables -> sorted item tuples), so configs can be
    compared and used as keys; :func:`thawed_value` turns it back for the factory's keyword arguments."""
    if isinstance(v, dict):
        return ("__table__", tuple(sorted((k, frozen_value(x)) for k, x in v.items())))
    if isinstance(v, list | tuple):
        return tuple(frozen_value(x) for x in v)
    return v


def thawed_value(v: Any) -> Any:
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "__table__":
        return {k: thawed_value(x) for k, x in v[1]}
    if isinstance(v, tuple):
        return [thawed_value(x) for x in v]
    return v


@dataclass(frozen=True)
class ModuleSubjectConfig:
    """Where the user's model, data and loss live, which parameters are watched, where the branch joins.

    ``factory``, ``batches``, ``loss`` and ``branch_build`` are ``"module:attr"`` references, imported
    with ``path`` prepended to ``sys.path``. ``groups`` keeps the spec's order: ((name, patterns), ...).
    """

    factory: str
    batches: str
    loss: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    branch_at: str
    branch_build: str
    path: str = "."
    batch_size: int = 8
    args: tuple[tuple[str, Any], ...] = ()
    branch_output: int | None = None
    branch_zero: str | None = None
    backbone_seed: int = 0
    kind: str = "module"

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.groups)

    def factory_kwargs(self) -> dict[str, Any]:
        return {k: thawed_value(v) for k, v in self.args}
