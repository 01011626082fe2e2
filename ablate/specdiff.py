"""Which keys of a study spec differ between two spec texts: the one copy behind the refusal of a
changed spec under a taken study name and ``ablate compare``'s list of what two studies changed.

Plain Python over TOML text (the stored ``ablate_studies.spec_text``); no pydantic, so a read
command compares the specs without loading the spec model. A key written in one spec and left to
its default in the other is a difference too: the texts say different things.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ABSENT = "(not set)"  # a key one spec leaves to its default


@dataclass(frozen=True)
class KeyChange:
    key: str  # dotted: training.steps
    a: Any  # the first spec's value, or ABSENT
    b: Any  # the second's

    def text(self) -> str:
        return f"{self.key} {show(self.a)} -> {show(self.b)}"


def show(value: Any) -> str:
    """A spec value as TOML writes it, near enough: strings quoted, lists bracketed."""
    if value is ABSENT:
        return ABSENT
    return json.dumps(value, default=str, ensure_ascii=False)


def flat_keys(text: str) -> dict[str, Any]:
    """The spec's keys, dotted (``[training] steps = 6`` -> ``training.steps``); a table in a list is
    a value. Unreadable TOML gives no keys (the stored text was checked when its study began)."""
    try:
        doc = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError:
        return {}
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                walk(dotted + ".", value)
            else:
                out[dotted] = value

    walk("", doc)
    return out


def spec_changes(a_text: str, b_text: str) -> list[KeyChange]:
    """Every key whose value differs between the two specs, in the first spec's order, then the keys
    only the second has."""
    a, b = flat_keys(a_text), flat_keys(b_text)
    keys = [*a, *(k for k in b if k not in a)]
    return [KeyChange(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in keys if a.get(k, ABSENT) != b.get(k, ABSENT)]


def changes_text(changes: list[KeyChange], limit: int = 6) -> str:
    """The changes in one line (the first ``limit``, then how many more)."""
    if not changes:
        return "no key differs, the texts only in comments or layout"
    shown = "; ".join(c.text() for c in changes[:limit])
    more = len(changes) - limit
    return shown + (f"; and {more} more key{'s' * (more != 1)}" if more > 0 else "")
