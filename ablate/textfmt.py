"""How numbers look in terminal tables (one place, so every table reads the same).

One rule everywhere (terminal tables, the report's Markdown and HTML): a missing value (None, NaN)
is ``-``; a column of numbers shares one number of decimals, the one that gives its largest magnitude
three significant digits, so values line up and a reader compares them digit by digit; a lone
number in a sentence gets three significant digits (:func:`fmt`, :func:`number`: fixed point, trailing
zeros dropped, no exponent); a parameter such as a fix's scale keeps its significant digits
(:func:`scale_text`). Values from a spec are written as the spec writes them (:func:`spec_value`:
``true``, not Python's ``True``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

MISSING = "-"


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(float(x))


def fmt(v: Any, digits: int = 4) -> str:
    """A lone number with ``digits`` significant digits in fixed point, trailing zeros dropped
    ('0.0863', '11.2', '0.000001', never '1e-06'); None and NaN as '-'. Only magnitudes below 1e-6 or
    from 1e15 keep an exponent (fixed point would print them as 0 or as a long row of digits)."""
    if v is None:
        return MISSING
    if isinstance(v, float):
        if math.isnan(v):
            return MISSING
        if not math.isfinite(v):
            return "inf" if v > 0 else "-inf"
        if v == 0:
            return "0"
        if not 1e-6 <= abs(v) < 1e15:
            return f"{v:.{digits}g}"
        text = f"{v:.{column_decimals([v], digits)}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return "0" if float(text) == 0 else text
    return str(v)


def column_decimals(values: Iterable[Any], digits: int = 3) -> int:
    """Decimals that give the column's largest finite non-zero magnitude ``digits`` significant
    digits (0-6); the default of 3 everywhere, 4 for a cosine (0.997 and 1 differ in the 4th)."""
    mags = [abs(float(v)) for v in values if _finite(v) and float(v) != 0]
    if not mags:
        return digits
    return int(min(6, max(0, digits - 1 - math.floor(math.log10(max(mags))))))


def fixed(v: Any, decimals: int) -> str:
    """``v`` with ``decimals`` decimals; '-' when missing, 'inf'/'-inf' as such, '-0.000' as '0.000'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    if not _finite(v):
        return str(v) if not isinstance(v, float) else ("inf" if v > 0 else "-inf")
    text = f"{float(v):.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fmt_ci(v: Any, lo: Any, hi: Any, digits: int = 3, decimals: int | None = None) -> str:
    """'value [lo, hi]' (significant digits, or fixed ``decimals``); the value alone without an interval."""

    def one(x: Any, d: int) -> str:
        if decimals is None or not _finite(x):
            return fmt(x, d)
        return fixed(x, decimals)

    if not _finite(lo) or not _finite(hi):
        return one(v, digits)
    return f"{one(v, digits)} [{one(lo, 2)}, {one(hi, 2)}]"


def number(v: Any, digits: int = 3) -> str:
    """A lone number in a sentence: :func:`fmt` with three significant digits; integers as they are."""
    return fmt(v, digits)


def interval(v: Any, lo: Any, hi: Any, decimals: int | None = None) -> str:
    """'v [lo, hi]' sharing one number of decimals (``decimals``, else those of the three numbers as a
    column); the value alone without an interval."""
    d = column_decimals([v, lo, hi]) if decimals is None else decimals
    return fmt_ci(v, lo, hi, decimals=d)


def scale_text(v: Any) -> str:
    """A fix's scale (a parameter, not a measurement): three significant digits ('0.0001', '0.1'), '-'
    when the fix has none."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    return fmt(float(v), 3)


def spec_value(v: Any) -> str:
    """A spec value as TOML writes it: true/false, 'none' for an unset key, lists joined by commas."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return ", ".join(spec_value(x) for x in v)
    return str(v)
