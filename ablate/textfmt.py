"""How numbers look in terminal tables (one place, so every table reads the same).

One rule everywhere: a missing value (None, NaN) is ``-``; a column of numbers shares one number of
decimals, the one that gives its largest magnitude three significant digits, so values line up and
a reader compares them digit by digit; a lone number (a key-value table's cell) gets significant
digits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

MISSING = "-"


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(float(x))


def fmt(v: Any, digits: int = 4) -> str:
    """Short significant-digit form; None and NaN as '-'."""
    if v is None:
        return MISSING
    if isinstance(v, float):
        return MISSING if math.isnan(v) else f"{v:.{digits}g}"
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
