"""Many workers on one PostgreSQL: 8 light workers against a server with max_connections = 30.

Each worker holds at most 3 connections (ablate/store/engine.py PG_POOL_SIZE + OPTUNA_PG_POOL_SIZE),
so 8 fit in 30 with room to spare; the study ends with its exact count and no worker saw a refused
connection. The server is a throwaway one of its own (.ci/start_postgres.sh in a temporary folder).
"""

from __future__ import annotations

import glob
import shutil

import optuna
import pytest

from bench.workers_pg import fresh_database, run_workers, server_dir, start_server, stop_server


@pytest.fixture(scope="module")
def small_server():
    if not (shutil.which("pg_ctl") or glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")):
        pytest.skip("PostgreSQL is not installed")
    with server_dir() as state:
        try:
            url = start_server(state, max_connections=30)
        except RuntimeError as exc:
            pytest.skip(str(exc))
        try:
            yield url
        finally:
            stop_server(state)


def test_eight_workers_fit_a_server_with_30_connections(small_server, tmp_path):
    url = fresh_database(small_server)
    result = run_workers(url, workers=8, trials=8, folder=tmp_path)
    assert result["exit_code"] == 0, result["stderr_tail"]
    assert result["connection_errors"] == 0
    assert result["trials_complete"] == 8
    assert 0 < result["peak_connections"] <= 3 * 8
    study = optuna.load_study(study_name="w8", storage=url)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 8
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        statuses = dict(conn.execute(text("SELECT status, count(*) FROM ablate_runs GROUP BY status")).all())
        pids = conn.execute(text("SELECT count(DISTINCT worker_pid) FROM ablate_runs")).scalar_one()
    engine.dispose()
    assert statuses == {"complete": 8 * 2 + 2 + 2}  # 8 trials x 2 seeds, the 2 baselines, the 2 Stage 1 runs
    assert pids >= 2  # the work was shared
