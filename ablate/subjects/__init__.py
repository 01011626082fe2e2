"""Subjects: the models ablate studies, one package each, found through this registry.

A subject turns an arm's config into a built arm the engine can probe and train (``SubjectKind``,
ablate/subjects/kind.py). Entries are lazy ``"module:attr"`` strings, so naming a subject imports
nothing until it is built: read commands never import torch. Other packages may register subjects
under the ``ablate.subjects`` entry-point group (name = ``"module:attr"`` of a ``SubjectKind``).
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Any

from ablate.errors import AblateInputError

if TYPE_CHECKING:
    from ablate.subjects.kind import SubjectKind

ENTRY_POINT_GROUP = "ablate.subjects"

# name -> "module:attr" of its SubjectKind
SUBJECTS: dict[str, str] = {
    "aaclip": "ablate.subjects.aaclip.subject:SUBJECT",  # AA-CLIP Stage 2 (a spec's [model] section)
    "module": "ablate.subjects.module.subject:SUBJECT",  # any nn.Module named in a spec's [subject]
}


def register_subject(name: str, target: str, wording: str | None = None) -> None:
    """Register a subject under ``name``; ``target`` is the ``"module:attr"`` of its ``SubjectKind``,
    ``wording`` the module a report takes its words from (default: a user model's)."""
    if name in SUBJECTS and SUBJECTS[name] != target:
        raise ValueError(f"subject {name!r} is already registered as {SUBJECTS[name]}")
    if ":" not in target:
        raise ValueError(f"subject target {target!r}: expected 'module:attr'")
    SUBJECTS[name] = target
    if wording is not None:
        WORDING[name] = wording
    subject_kind.cache_clear()


# name -> the module that says how a report describes the subject (no torch: read commands import it)
WORDING: dict[str, str] = {
    "aaclip": "ablate.subjects.aaclip.wording",
    "module": "ablate.subjects.module.wording",
}
GENERIC_WORDING = "ablate.subjects.module.wording"


def subject_wording(name: str) -> Any:
    """The report wording of subject ``name`` (a subject registered without one reads as a user model)."""
    return importlib.import_module(WORDING.get(name, GENERIC_WORDING))


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def subject_names() -> list[str]:
    return list(dict.fromkeys([*SUBJECTS, *_entry_points()]))


@cache
def subject_kind(name: str) -> SubjectKind:
    """The registered subject ``name`` (imported on first use)."""
    target = SUBJECTS.get(name) or _entry_points().get(name)
    if target is None:
        raise AblateInputError("subject", f"unknown subject {name!r}; registered: {', '.join(subject_names())}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
