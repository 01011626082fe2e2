"""`ablate query --sql` cannot change anything or anyone: the parser check, the read-only transaction
with its timeout, on SQLite and PostgreSQL, and the attacks of the issue."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from ablate.cli import main
from ablate.errors import SQLInputError
from ablate.store import (
    TABLE_NAMES,
    dispose_engines,
    finish_run,
    open_storage,
    register_study,
    run_sql,
    start_run,
    write_probe,
)
from ablate.store import readonly_sql as ro

DIALECTS = ["sqlite", "postgresql"]
FOREVER = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) AS n FROM r"
KILL = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"

# (SQL, a regular expression the refusal matches): each refused on both backends, before anything runs.
REFUSED = [
    (KILL, "pg_terminate_backend"),
    ("SELECT pg_terminate_backend(12345)", "pg_terminate_backend"),
    ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
    ("SELECT * FROM pg_read_file('/etc/passwd')", "pg_read_file"),
    ("SELECT pg_sleep(30)", "pg_sleep"),
    ("SELECT count(*) FROM ablate_runs WHERE pg_sleep(30) IS NULL", "pg_sleep"),
    ("SELECT set_config('statement_timeout', '0', true)", "set_config"),
    ("SELECT current_setting('data_directory')", "current_setting"),
    ("SELECT query_to_xml('SELECT pg_terminate_backend(1)', true, true, '')", "query_to_xml"),
    ("SELECT nextval('ablate_runs_id_seq')", "nextval"),
    ("SELECT lo_import('/etc/passwd')", "lo_import"),
    ("SELECT load_extension('/tmp/x.so')", "load_extension"),
    ("SELECT randomblob(1000000000)", "randomblob"),
    ("SELECT random()", "random"),
    ("SELECT pg_catalog.lower(fix) FROM ablate_runs", "schema-qualified function"),
    ("SELECT (r.seed).pg_terminate_backend FROM ablate_runs r", "field access"),  # PostgreSQL: f(x)
    ("SELECT r.pg_terminate_backend FROM ablate_runs r", "pg_terminate_backend"),
    ("WITH d AS (DELETE FROM ablate_runs RETURNING id) SELECT * FROM d", "DELETE"),
    ("WITH u AS (UPDATE ablate_studies SET name = 'x' RETURNING id) SELECT count(*) FROM u", "UPDATE"),
    ("WITH i AS (INSERT INTO ablate_studies (name) VALUES ('x') RETURNING id) SELECT 1", "INSERT"),
    (
        "SELECT * FROM ablate_runs WHERE id IN (WITH d AS (DELETE FROM ablate_runs RETURNING id) SELECT id FROM d)",
        "DELETE",
    ),  # fmt: skip
    ("SELECT * INTO copy_of_runs FROM ablate_runs", "SELECT ... INTO"),
    ("SELECT * FROM ablate_runs FOR UPDATE", "FOR UPDATE"),
    ("SELECT 1; SELECT 2", "one SQL statement"),
    ("SELECT 1; DROP TABLE ablate_runs", "one SQL statement"),
    ("SELECT 1 -- a comment\n; DELETE FROM ablate_runs", "one SQL statement"),
    ("SELECT 1 /* a comment */; DELETE FROM ablate_runs", "one SQL statement"),
    ("SELECT * FROM pg_stat_activity", "pg_stat_activity"),
    ("SELECT * FROM pg_catalog.pg_authid", "schema-qualified table"),
    ("SELECT * FROM information_schema.tables", "schema-qualified table"),
    ("SELECT * FROM sqlite_master", "sqlite_master"),
    ("SELECT * FROM main.sqlite_master", "schema-qualified table"),
    ("SELECT * FROM pragma_table_info('ablate_runs')", "pragma_table_info"),
    ("SELECT * FROM pragma_database_list", "pragma_database_list"),
    ("SELECT * FROM secret", "the table secret is not a study table"),
    ("SELECT * FROM secret, (WITH secret AS (SELECT 1 AS x) SELECT * FROM secret) s", "the table secret"),
    ("EXPLAIN ANALYZE SELECT * FROM ablate_runs", "EXPLAIN"),
    ("EXPLAIN (ANALYZE) SELECT * FROM ablate_runs", "EXPLAIN"),
    ("EXPLAIN ANALYZE DELETE FROM ablate_runs", "EXPLAIN"),
    ("EXPLAIN DELETE FROM ablate_runs", "EXPLAIN"),
    ("PRAGMA query_only = OFF", "not PRAGMA"),
    ("SET statement_timeout = 0", "not SET"),
    ("COPY (SELECT 1) TO '/tmp/x'", "not COPY"),
    ("ATTACH DATABASE '/tmp/x.db' AS x", "only a read-only query|cannot parse"),
    ("CREATE TABLE t (x int)", "not CREATE"),
    ("DROP TABLE ablate_runs", "not DROP"),
    ("DELETE FROM ablate_runs", "not DELETE"),
    ("UPDATE ablate_runs SET seed = 1", "not UPDATE"),
    ("INSERT INTO ablate_studies (name) VALUES ('x')", "not INSERT"),
    ("VALUES (1)", "not VALUES"),
    ("", "empty SQL"),
    ("  ;  ", "empty SQL"),
    ("-- only a comment", "empty SQL"),
    ("SELECT 'unterminated", "cannot parse"),
    ("SELECT 1 /* unterminated", "cannot parse"),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("sql, fragment", REFUSED)
def test_check_refuses(dialect: str, sql: str, fragment: str) -> None:
    with pytest.raises(SQLInputError) as info:
        ro.check_sql(sql, dialect)
    message = str(info.value)
    assert re.search(fragment, message) and "\n" not in message


@pytest.mark.parametrize("dialect", DIALECTS)
def test_check_returns_what_it_checked(dialect: str) -> None:
    """The database runs sqlglot's rendering of the checked tree: comments dropped, one statement."""
    assert ro.check_sql("SELECT 1 /* ; DELETE FROM ablate_runs */ -- x", dialect) == "SELECT 1"
    assert (
        ro.check_sql("-- count\nSELECT count(*) FROM ablate_runs; -- end", dialect)
        == "SELECT count(*) FROM ablate_runs"
    )
    assert ro.check_sql("explain select 1", dialect) == "EXPLAIN SELECT 1"
    # PostgreSQL nests comments, SQLite does not: each reads this as its database does.
    nested = "SELECT 1 /* /* */ ; DELETE FROM ablate_runs; /* */ */"
    if dialect == "postgresql":
        assert ro.check_sql(nested, dialect) == "SELECT 1"
        assert ro.check_sql("SELECT $$it's$$ AS s", dialect) == "SELECT 'it''s' AS s"
    else:
        with pytest.raises(SQLInputError, match="one SQL statement|cannot parse"):
            ro.check_sql(nested, dialect)
        assert ro.check_sql("EXPLAIN QUERY PLAN SELECT 1", dialect) == "EXPLAIN QUERY PLAN SELECT 1"


