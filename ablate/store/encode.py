"""The one place that turns floats into storable SQL values and back (docs/results-database.md, "Non-finite values").

Why: SQLite stores NaN as NULL (silently losing the difference between "missing" and "diverged"),
PostgreSQL accepts NaN/inf but JSON does not, and a training run that diverged is exactly the result a
researcher needs to see. So every float goes through this module, and the encoding is the same on
every backend:

* A finite number is stored as itself in its Float column; its flag is NULL.
* A non-finite number is stored as NULL in its Float column, and a flag records which one:
  ``"nan"``, ``"inf"`` or ``"-inf"`` (these are exactly the strings ``float()`` parses back).
* NULL with no flag means "not measured" and decodes to NaN.

Where the flag lives:

* ``ablate_step_metrics`` has a ``flag`` column (String(4)) beside ``value``.
* ``ablate_runs`` and ``ablate_probe_points`` have many Float columns, so each row carries one Text
  column ``nonfinite`` holding a JSON object ``{"column": "nan" | "inf" | "-inf"}`` for its non-finite
  columns only; it is NULL when every value is finite (the common case).
* Float lists (a probe's ``per_batch_ratios``) are stored as a JSON array in a Text column in which a
  non-finite element is written as the string ``"nan"``, ``"inf"`` or ``"-inf"``; finite elements are
  plain JSON numbers. Strict JSON, so any reader (``json.loads``, PostgreSQL ``::json``) can parse it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

FLAGS = ("nan", "inf", "-inf")
NAN = float("nan")


def encode_float(x: Any) -> tuple[float | None, str | None]:
    """Return ``(value, flag)`` for a column pair: ``(x, None)`` if finite, ``(None, flag)`` if not.

    ``None`` stays ``(None, None)`` (not measured). Anything ``float()`` accepts (numpy or 0-d torch
    scalars, ints, bools) is converted, so callers need not sanitise their numbers first.
    """
    if x is None:
        return None, None
    v = float(x)
    if math.isfinite(v):
        return v, None
    if math.isnan(v):
        return None, "nan"
    return None, ("inf" if v > 0 else "-inf")


def decode_float(value: float | None, flag: str | None) -> float:
    """Inverse of :func:`encode_float`; NULL without a flag (not measured) decodes to NaN."""
    if flag is not None:
        if flag not in FLAGS:
            raise ValueError(f"unknown non-finite flag {flag!r} (expected one of {', '.join(FLAGS)})")
        return float(flag)
    if value is None:
        return NAN
    return float(value)


def encode_fields(values: Mapping[str, Any], fields: Iterable[str]) -> tuple[dict[str, float | None], str | None]:
    """Encode the float ``fields`` of ``values`` for a row with a ``nonfinite`` JSON column.

    Returns ``(columns, nonfinite_json)``: ``columns`` maps each field to its storable value (missing
    keys become None); ``nonfinite_json`` is the JSON object of flags, or None when all are finite.
    """
    columns: dict[str, float | None] = {}
    flags: dict[str, str] = {}
    for name in fields:
        v, flag = encode_float(values.get(name))
        columns[name] = v
        if flag is not None:
            flags[name] = flag
    return columns, (json.dumps(flags, sort_keys=True) if flags else None)


def decode_fields(row: Mapping[str, Any], fields: Iterable[str], nonfinite: str | None) -> dict[str, float]:
    """Decode the float ``fields`` of a stored row, given its ``nonfinite`` JSON (or None)."""
    flags: dict[str, str] = json.loads(nonfinite) if nonfinite else {}
    return {name: decode_float(row.get(name), flags.get(name)) for name in fields}


def encode_float_list(values: Sequence[Any] | None) -> str | None:
    """JSON text for a float list with non-finite elements written as flag strings."""
    if values is None:
        return None
    out: list[float | str | None] = []
    for x in values:
        v, flag = encode_float(x)
        out.append(flag if flag is not None else v)
    return json.dumps(out)


def decode_float_list(text: str | None) -> list[float]:
    """Inverse of :func:`encode_float_list`; NULL gives an empty list."""
    if not text:
        return []
    out = []
    for x in json.loads(text):
        if isinstance(x, str):
            out.append(decode_float(None, x))
        elif x is None:
            out.append(NAN)
        else:
            out.append(float(x))
    return out


def encode_float_lists(values: Mapping[str, Sequence[Any]] | Sequence[Any] | None) -> str | None:
    """JSON text for ``{name: [floats]}`` (a probe's per-batch ratios per group), or a bare list."""
    if values is None or not isinstance(values, Mapping):
        return encode_float_list(values)
    return json.dumps({k: json.loads(encode_float_list(v) or "[]") for k, v in values.items()})


def decode_float_lists(text: str | None) -> dict[str, list[float]]:
    """Inverse of :func:`encode_float_lists`; a bare list decodes as ``{"": [...]}``, NULL as {}."""
    if not text:
        return {}
    raw = json.loads(text)
    if isinstance(raw, list):
        return {"": decode_float_list(text)}
    return {k: decode_float_list(json.dumps(v)) for k, v in raw.items()}


def utcnow() -> datetime:
    """The timestamp every ablate_* column stores: naive UTC, the same on every backend."""
    return datetime.now(timezone.utc).replace(tzinfo=None)
