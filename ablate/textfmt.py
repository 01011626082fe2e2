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


def fmt_ci(v: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    """'value [lo, hi]'; just the value when there is no interval."""

    def ok(x: Any) -> bool:
        return isinstance(x, int | float) and math.isfinite(float(x))

    if not ok(lo) or not ok(hi):
        return fmt(v, digits)
    return f"{fmt(v, digits)} [{fmt(lo, 2)}, {fmt(hi, 2)}]"
