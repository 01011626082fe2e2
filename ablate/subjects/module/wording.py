"""How a report describes a study of a user's own model (its spec's ``[subject]``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SECTION_DEFAULTS: dict[str, dict[str, Any]] = {"subject": {"batch_size": 8, "path": None, "backbone_seed": 0}}
GROUP_LABELS: dict[str, str] = {"all": "every watched group"}


def question(spec: dict[str, dict[str, Any]]) -> str:
    sub = spec["subject"]
    branch = sub.get("branch", {})
    groups = ", ".join(f"`{g}`" for g in sub.get("groups", {}))
    return (
        f"A new branch (`{branch.get('build', '?')}`) joins the output of `{branch.get('at', '?')}` in the model "
        f"`{sub.get('factory', '?')}`, whose other weights are frozen while the groups {groups} train."
    )


def setting_rows(spec: dict[str, dict[str, Any]], val: Callable[[str, str], str]) -> list[tuple[str, str]]:
    sub = spec["subject"]
    branch = sub.get("branch", {})
    args = ", ".join(f"{k}={v}" for k, v in (sub.get("args") or {}).items())
    groups = "; ".join(f"{g}: {', '.join(p)}" for g, p in (sub.get("groups") or {}).items())
    return [
        ("model", f"`{sub.get('factory', '?')}`" + (f"({args})" if args else "")),
        ("groups", groups),
        ("branch", f"`{branch.get('build', '?')}` joins the output of `{branch.get('at', '?')}`"),
        ("data", f"`{sub.get('batches', '?')}`, batch {val('subject', 'batch_size')}; loss `{sub.get('loss', '?')}`"),
    ]


def caveats(spec: dict[str, dict[str, Any]]) -> list[str]:
    return []


def late_caveats(spec: dict[str, dict[str, Any]]) -> list[str]:
    return []
