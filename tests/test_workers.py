"""`ablate study run SPEC --workers N`: local worker processes on one study, through the CLI.

Each test runs the real command (worker processes, a SQLite file) and checks the database: the
exact count of distinct trials, the workers recorded on the run rows, nothing left running.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna

from ablate.launch.worker import gpu_plan
from tests.study_helpers import MINI, copy_db, refused_line, run_cli, sqlite_url, write_spec

# Long enough runs that both workers take some, and a kill lands in one.
SPEC = MINI.replace("steps = 6", "steps = 40")


def _cmd(spec, db, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "ablate", "study", "run", str(spec), "--storage", sqlite_url(db)]
    return [*cmd, "--no-plots", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "ABLATE_HEARTBEAT_S": "1"}


def _runs(db) -> list[dict]:
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM ablate_runs ORDER BY id")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def check_finished(db, trials: int = 4) -> list[dict]:
    """Exactly ``trials`` distinct complete trials, each with every seed's complete run, nothing
    RUNNING or WAITING, no run left 'running', and every worker process gone."""
    study = optuna.load_study(study_name="mini", storage=sqlite_url(db))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == trials
    assert len({tuple(sorted(t.params.items())) for t in complete}) == trials
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    runs = _runs(db)
    assert not [r for r in runs if r["status"] == "running"]
    for t in complete:
        assert sorted(r["seed"] for r in runs if r["trial_number"] == t.number and r["status"] == "complete") == [0, 1]
    assert not [r["worker_pid"] for r in runs if _alive(r["worker_pid"])]
    return runs


def test_two_local_workers_share_one_study(tmp_path, capsys):
    spec, db = write_spec(tmp_path, SPEC), tmp_path / "results.db"
    done = subprocess.run(_cmd(spec, db, "--workers", "2"), cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # One progress view: each worker's lines carry its tag; one per-fix table at the end.
    assert "w1 " in done.stderr and "w2 " in done.stderr and done.stdout.count("per fix") == 1
    runs = check_finished(db)
    workers = {(r["worker_host"], r["worker_pid"], r["worker_job"]) for r in runs}
    assert len(workers) == 2 and {r["worker_launcher"] for r in runs} == {"local"}
    assert {job for _h, _p, job in workers} == {"1/2", "2/2"}
    assert {r["worker_devices"] for r in runs} == {"cpu"}  # this machine has no GPU
    # `query --runs` shows where each run ran; the report's setting section lists the workers.
    code, out, _ = run_cli(capsys, "query", "--storage", sqlite_url(db), "--runs", "--format", "json")
    assert code == 0 and {(r["worker_pid"], r["worker_launcher"]) for r in json.loads(out)} == {
        (pid, "local") for _h, pid, _j in workers
    }
    code, out, _ = run_cli(capsys, "query", "--storage", sqlite_url(db), "--runs", "--wide")
    assert "worker" in out.splitlines()[2] and "local 1/2 devices cpu" in out
    code, _, err = run_cli(capsys, "report", "mini", "--storage", sqlite_url(db), "--out", str(tmp_path / "rep"))
    assert code == 0, err
    report = next((tmp_path / "rep").glob("*.md")).read_text()
    assert "| workers | 2 workers: " in report


def test_a_worker_killed_outright_then_a_rerun_finishes_the_study(tmp_path):
    spec, db = write_spec(tmp_path, SPEC), tmp_path / "results.db"
    proc = subprocess.Popen(
        _cmd(spec, db, "--workers", "2"), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if db.exists():
            try:
                running = [r for r in _runs(db) if r["status"] == "running" and r["role"] == "trial"]
            except sqlite3.OperationalError:  # the tables are being created
                continue
            victim = running[0]["worker_pid"] if running else None
    assert victim is not None, "no trial run was seen running"
    os.kill(victim, signal.SIGKILL)
    _out, err = proc.communicate(timeout=600)
    # The other worker goes on (and may retry the killed trial itself); the command says a worker died.
    assert proc.returncode == 1 and "killed by SIGKILL" in err, err
    rerun = subprocess.run(_cmd(spec, db, "--workers", "2"), cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    runs = check_finished(db)
    assert victim in {r["worker_pid"] for r in runs}
    assert len({r["worker_pid"] for r in runs}) >= 2


def test_ctrl_c_stops_every_worker_cleanly_and_a_rerun_resumes(tmp_path):
    spec, db = write_spec(tmp_path, SPEC), tmp_path / "results.db"
    proc = subprocess.Popen(
        _cmd(spec, db, "--workers", "2"), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            if db.exists() and len({r["worker_pid"] for r in _runs(db) if r["status"] == "running"}) == 2:
                break
        except sqlite3.OperationalError:
            continue
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130 and "interrupted; run the same command again to resume" in err, err
    runs = _runs(db)
    assert runs and not [r for r in runs if r["status"] == "running"]
    assert {r["error"] for r in runs if r["status"] == "failed"} <= {"interrupted"}
    assert not [r["worker_pid"] for r in runs if _alive(r["worker_pid"])]
    study = optuna.load_study(study_name="mini", storage=sqlite_url(db))
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    rerun = subprocess.run(_cmd(spec, db, "--workers", "2"), cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    check_finished(db)


def test_bad_worker_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys):
    import torch

    spec, db = write_spec(tmp_path), tmp_path / "results.db"
    sqlite3.connect(db).close()
    base = ["study", "run", str(spec), "--storage", sqlite_url(db), "--no-plots"]
    assert refused_line(capsys, db, [*base, "--workers", "0"]).startswith("error: --workers:")
    assert refused_line(capsys, db, [*base, "--gpus", "0"]).startswith("error: --gpus:")  # without --workers
    missing = str(torch.cuda.device_count())  # one past the last GPU (0 on a machine without any)
    line = refused_line(capsys, db, [*base, "--workers", "2", "--gpus", f"0,{missing}"])
    assert line.startswith("error: --gpus:")
    assert refused_line(capsys, db, [*base, "--workers", "2", "--gpus", "a,b"]).startswith("error: --gpus:")


def test_gpu_plan_is_round_robin_over_the_visible_gpus():
    assert gpu_plan(3, None, 0, None) == [None, None, None]  # a CPU machine: the workers share the cores
    assert gpu_plan(5, None, 2, None) == ["0", "1", "0", "1", "0"]
    assert gpu_plan(3, [1, 3], 4, None) == ["1", "3", "1"]
    # Numbers count among the GPUs this process sees: under CUDA_VISIBLE_DEVICES=4,5, --gpus 1 is device 5.
    assert gpu_plan(2, [1], 2, "4,5") == ["5", "5"]


def test_an_older_database_gains_the_worker_columns(mini_study_db, tmp_path, capsys):
    """A file written before the worker record: read as it is, then upgraded by a writer with
    nullable columns of the schema's types."""
    from ablate.store import open_storage, query
    from ablate.store.schema import WORKER_FIELDS

    path = copy_db(mini_study_db, tmp_path / "old.db")
    with sqlite3.connect(path) as con:
        for column in WORKER_FIELDS:
            con.execute(f"ALTER TABLE ablate_runs DROP COLUMN {column}")
    before = path.read_bytes()
    code, out, _ = run_cli(capsys, "query", "--storage", sqlite_url(path), "--runs", "--format", "json")
    assert code == 0 and all(r["worker_host"] is None for r in json.loads(out))
    assert path.read_bytes() == before  # read-only commands add nothing
    engine = open_storage(sqlite_url(path))
    with sqlite3.connect(path) as con:
        types = {r[1]: r[2] for r in con.execute("PRAGMA table_info(ablate_runs)")}
    expected = ["VARCHAR(255)", "INTEGER", "VARCHAR(32)", "VARCHAR(128)", "VARCHAR(128)"]
    assert [types[c] for c in WORKER_FIELDS] == expected
    assert query.runs_frame(engine).worker_host.isna().all()
