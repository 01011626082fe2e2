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
