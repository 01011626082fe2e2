"""`ablate launch slurm`: a job array through submitit, tested without a cluster: submitit's local
executor running the real workers, and a fake `sbatch` (and `srun`) on PATH for the submission."""

from __future__ import annotations

import pickle
import sqlite3

import optuna
import pytest

from tests.study_helpers import MINI, db_dump, refused_line, run_cli, sqlite_url, write_spec

pytest.importorskip("submitit")

FAKE_SBATCH = """#!/bin/bash
# Records the batch script and its arguments, then answers as sbatch does (or fails as it does).
cp "${@: -1}" "$FAKE_SLURM_DIR/script.sh"
echo "$@" > "$FAKE_SLURM_DIR/args"
if [ -n "$FAKE_SBATCH_FAIL" ]; then
  echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2
  exit 1
fi
echo "Submitted batch job 4242"
"""
FAKE_SRUN = """#!/bin/bash
echo "srun is not run at submission" >&2
exit 1
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """A PATH whose `sbatch` records what it is given (submitit also looks for `srun`)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    record.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(record))
    return record


def _studies(db) -> tuple[list, list]:
    with sqlite3.connect(db) as con:
        ours = con.execute("SELECT name FROM ablate_studies").fetchall()
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        theirs = con.execute("SELECT study_name FROM studies").fetchall() if "studies" in tables else []
    return ours, theirs


def test_the_submitted_script_is_a_job_array_with_one_gpu_per_task(tmp_path, fake_slurm, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, db = write_spec(tmp_path), tmp_path / "results.db"
    url = sqlite_url(db)
    code, out, err = run_cli(
        capsys, "launch", "slurm", str(spec), "--workers", "3", "--storage", url, "--allow-sqlite",
        "--partition", "gpu-long", "--time", "90", "--folder", str(tmp_path / "jobs"),
    )  # fmt: skip
    assert code == 0, err
    assert "submitted job 4242: 3 task(s)" in out and f"ablate query --storage '{url}' --study mini" in out
    script = (fake_slurm / "script.sh").read_text()
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --gpus-per-task=1", "#SBATCH --partition=gpu-long",
                 "#SBATCH --time=90", "#SBATCH --signal=USR2@90"):  # fmt: skip
        assert line in script.splitlines(), script
    assert f"-m ablate study run {spec} --storage {url} --name mini" in script
    # Each task's pickled submission runs the same worker command with the storage URL.
    for task in range(3):
        with open(tmp_path / "jobs" / f"4242_{task}_submitted.pkl", "rb") as fh:
            delayed = pickle.load(fh)
        assert delayed.args == (task,)
        command = delayed.function.command
        assert command[1:5] == ["-m", "ablate", "study", "run"] and command[command.index("--storage") + 1] == url
    # The study was created once, before the workers: its default arms wait for them.
    study = optuna.load_study(study_name="mini", storage=url)
    assert _studies(db)[0] == [("mini",)]
    assert [t.state.name for t in study.trials] == ["WAITING"] * 3


def test_a_refused_submission_exits_1_with_sbatchs_message_and_leaves_no_study(tmp_path, fake_slurm, capsys,
                                                                               monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_SBATCH_FAIL", "1")
    spec, db = write_spec(tmp_path), tmp_path / "results.db"
    code, out, err = run_cli(
        capsys, "launch", "slurm", str(spec), "--workers", "2", "--storage", sqlite_url(db), "--allow-sqlite",
        "--folder", str(tmp_path / "jobs"),
    )  # fmt: skip
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "launch failed: sbatch: error: Batch job submission failed: Invalid partition name specified"
    ]
    assert _studies(db) == ([], [])


def test_submitits_local_executor_runs_two_tasks_each_on_its_own_devices(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABLATE_HEARTBEAT_S", "1")
    spec, db = write_spec(tmp_path, MINI.replace("steps = 6", "steps = 20")), tmp_path / "results.db"
    code, out, err = run_cli(
        capsys, "launch", "slurm", str(spec), "--workers", "2", "--storage", sqlite_url(db), "--allow-sqlite",
        "--cluster", "local", "--wait", "--folder", str(tmp_path / "jobs"),
    )  # fmt: skip
    assert code == 0, err
    study = optuna.load_study(study_name="mini", storage=sqlite_url(db))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and len({tuple(sorted(t.params.items())) for t in complete}) == 4
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT status, worker_launcher, worker_job, worker_devices FROM ablate_runs").fetchall()
    assert {r[0] for r in rows} == {"complete"} and {r[1] for r in rows} == {"submitit-local"}
    # submitit would give both tasks the same GPUs; each task got its own CUDA_VISIBLE_DEVICES.
    pairs = {(r[2], r[3]) for r in rows}  # (task's job id, its CUDA_VISIBLE_DEVICES)
    assert len(pairs) == 2 and {dev for _job, dev in pairs} == {"0", "1"} and len({job for job, _ in pairs}) == 2


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--workers", "2"], "--storage"),  # a cluster's workers need a database they all reach
        (["--workers", "2", "--storage", "SQLITE"], "--storage"),  # SQLite without --allow-sqlite
        (["--workers", "0", "--storage", "SQLITE", "--allow-sqlite"], "--workers"),
        (["--workers", "2", "--storage", "SQLITE", "--allow-sqlite", "--time", "0"], "--time"),
        (["--workers", "2", "--storage", "SQLITE", "--allow-sqlite", "--cluster", "pbs"], "--cluster"),
    ],
)
def test_bad_launch_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, args, option):
    monkeypatch.chdir(tmp_path)
    spec, db = write_spec(tmp_path), tmp_path / "results.db"
    sqlite3.connect(db).close()
    args = [sqlite_url(db) if a == "SQLITE" else a for a in args]
    line = refused_line(capsys, db, ["launch", "slurm", str(spec), *args])
    assert line.startswith(f"error: {option}:"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini.toml", "results.db"]  # no submitit folder either


def test_an_unknown_launcher_exits_2_with_one_line(tmp_path, capsys):
    db = tmp_path / "results.db"
    sqlite3.connect(db).close()
    before = db_dump(db)
    code, out, err = run_cli(capsys, "launch", "pbs", str(write_spec(tmp_path)), "--workers", "2")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "pbs" in err
    assert db_dump(db) == before