def test_cte_names_resolve_as_the_database_resolves_them() -> None:
    """A CTE shadows a table only where the database says it does: a non-recursive PostgreSQL CTE sees
    only the CTEs before it (so `secret` below would be the real table); SQLite sees them all."""
    forward = "WITH a AS (SELECT * FROM secret), secret AS (SELECT 1 AS x) SELECT * FROM a"
    with pytest.raises(SQLInputError, match="the table secret"):
        ro.check_sql(forward, "postgresql")
    assert ro.check_sql(forward, "sqlite")
    assert ro.check_sql(forward.replace("WITH", "WITH RECURSIVE"), "postgresql")
    for dialect in DIALECTS:
        assert ro.check_sql(FOREVER, dialect)
        with pytest.raises(SQLInputError, match="the table secret"):  # a CTE of a subquery stays inside it
            ro.check_sql("SELECT * FROM (WITH secret AS (SELECT 1 AS x) SELECT * FROM secret) s, secret", dialect)


def test_study_tables_are_ablate_and_optuna_tables() -> None:
    from optuna.storages._rdb.models import BaseModel

    assert ro.OPTUNA_TABLES == set(BaseModel.metadata.tables) | {"alembic_version"}
    assert ro.study_tables() == set(TABLE_NAMES) | ro.OPTUNA_TABLES


def test_pure_function_classes_exist_in_sqlglot() -> None:
    """A class name sqlglot does not have would silently refuse its functions: catch typos and renames."""
    from sqlglot import exp

    assert [n for n in ro.PURE_FUNCTION_CLASSES if not hasattr(exp, n)] == []


def test_sql_is_checked_in_the_engines_dialect_only() -> None:
    with pytest.raises(SQLInputError, match="SQLite and PostgreSQL"):
        ro.check_sql("SELECT 1", "mysql")


# ---------------------------------------------------------------------------------- on a database


