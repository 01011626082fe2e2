"""The one number format (ablate/textfmt.py) the tables, the report and the figures share."""

from __future__ import annotations

import math

import pytest

from ablate.textfmt import column_decimals, fixed, fmt, interval, number, scale_text, spec_value


@pytest.mark.parametrize(
    "value, text",
    [
        (0.0863, "0.0863"),
        (11.234, "11.2"),
        (1e-6, "0.000001"),  # the report once printed '1e-06'
        (-2.633e-05, "-0.000026"),  # and '-2.633e-05'
        (0.1, "0.1"),
        (0.0, "0"),
        (-0.0, "0"),
        (123456.7, "123457"),
        (3, "3"),
        (math.nan, "-"),
        (None, "-"),
        (math.inf, "inf"),
    ],
)
def test_a_lone_number_has_three_significant_digits_and_no_exponent(value, text):
    assert number(value) == text


def test_a_column_shares_the_decimals_of_its_largest_value():
    values = [0.074, 0.0, 0.114, -0.001]
    d = column_decimals(values)
    assert d == 3 and [fixed(v, d) for v in values] == ["0.074", "0.000", "0.114", "-0.001"]
    assert interval(0.074, 0.034, 0.114) == "0.074 [0.034, 0.114]"
    assert interval(1e-6, 1e-6, 1e-6) == "0.000001 [0.000001, 0.000001]"
    assert interval(0.5, math.nan, math.nan) == "0.500"  # no interval: the value alone
    assert fmt(0.12345, 4) == "0.1235"


def test_scales_and_spec_values():
    assert [scale_text(v) for v in (0.0001, 0.1, 0.0, 0.00123456, math.nan, None)] == [
        "0.0001", "0.1", "0", "0.00123", "-", "-",
    ]  # fmt: skip
    assert [spec_value(v) for v in (True, False, None, [0, 1, 2], "tiny", 0.1)] == [
        "true", "false", "none", "0, 1, 2", "tiny", "0.1",
    ]  # fmt: skip
