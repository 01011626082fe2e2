"""The lag-1 autocorrelation behind each run's within-seed training-ratio interval: stored per run,
shown by `ablate query --runs` and in the report's caveats when high, added to older databases."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from ablate.engine.compare import series_ratio
from ablate.stats import lag1_autocorrelation, log_ratio
from ablate.store import dispose_engines, finish_run, open_storage, query, register_study, start_run
from ablate.store.schema import AUTOCORRELATION_FIELDS
from tests.study_helpers import copy_db, run_cli


def _series(db: Path, run_id: int, name: str) -> list[float]:
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT value FROM ablate_step_metrics WHERE run_id = ? AND name = ? ORDER BY step", (run_id, name)
        ).fetchall()
    return [r[0] for r in rows]


def test_each_run_stores_the_autocorrelation_of_its_ratio_series(mini_study_db: Path, capsys) -> None:
    """From the stored per-step series: run / same-seed baseline, judged group, after warm-up."""
    code, out, err = run_cli(capsys, "query", "--storage", f"sqlite:///{mini_study_db}", "--runs", "--format", "json")
    assert code == 0, err
    runs = json.loads(out)
    base = {r["seed"]: r for r in runs if r["role"] == "baseline"}
    checked = 0
    for r in runs:
        if r["role"] == "stage1":  # AA-CLIP's text adapter of the seed: no Stage 2 series to compare
            continue
        if r["status"] != "complete" or r["role"] == "baseline":
            assert r["role"] != "baseline" or r["train_grad_ratio_ac1"] is None  # its own reference: no series
            continue
        for column, prefix in (("train_grad_ratio", "grad_norm"), ("train_update_ratio", "upd")):
            name = f"{prefix}_{r['judged_group']}"
            mine = _series(mini_study_db, r["run_id"], name)
            ref = _series(mini_study_db, base[r["seed"]]["run_id"], name)
            est, lo, hi, ac1 = series_ratio(mine, ref)
            assert r[column] == pytest.approx(est, rel=1e-9)
            if ac1 is None or math.isnan(ac1):  # a frozen group: every ratio floored alike
                assert r[f"{column}_ac1"] is None
                continue
            assert r[f"{column}_ac1"] == pytest.approx(ac1, rel=1e-9)
            assert (r[f"{column}_lo"], r[f"{column}_hi"]) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
            # the definition, by hand: log ratios of the 6 steps (warm-up int(0.6) = 0 steps)
            logs = [log_ratio(a / b) for a, b in zip(mine, ref)]
            assert ac1 == pytest.approx(lag1_autocorrelation(logs), rel=1e-12)
            checked += 1
    assert checked >= 8


def test_query_runs_shows_it(mini_study_db: Path, capsys) -> None:
    code, out, err = run_cli(capsys, "query", "--storage", f"sqlite:///{mini_study_db}", "--runs", "--wide")
    assert code == 0, err
    header = next(line for line in out.splitlines() if "R train" in line)
    assert "R ac1" in header and "lag-1 autocorrelation of R train's per-step ratios" in out


def _set_ac1(db: Path, values: dict[tuple[int, int], float]) -> None:
    """Set train_grad_ratio_ac1 of trial runs (trial, seed) to the values; every other run's to 0.1."""
    with sqlite3.connect(db) as con:
        con.execute("UPDATE ablate_runs SET train_grad_ratio_ac1 = 0.1, train_update_ratio_ac1 = 0.1")
        for (trial, seed), v in values.items():
            where = "role = 'trial' AND trial_number = ? AND seed = ?"
            con.execute(f"UPDATE ablate_runs SET train_grad_ratio_ac1 = ? WHERE {where}", (v, trial, seed))


def _caveats(capsys, db: Path, out: Path) -> str:
    code, _, err = run_cli(capsys, "report", "mini", "--out", str(out), "--storage", f"sqlite:///{db}")
    assert code == 0, err
    md = (out / "report.md").read_text()
    return md[md.index("## 7.") : md.index("## 8.")]


def test_report_caveats_name_high_autocorrelation(mini_study_db: Path, tmp_path: Path, capsys) -> None:
    db = copy_db(mini_study_db, tmp_path / "results.db")
    _set_ac1(db, {})
    assert "Autocorrelated steps" not in _caveats(capsys, db, tmp_path / "low")
    with sqlite3.connect(db) as con:
        fix, scale = con.execute("SELECT fix, scale FROM ablate_runs WHERE trial_number = 2 AND seed = 1").fetchone()
    _set_ac1(db, {(1, 0): 0.85, (2, 1): 0.9})
    caveats = _caveats(capsys, db, tmp_path / "high")
    assert "Autocorrelated steps: in 2 of " in caveats and "(up to 0.9, " in caveats and "seed 1)" in caveats
    assert fix in caveats and "(trial 2)" in caveats
    assert "intervals over seeds shown here already carry that noise" in caveats  # the mini study has 2 seeds
    assert "is not checked" not in caveats
    _set_ac1(db, {(2, 1): 0.97})
    assert "Above 0.95 the within-seed interval's coverage is not checked" in _caveats(capsys, db, tmp_path / "top")


@pytest.fixture(params=["sqlite", "postgresql"])
def old_url(request: pytest.FixtureRequest, tmp_path: Path):
    """A database whose ablate_runs predates the autocorrelation columns (one complete run)."""
    url = f"sqlite:///{tmp_path / 'old.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    engine = open_storage(url)
    objectives = [{"metric": "adapter_gain", "direction": "maximize"}]
    sid = register_study(engine, "old", "old", "[study]\n", "c" * 64, objectives)
    run_id = start_run(engine, sid, "trial", 0, 0, "zero-init", None, "cpu")
    finish_run(engine, run_id, "complete", {"train_grad_ratio": 0.5, "train_grad_ratio_lo": 0.4})
    with engine.begin() as conn:
        for column in AUTOCORRELATION_FIELDS:
            conn.execute(text(f"ALTER TABLE ablate_runs DROP COLUMN {column}"))
    dispose_engines()
    yield url
    dispose_engines()


def _columns(url: str) -> set[str]:
    from sqlalchemy import inspect

    engine = open_storage(url, create=False)
    return {c["name"] for c in inspect(engine).get_columns("ablate_runs")}


def test_an_older_database_reads_and_gains_the_columns(old_url: str, capsys) -> None:
    assert not set(AUTOCORRELATION_FIELDS) & _columns(old_url)
    code, out, err = run_cli(capsys, "query", "--storage", old_url, "--runs", "--format", "json")  # read-only
    assert code == 0, err
    (run,) = json.loads(out)
    assert run["train_grad_ratio"] == 0.5 and run["train_grad_ratio_ac1"] is None
    assert not set(AUTOCORRELATION_FIELDS) & _columns(old_url)  # a reader adds nothing
    dispose_engines()
    engine = open_storage(old_url)  # a writer brings the table up to date
    assert set(AUTOCORRELATION_FIELDS) <= _columns(old_url)
    frame = query.runs_frame(engine)
    assert frame["train_grad_ratio"].tolist() == [0.5] and frame["train_grad_ratio_ac1"].isna().all()