@pytest.fixture(params=DIALECTS)
def study_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with Optuna's tables (one study, two trials) and ablate's (its study, four runs with
    probes), plus one table that is not a study table (`secret`)."""
    import optuna

    url = (
        f"sqlite:///{tmp_path / 'results.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name="optuna-s", direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for value in (0.3, 0.4):
        study.add_trial(optuna.trial.create_trial(params={"x": value}, distributions=dist, value=value))
    storage.engine.dispose()
    engine = open_storage(url)
    sid = register_study(
        engine, "s", "optuna-s", "[study]\n", "a" * 64, [{"metric": "adapter_gain", "direction": "maximize"}], {}
    )
    for trial in (0, 1):
        for seed in (0, 1):
            rid = start_run(engine, sid, "trial", trial, seed, "zero-init", None, "cpu")
            ratios = {"layers": [0.5 + seed, 2.0], "proj": [1.0]}
            write_probe(engine, rid, {"step": 0, "group": "layers", "grad_ratio": 0.5, "per_batch_ratios": ratios})
            finish_run(engine, rid, "complete", {"adapter_gain": trial + seed / 10})
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE secret (x VARCHAR(16))"))
        conn.execute(text("INSERT INTO secret VALUES ('SECRET')"))
    yield url
    dispose_engines()


def _snapshot(engine: Engine) -> tuple[set[str], int, int]:
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT count(*) FROM ablate_runs")).scalar_one()
        studies = conn.execute(text("SELECT count(*) FROM ablate_studies")).scalar_one()
    return set(inspect(engine).get_table_names()), runs, studies


def test_attacks_change_nothing_and_no_one(study_url: str) -> None:
    """The issue's attacks, through run_sql and through the CLI, while a worker holds a connection."""
    engine = open_storage(study_url)
    before = _snapshot(engine)
    worker = create_engine(study_url).connect()  # a live worker's connection
    try:
        t0 = time.monotonic()
        for sql, fragment in REFUSED:
            with pytest.raises(SQLInputError) as info:
                run_sql(engine, sql)
            assert re.search(fragment, str(info.value)), sql
        assert time.monotonic() - t0 < 10  # pg_sleep(30) never ran
        assert worker.execute(text("SELECT 1")).scalar_one() == 1  # not terminated
        assert _snapshot(engine) == before
    finally:
        worker.close()


@pytest.mark.parametrize("sql, fragment", [(KILL, "pg_terminate_backend"), ("SELECT pg_read_file('/etc/passwd')",
                                                                            "pg_read_file")])  # fmt: skip
def test_cli_refuses_the_attacks(capsys, study_url: str, sql: str, fragment: str) -> None:
    worker = create_engine(study_url).connect()
    try:
        with pytest.raises(SystemExit) as info:
            main(["query", "--storage", study_url, "--sql", sql])
        cap = capsys.readouterr()
        assert info.value.code == 2 and cap.out == ""
        assert cap.err.startswith("error: --sql: the function ") and fragment in cap.err
        assert len(cap.err.strip().splitlines()) == 1
        assert worker.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        worker.close()


def test_an_endless_recursive_query_times_out_and_leaves_the_pool_clean(study_url: str) -> None:
    engine = open_storage(study_url)
    queries = [FOREVER]
    # rows streamed one by one: the deadline covers the fetch too (limits high enough not to cut first)
    queries.append(FOREVER.replace("count(*) AS n", "n"))
    for sql in queries:
        t0 = time.monotonic()
        with pytest.raises(SQLInputError, match=r"ran past its 0\.3 s timeout"):
            run_sql(engine, sql, timeout_s=0.3, max_rows=10**12, max_bytes=10**15)
        assert time.monotonic() - t0 < 5
    with engine.connect() as conn:  # the same pooled connection: no deadline, no read-only mode left
        count = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 20000) SELECT count(*) FROM r"
        assert conn.execute(text(count)).scalar_one() == 20000
        if engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 0
        else:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
            assert conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "off"
    assert run_sql(engine, "SELECT count(*) AS n FROM ablate_runs")["n"].tolist() == [4]


def test_a_cte_never_reads_the_table_it_shadows(study_url: str) -> None:
    engine = open_storage(study_url)
    sql = "WITH a AS (SELECT x FROM secret), secret AS (SELECT 'CTE' AS x) SELECT x FROM a"
    if engine.dialect.name == "sqlite":  # SQLite resolves `secret` to the later CTE
        assert run_sql(engine, sql)["x"].tolist() == ["CTE"]
    else:  # PostgreSQL would read the real table: refused
        with pytest.raises(SQLInputError, match="the table secret"):
            run_sql(engine, sql)


