"""`ablate launch ray`: the worker as Ray tasks, on a local Ray with two logical GPUs."""

from __future__ import annotations

import sqlite3

import optuna
import pytest

from tests.study_helpers import MINI, refused_line, run_cli, sqlite_url, write_spec

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_two_ray_tasks_each_get_their_gpu(local_ray, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABLATE_HEARTBEAT_S", "1")
    spec, db = write_spec(tmp_path, MINI.replace("steps = 6", "steps = 20")), tmp_path / "results.db"
    code, out, err = run_cli(
        capsys, "launch", "ray", str(spec), "--workers", "2", "--storage", sqlite_url(db), "--allow-sqlite",
        "--gpus-per-worker", "1",
    )  # fmt: skip
    assert code == 0, err
    study = optuna.load_study(study_name="mini", storage=sqlite_url(db))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and len({tuple(sorted(t.params.items())) for t in complete}) == 4
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT status, worker_launcher, worker_job, worker_devices FROM ablate_runs").fetchall()
    assert {r[0] for r in rows} == {"complete"} and {r[1] for r in rows} == {"ray"}
    # Ray set each task's CUDA_VISIBLE_DEVICES to the logical GPU it gave it: two distinct ids.
    assert {r[3] for r in rows} == {"0", "1"} and len({r[2] for r in rows}) == 2


def test_asking_for_more_gpus_than_the_cluster_has_exits_2(local_ray, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, db = write_spec(tmp_path), tmp_path / "results.db"
    sqlite3.connect(db).close()
    args = ["launch", "ray", str(spec), "--workers", "2", "--storage", sqlite_url(db), "--allow-sqlite"]
    line = refused_line(capsys, db, [*args, "--gpus-per-worker", "3"])
    assert line.startswith("error: --gpus-per-worker:") and "2 GPU(s)" in line
    assert refused_line(capsys, db, args[:7]).startswith("error: --storage:")  # SQLite needs --allow-sqlite
