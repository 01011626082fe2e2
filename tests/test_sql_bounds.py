"""`ablate query --sql` holds a bounded result: rows are streamed and reading stops at --sql-max-rows
and --sql-max-bytes, on SQLite and PostgreSQL, whatever the query would return."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ablate.cli import main
from ablate.store import dispose_engines, finish_run, open_storage, register_study, run_sql, start_run, write_metrics
from ablate.store.readonly_sql import row_bytes

DIALECTS = ["sqlite", "postgresql"]
STEPS = 1000  # rows of ablate_step_metrics: a 3-way cross join would return 10^9 rows
CROSS_JOIN = "SELECT * FROM ablate_step_metrics a, ablate_step_metrics b, ablate_step_metrics c"
# Peak resident memory of the whole `ablate query` process (Python, pandas, SQLAlchemy, the rows,
# the printed JSON). Without the bounds the cross join above grows the process by gigabytes.
PEAK_MB = 400


@pytest.fixture(params=DIALECTS)
def steps_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with one run of STEPS steps of one metric (step i has value i / 10)."""
    url = (
        f"sqlite:///{tmp_path / 'results.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    )
    engine = open_storage(url)
    sid = register_study(engine, "s", "s", "[study]\n", "b" * 64, [{"metric": "adapter_gain", "direction": "maximize"}])
    rid = start_run(engine, sid, "trial", 0, 0, "none", None, "cpu")
    write_metrics(engine, rid, {"loss": [i / 10 for i in range(STEPS)]})
    finish_run(engine, rid, "complete", {})
    dispose_engines()
    yield url
    dispose_engines()


# Runs the CLI and, at exit, writes the process's peak resident memory (VmHWM, in kB) to the file named
# by $HWM_FILE. Not ru_maxrss from wait4: Linux carries the parent's peak across fork and exec, so a
# child of a large pytest process would report the parent's size.
_MEASURED_CLI = """
import atexit, os, sys

def _peak():
    with open("/proc/self/status") as f, open(os.environ["HWM_FILE"], "w") as out:
        out.write(next(line.split()[1] for line in f if line.startswith("VmHWM:")))

atexit.register(_peak)
from ablate.cli import main
main()
"""


def _run_measured(args: list[str]) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, peak resident MB) of `ablate ARGS` run as its own process."""
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc (Linux)")
    with tempfile.TemporaryDirectory() as tmp:
        hwm = Path(tmp) / "hwm"
        proc = subprocess.run(
            [sys.executable, "-c", _MEASURED_CLI, *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "HWM_FILE": str(hwm)},
        )
        return proc.returncode, proc.stdout, proc.stderr, int(hwm.read_text()) / 1024


def test_a_billion_row_cross_join_is_cut_with_bounded_memory(steps_url: str) -> None:
    code, out, err, peak_mb = _run_measured(["query", "--storage", steps_url, "--sql", CROSS_JOIN, "--format", "csv"])
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: --sql: result cut: "), err
    header, *rows = list(csv.reader(io.StringIO(out)))
    assert header == ["run_id", "step", "name", "value", "flag"] * 3
    # 15 columns a row: the byte budget (64 MiB) or the row cap (100,000) ends it, whichever first
    assert 10_000 < len(rows) <= 100_000
    assert ("--sql-max-rows" in lines[0]) == (len(rows) == 100_000)
    assert f"printed the first {len(rows):,} rows" in lines[0]
    assert all(len(r) == 15 and r[2] == r[7] == r[12] == "loss" for r in rows[:1000])
    assert peak_mb < PEAK_MB, f"peak {peak_mb:.0f} MB"


def test_strict_makes_a_cut_an_error(steps_url: str) -> None:
    code, out, err, peak_mb = _run_measured(
        ["query", "--storage", steps_url, "--sql", CROSS_JOIN, "--sql-max-rows", "5000", "--strict"]
    )
    assert code == 2 and out == ""
    assert err.strip() == "error: --sql-max-rows: the result has more than 5,000 rows (--strict)"
    assert peak_mb < PEAK_MB


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sql-max-rows", "0"], "error: --sql-max-rows: must be a positive number of rows, got 0"),
        (["--sql-max-rows", "-3"], "error: --sql-max-rows: must be a positive number of rows, got -3"),
        (["--sql-max-bytes", "0"], "error: --sql-max-bytes: must be a positive number of bytes, got 0"),
        (["--sql-max-bytes", "-1"], "error: --sql-max-bytes: must be a positive number of bytes, got -1"),
    ],
)
def test_limits_must_be_positive(capsys, tmp_path: Path, args: list[str], message: str) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    open_storage(url)
    with pytest.raises(SystemExit) as info:
        main(["query", "--storage", url, "--sql", "SELECT 1", *args])
    cap = capsys.readouterr()
    assert info.value.code == 2 and cap.out == "" and cap.err.strip() == message
    dispose_engines()


def test_row_cap_counts_exactly(steps_url: str) -> None:
    engine = open_storage(steps_url, create=False)
    sql = "SELECT step, value FROM ablate_step_metrics ORDER BY step DESC"
    whole = run_sql(engine, sql, max_rows=STEPS)
    assert whole.attrs["cut"] is None and len(whole) == STEPS  # exactly the cap: nothing was cut
    head = run_sql(engine, sql, max_rows=STEPS - 1)
    cut = head.attrs["cut"]
    assert (cut.option, cut.kept) == ("--sql-max-rows", STEPS - 1)
    assert cut.reason == f"the result has more than {STEPS - 1:,} rows"
    # the query's own order and values, through the streaming (and PostgreSQL's row guard)
    assert head["step"].tolist() == list(range(STEPS - 1, 0, -1))
    assert head["value"].tolist() == pytest.approx([s / 10 for s in range(STEPS - 1, 0, -1)])
    same_names = run_sql(engine, "SELECT step AS x, value AS x FROM ablate_step_metrics ORDER BY step", max_rows=2)
    assert list(same_names.columns) == ["x", "x"] and same_names.iloc[1].tolist() == [1, 0.1]


def test_the_table_shows_a_cut_result_with_repeated_column_names(capsys, steps_url: str) -> None:
    """`SELECT a.*, b.*` names columns alike; the table prints them (it used to fail) and the note."""
    sql = "SELECT a.step, b.step FROM ablate_step_metrics a, ablate_step_metrics b"
    with pytest.raises(SystemExit) as info:
        main(["query", "--storage", steps_url, "--sql", sql, "--sql-max-rows", "3", "--wide"])
    cap = capsys.readouterr()
    assert info.value.code == 0
    lines = [line.split() for line in cap.out.splitlines() if line.strip()]
    assert ["step", "step"] in lines and ["0", "2"] in lines and ["0", "3"] not in lines
    note = "note: --sql: result cut: the result has more than 3 rows; printed the first 3 rows (--sql-max-rows)"
    assert cap.err.strip() == note


def test_byte_budget_keeps_the_rows_that_fit(steps_url: str) -> None:
    engine = open_storage(steps_url, create=False)
    sql = "SELECT step, name || '-' || step AS label FROM ablate_step_metrics ORDER BY step"
    whole = run_sql(engine, sql)
    sizes = [row_bytes(tuple(r)) for r in whole.itertuples(index=False)]
    budget = sum(sizes[:100]) + sizes[100] // 2  # the first 100 rows fit, the 101st does not
    head = run_sql(engine, sql, max_bytes=budget)
    cut = head.attrs["cut"]
    assert (cut.option, cut.kept, len(head)) == ("--sql-max-bytes", 100, 100)
    assert cut.reason == f"the first 101 rows take more than {budget:,} bytes"
    assert head["label"].tolist() == [f"loss-{s}" for s in range(100)]
    assert run_sql(engine, sql, max_bytes=sum(sizes)).attrs["cut"] is None


def _big_value(dialect: str, n: int) -> str:
    """An allowed expression whose value is a string of ``n`` (a multiple of 10,000) bytes: 10,000
    blanks, each replaced by n / 10,000 x's (fast; SQLite's printf gives NULL past its length limit,
    replace() raises "string or blob too big")."""
    if dialect == "postgresql":
        return f"replace(lpad('', 10000), ' ', lpad('x', {n // 10_000}))"
    return f"replace(printf('%10000s', ''), ' ', printf('%{n // 10_000}s', 'x'))"


def test_a_row_larger_than_the_budget_never_reaches_the_client(steps_url: str) -> None:
    """A value of 150 MB (a string bomb) after three small rows: the server (PostgreSQL) or SQLite's
    length limit stops it before it is held; the rows before it are the result, cut. (SQLite's driver
    reads a row ahead and drops it with the error, so there the result keeps 2 or 3 rows.)"""
    dialect = "postgresql" if steps_url.startswith("postgresql") else "sqlite"

    def sql(n: int) -> str:  # three small rows, then rows with a value of n bytes (no ORDER BY: a sort
        big = _big_value(dialect, n)  # would compute every row's value before the first is sent)
        return f"SELECT step, CASE WHEN step < 3 THEN 'small' ELSE {big} END AS v FROM ablate_step_metrics"

    code, out, err, peak_mb = _run_measured(
        ["query", "--storage", steps_url, "--sql", sql(150_000_000), "--format", "json"]
    )
    assert code == 0, err
    kept = 3 if dialect == "postgresql" else 2
    assert [r["v"] for r in json.loads(out)] == ["small"] * kept
    lines = err.strip().splitlines()
    if dialect == "postgresql":
        reason = "row 4 alone is larger than the 67,108,864-byte budget"
    else:
        reason = (
            "a value after the first 2 rows is longer than 33,554,432 bytes (the 67,108,864-byte budget over 2 columns)"
        )
    assert lines == [f"note: --sql: result cut: {reason}; printed the first {kept} rows (--sql-max-bytes)"]
    assert peak_mb < PEAK_MB, f"peak {peak_mb:.0f} MB"
    engine = open_storage(steps_url, create=False)
    small = run_sql(engine, sql(50_000), max_bytes=30_000)
    assert small["v"].tolist() == ["small"] * kept and small.attrs["cut"].option == "--sql-max-bytes"
    fits = run_sql(engine, sql(20_000), max_bytes=10**9)
    assert fits.attrs["cut"] is None and len(fits) == STEPS and len(fits["v"].iloc[-1]) == 20_000
