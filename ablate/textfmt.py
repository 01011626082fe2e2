"""How numbers look in terminal tables (one place, so every table reads the same)."""

from __future__ import annotations

import math
from typing import Any


def fmt(v: Any, digits: int = 4) -> str:
    """Short significant-digit form; None as '-', NaN as 'nan'."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


def fmt_ci(v: Any, lo: Any, hi: Any, digits: int = 3, decimals: int | None = None) -> str:
    """'value [lo, hi]' (significant digits, or fixed ``decimals``); the value alone without an interval."""

    def ok(x: Any) -> bool:
        return isinstance(x, int | float) and math.isfinite(float(x))

    def one(x: Any, d: int) -> str:
        if decimals is None or not ok(x):
            return fmt(x, d)
        return f"{float(x):.{decimals}f}"

    if not ok(lo) or not ok(hi):
        return one(v, digits)
    return f"{one(v, digits)} [{one(lo, 2)}, {one(hi, 2)}]"
