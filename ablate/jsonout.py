"""JSON output, the one copy: values made strict-JSON-safe (:func:`json_value`), and
``json.dumps(records, indent=2)`` for a list of flat records through the C encoder (:func:`dumps_records`).

Why the latter: with ``indent`` the standard library falls back to its pure-Python encoder, about a second for
10,000 trials x 60 columns, the largest cost of ``ablate query --format json`` at that size. A
record whose values are all scalars is encoded by the C encoder with separators that reproduce the
indentation; anything nested goes through ``json.dumps`` itself. ``tests/test_jsonout.py`` checks
the text is identical.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

Infinities = Literal["null", "text"]


def json_float(f: float, infinities: Infinities = "null") -> float | str | None:
    """A float as strict JSON has it: NaN is null; an infinity is null, or the text "inf"/"-inf"
    (``infinities="text"``, the query's choice: a diverged run stays visible)."""
    if f != f:  # NaN
        return None
    if -math.inf < f < math.inf:
        return f
    return ("inf" if f > 0 else "-inf") if infinities == "text" else None


def json_value(v: Any, infinities: Infinities = "null") -> Any:
    """``v`` with everything strict JSON lacks converted, recursively: NaN (and pandas' NA/NaT) to
    null, infinities as :func:`json_float` says, numpy scalars and arrays to Python numbers and lists,
    datetimes to ISO text, dataclasses to dicts, sets to sorted lists, dict keys to text.

    numpy and pandas are looked up only when already imported (``query --studies`` imports neither).
    """
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return json_float(v, infinities)
    if isinstance(v, dict):
        return {str(k): json_value(x, infinities) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_value(x, infinities) for x in v]
    if isinstance(v, set | frozenset):
        return sorted((json_value(x, infinities) for x in v), key=str)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: json_value(getattr(v, f.name), infinities) for f in dataclasses.fields(v)}
    pd = sys.modules.get("pandas")
    if pd is not None and (v is pd.NA or v is pd.NaT):
        return None
    if isinstance(v, datetime):  # pandas' Timestamp too
        return v.isoformat()
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(v, np.floating):
            return json_float(float(v), infinities)
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.ndarray):
            return [json_value(x, infinities) for x in v.tolist()]
    return v


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
