"""``json.dumps(records, indent=2)`` for a list of flat records, through the C encoder.

Why: with ``indent`` the standard library falls back to its pure-Python encoder, about a second for
10,000 trials x 60 columns, the largest cost of ``ablate query --format json`` at that size. A
record whose values are all scalars is encoded by the C encoder with separators that reproduce the
indentation; anything nested goes through ``json.dumps`` itself. ``tests/test_jsonout.py`` checks
the text is identical.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# Item separator = newline + the 4-space indent of a key inside a record inside the top-level list.
_FLAT = json.JSONEncoder(separators=(",\n    ", ": "))


def dumps_records(records: Sequence[Mapping[str, Any]]) -> str:
    """The text of ``json.dumps(list(records), indent=2)``."""
    if not records:
        return "[]"
    if any(isinstance(v, dict | list | tuple) for r in records for v in r.values()):
        return json.dumps(list(records), indent=2)
    items = ["{}" if not r else "{\n    " + _FLAT.encode(r)[1:-1] + "\n  }" for r in records]
    return "[\n  " + ",\n  ".join(items) + "\n]"
