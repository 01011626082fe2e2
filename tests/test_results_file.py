"""A self-contained results file: after `ablate study run` the file alone holds the study (its
write-ahead log checkpointed), and `ablate db export` writes one SQLite file, from SQLite (SQLite's
backup API) and from PostgreSQL (the chosen studies' rows), that every read command, Optuna and
`ablate report` accept, holding every value of the source."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import optuna
import pytest
from sqlalchemy import create_engine, inspect

from ablate.store.export import OPTUNA_VERSION_TABLES
from tests.study_helpers import MINI, run_cli, sqlite_url, table_rows

TWO_TRIALS = MINI.replace("trials = 4", "trials = 2")


def _tables(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        return sorted(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _json(capsys, *args: str):
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    return json.loads(out)


def test_the_file_alone_holds_the_study_once_study_run_returns(cli_study, tmp_path, capsys):
    folder, _, code, _, err = cli_study
    assert code == 0, err
    db = folder / "results.db"
    wal = db.with_name("results.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # checkpointed: nothing left in the log
    alone = tmp_path / "copy.db"
    shutil.copyfile(db, alone)  # how people share a results file: that one file, nothing beside it
    studies = _json(capsys, "query", "--studies", "--format", "json", "--storage", sqlite_url(db))
    copied = _json(capsys, "query", "--studies", "--format", "json", "--storage", sqlite_url(alone))
    assert studies == copied and copied[0]["n_trials"] == 2 and copied[0]["n_runs"] == 10
    # and Optuna's tables too
    theirs = optuna.load_study(study_name="mini", storage=sqlite_url(alone))
    assert len([t for t in theirs.trials if t.state.name == "COMPLETE"]) == 2


def _same_tables(source: str, export: str, skip: tuple[str, ...] = OPTUNA_VERSION_TABLES) -> None:
    """Every table of ``source`` is in ``export`` with the same rows, value by value."""
    tables = [t for t in _tables(source) if t not in skip]
    assert "ablate_step_metrics" in tables and "trial_values" in tables
    for table in tables:
        assert table_rows(export, table) == table_rows(source, table), table


def test_db_export_from_sqlite_is_the_whole_file_and_reads_back(cli_study, tmp_path, capsys):
    source = cli_study[1]
    out = tmp_path / "shared.db"
    doc = _json(capsys, "db", "export", str(out), "--storage", source, "--json")
    assert doc["method"] == "backup" and doc["studies"] == ["mini"]
    _same_tables(source, sqlite_url(out), skip=())
    # the chosen studies, row by row: every value again, Optuna's tables included
    chosen = tmp_path / "mini.db"
    doc = _json(capsys, "db", "export", str(chosen), "--study", "mini", "--storage", source, "--json")
    assert doc["method"] == "rows" and doc["rows"]["ablate_step_metrics"] > 0
    _same_tables(source, sqlite_url(chosen))
    for file in (out, chosen):
        assert not Path(f"{file}-wal").exists()  # one file to share
        fixes = _json(capsys, "query", "--group-by", "fix", "--format", "json", "--storage", sqlite_url(file))
        assert fixes == _json(capsys, "query", "--group-by", "fix", "--format", "json", "--storage", source)
    # never over an existing file, and a study it lacks is named with the close one
    code, out_text, err = run_cli(capsys, "db", "export", str(chosen), "--storage", source)
    assert code == 2 and err.startswith("error: OUT.db: ") and "exists" in err and out_text == ""
    code, _, err = run_cli(capsys, "db", "export", str(tmp_path / "x.db"), "--study", "mnii", "--storage", source)
    assert code == 2 and "(did you mean 'mini'?)" in err and not (tmp_path / "x.db").exists()


@pytest.fixture
def pg_with_two_studies(fresh_pg_url):
    """A PostgreSQL database holding the mini study (run) and a second, unrelated one."""
    from ablate.spec import parse_spec
    from ablate.store import dispose_engines, finish_run, open_storage, register_study, start_run
    from ablate.study import run_study

    run_study(parse_spec(TWO_TRIALS), TWO_TRIALS, fresh_pg_url)
    engine = open_storage(fresh_pg_url)
    other = register_study(engine, "other", "other", "[study]\n", "f" * 64, [{"metric": "adapter_gain",
                                                                            "direction": "maximize"}])  # fmt: skip
    run_id = start_run(engine, other, "baseline", None, 0, "no-branch", None, "cpu")
    finish_run(engine, run_id, "complete", {"adapter_gain": 0.5})
    optuna.create_study(study_name="other", storage=fresh_pg_url).add_trial(
        optuna.trial.create_trial(params={}, distributions={}, value=1.0)
    )
    dispose_engines()
    yield fresh_pg_url
    dispose_engines()


def test_db_export_from_postgresql_writes_the_chosen_studies_with_every_value(pg_with_two_studies, tmp_path, capsys):
    pg = pg_with_two_studies
    whole = tmp_path / "all.db"
    doc = _json(capsys, "db", "export", str(whole), "--storage", pg, "--json")
    assert doc["studies"] == ["mini", "other"] and doc["method"] == "rows"
    _same_tables(pg, sqlite_url(whole))  # every table, every value: ablate's and Optuna's

    chosen = tmp_path / "mini.db"
    _json(capsys, "db", "export", str(chosen), "--study", "mini", "--storage", pg, "--json")
    url = sqlite_url(chosen)
    assert table_rows(url, "ablate_studies") == table_rows(pg, "ablate_studies", "name = 'mini'")
    assert table_rows(url, "studies") == table_rows(pg, "studies", "study_name = 'mini'")
    mini_runs = (
        "run_id IN (SELECT r.id FROM ablate_runs r JOIN ablate_studies s ON s.id = r.study_id WHERE s.name = 'mini')"
    )
    for table in ("ablate_step_metrics", "ablate_run_groups", "ablate_probe_points", "ablate_probe_groups"):
        assert table_rows(url, table) == table_rows(pg, table, mini_runs), table
    mini_trials = (
        "trial_id IN (SELECT trial_id FROM trials t JOIN studies s ON s.study_id = t.study_id"
        " WHERE s.study_name = 'mini')"
    )
    for table in ("trial_values", "trial_params", "trial_intermediate_values", "trial_system_attributes"):
        assert table_rows(url, table) == table_rows(pg, table, mini_trials), table
    with sqlite3.connect(chosen) as con:
        stray = "SELECT count(*) FROM ablate_runs WHERE study_id NOT IN (SELECT id FROM ablate_studies)"
        assert con.execute(stray).fetchone() == (0,) and con.execute("SELECT count(*) FROM trials").fetchone() == (2,)

    # every read command accepts it: the per-fix table and the runs as from PostgreSQL, Optuna, the report
    for args in (["--group-by", "fix"], ["--runs"]):
        from_pg = _json(capsys, "query", "--study", "mini", *args, "--format", "json", "--storage", pg)
        assert _json(capsys, "query", "--study", "mini", *args, "--format", "json", "--storage", url) == from_pg
    exported, source = (optuna.load_study(study_name="mini", storage=u).trials for u in (url, pg))
    assert [t.values for t in exported] == [t.values for t in source]
    code, _, err = run_cli(capsys, "report", "mini", "--storage", url, "--out", str(tmp_path / "report"))
    assert code == 0, err
    assert (tmp_path / "report" / "report.html").stat().st_size > 0