def test_legitimate_queries_still_work(study_url: str) -> None:
    engine = open_storage(study_url)
    pg = engine.dialect.name == "postgresql"
    joined = run_sql(
        engine,
        """
        WITH best AS (
            SELECT r.trial_number, r.seed, r.adapter_gain, v.value AS optuna_value, t.state,
                   row_number() OVER (PARTITION BY r.trial_number ORDER BY r.adapter_gain DESC) AS rk
            FROM ablate_runs r
            JOIN ablate_studies s ON s.id = r.study_id
            JOIN studies os ON os.study_name = s.optuna_study_name
            JOIN trials t ON t.study_id = os.study_id AND t.number = r.trial_number
            JOIN trial_values v ON v.trial_id = t.trial_id
            WHERE r.role = 'trial'
        )
        SELECT trial_number, seed, round(CAST(adapter_gain AS NUMERIC), 2) AS gain, optuna_value, state
        FROM best WHERE rk = 1 ORDER BY trial_number
        """,
    )
    assert joined["trial_number"].tolist() == [0, 1] and joined["seed"].tolist() == [1, 1]
    assert [float(g) for g in joined["gain"]] == [0.1, 1.1] and joined["optuna_value"].tolist() == [0.3, 0.4]
    assert joined["state"].tolist() == ["COMPLETE", "COMPLETE"]
    # The README's JSON examples: the first per-batch ratio of the judged group, per run.
    json_sql = (
        "SELECT r.seed, p.per_batch_ratios::json -> 'layers' ->> 0 AS first_ratio,"
        " json_array_length(p.per_batch_ratios::json -> 'layers') AS n"
        if pg
        else "SELECT r.seed, json_extract(p.per_batch_ratios, '$.layers[0]') AS first_ratio,"
        " json_array_length(p.per_batch_ratios, '$.layers') AS n"
    ) + " FROM ablate_probe_points p JOIN ablate_runs r ON r.id = p.run_id ORDER BY r.trial_number, r.seed"
    ratios = run_sql(engine, json_sql)
    assert [float(x) for x in ratios["first_ratio"]] == [0.5, 1.5, 0.5, 1.5] and ratios["n"].tolist() == [2] * 4
    if not pg:
        each = run_sql(
            engine, "SELECT count(*) AS n FROM ablate_probe_points p, json_each(p.per_batch_ratios, '$.layers')"
        )
        assert each["n"].tolist() == [8]
    stats = run_sql(
        engine,
        "SELECT fix, count(*) AS n, avg(adapter_gain) AS mean, max(adapter_gain) - min(adapter_gain) AS spread,"
        " coalesce(NULL, 'x') AS c, lower(upper(fix)) AS f, CASE WHEN count(*) > 1 THEN 'many' ELSE 'one' END AS k"
        " FROM ablate_runs GROUP BY fix HAVING count(*) > 0",
    )
    assert stats["n"].tolist() == [4] and stats["k"].tolist() == ["many"]
    assert not run_sql(engine, "EXPLAIN SELECT * FROM ablate_runs WHERE study_id = 1").empty
    with pytest.raises(SQLInputError, match="^SQL error: "):
        run_sql(engine, "SELECT no_such_column FROM ablate_runs")


def test_cli_sql_timeout(capsys, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    open_storage(url)
    for args, fragment in [
        (["--sql", FOREVER, "--sql-timeout", "0.3"], "error: --sql: the query ran past its 0.3 s timeout"),
        (["--sql", "SELECT 1", "--sql-timeout", "0"], "error: --sql-timeout: must be a positive number"),
        (["--sql", "SELECT 1", "--sql-timeout", "nan"], "error: --sql-timeout: must be a positive number"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(["query", "--storage", url, *args])
        cap = capsys.readouterr()
        assert info.value.code == 2 and cap.out == "" and cap.err.startswith(fragment), cap.err
        assert len(cap.err.strip().splitlines()) == 1
    dispose_engines()


def test_postgresql_allowed_names_call_the_builtins(fresh_pg_url: str) -> None:
    """A same-named function earlier on the role's search path is not what `lower(...)` calls."""
    engine = open_storage(fresh_pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT 'EVIL' $$"))
        db = conn.execute(text("SELECT current_database()")).scalar_one()
        conn.execute(text(f'ALTER DATABASE "{db}" SET search_path = public, pg_catalog'))
    dispose_engines()
    engine = open_storage(fresh_pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT lower('ABC')")).scalar_one() == "EVIL"  # the trap is set
    assert run_sql(engine, "SELECT lower('ABC') AS x")["x"].tolist() == ["abc"]
    with engine.connect() as conn:  # and the search path is the role's again afterwards
        assert conn.exec_driver_sql("SHOW search_path").scalar() == "public, pg_catalog"
    dispose_engines()
