"""``ablate subject check``: a spec's subject described without training (and without weights)."""

from __future__ import annotations

from typing import Any

from ablate.subjects import subject_kind


def check_spec(path: str) -> dict[str, Any]:
    """The subject's own description (``SubjectKind.describe``): its groups (params, tensors, first
    names), the branch point, the branch's size and its calls per forward."""
    from ablate.spec import load_spec

    spec, _ = load_spec(path)
    return subject_kind(spec.subject_kind).describe(spec.subject_config())
