"""Fitting a table to a width, and the one number format every table uses."""

from __future__ import annotations

import math

from ablate.tablefit import Col, fit, hidden_note, table_width
from ablate.textfmt import column_decimals, fixed, fmt, fmt_ci


def test_fit_drops_the_highest_rank_rightmost_first_and_never_rank_0() -> None:
    cols = [Col("a"), Col("bbbb", rank=1), Col("c", rank=2), Col("dddd", rank=2)]
    rows = [["x" * 10, "y" * 10, "z" * 10, "w" * 10]]
    assert table_width([10] * 4) == 48
    assert fit(cols, rows, None) == [0, 1, 2, 3]
    assert fit(cols, rows, 48) == [0, 1, 2, 3]
    assert fit(cols, rows, 47) == [0, 1, 2]  # 'dddd': rank 2 and rightmost
    assert fit(cols, rows, 30) == [0, 1]
    assert fit(cols, rows, 5) == [0]  # rank 0 stays even when it does not fit
    assert hidden_note(cols, [0, 1]) == "not shown: c, dddd (--wide: every column)"
    assert hidden_note(cols, [0, 1, 2, 3]) == ""
    many = [Col(f"c{i}", rank=i) for i in range(12)]
    assert hidden_note(many, [0]) == "not shown: c1, c2, c3, c4, c5, c6, c7, c8 and 3 more (--wide: every column)"


def test_numbers_have_one_format() -> None:
    assert fmt(None) == fmt(math.nan) == fixed(math.nan, 2) == fixed(None, 2) == "-"
    assert column_decimals([0.0608, -0.0009, None, math.nan]) == 4  # 3 significant digits of the largest
    assert column_decimals([1.32, 0.69]) == 2 and column_decimals([123.4]) == 0 and column_decimals([]) == 3
    assert column_decimals([0.997, 1.0, 0.811], digits=4) == 3  # a cosine: 0.997 and 1 must differ
    assert fixed(-0.00001, 3) == "0.000" and fixed(1.0, 2) == "1.00" and fixed(math.inf, 2) == "inf"
    assert fmt_ci(0.0203, -0.0009, 0.0415, decimals=4) == "0.0203 [-0.0009, 0.0415]"
    assert fmt_ci(0.5, math.nan, 1.0, decimals=2) == "0.50"
