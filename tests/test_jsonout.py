"""dumps_records writes exactly the text json.dumps(..., indent=2) writes."""

from __future__ import annotations

import json

import pytest

from ablate.jsonout import dumps_records

CASES = [
    [],
    [{}],
    [{"a": 1}],
    [{"study": "quick", "n": 3, "x": 0.1, "big": 1e300, "tiny": -5e-324, "none": None, "ok": True, "no": False}],
    [{"text": 'quote " backslash \\ newline \n tab \t', "unicode": "dilution ≥ 0 — α", "ctl": "\x01"}],
    [{"a": "inf", "b": "-inf"}, {"a": 2, "b": None}, {}],
    [{"nested": {"x": [1, 2.5, None]}}, {"list": []}],  # nested values: the standard encoder writes them
    [{"nan": float("nan"), "inf": float("inf")}],  # what json.dumps itself writes (not strict JSON)
]


@pytest.mark.parametrize("records", CASES)
def test_same_text_as_json_dumps(records: list[dict]) -> None:
    assert dumps_records(records) == json.dumps(records, indent=2)


def test_query_records_of_a_study(mini_study_db) -> None:
    from ablate.store import open_storage, query

    engine = open_storage(f"sqlite:///{mini_study_db}", create=False)
    for frame in (query.trials_frame(engine), query.group_by_fix(engine), query.runs_frame(engine)):
        records = query.json_records(frame)
        assert dumps_records(records) == json.dumps(records, indent=2)
        assert json.loads(dumps_records(records)) == records
