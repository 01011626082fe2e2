"""Studies end to end on real databases: search, storage, resume, interruption, Optuna interop."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from sqlalchemy import text

from ablate.errors import AblateInputError
from ablate.objectives import trial_value
from ablate.spec import parse_spec
from ablate.store import claims, open_storage, provenance, query
from ablate.study import run_study
from ablate.study import runner as study_runner
from ablate.study.runner import StudyReporter, StudySpecConflict
from ablate.study.space import default_arm_params
from tests.study_helpers import MINI, copy_db, sqlite_url, write_spec

N_METRICS = 9  # loss, grad_norm_{layers,proj,all,branch}, upd_{layers,proj,all,branch} (+ gates)


def study_cmd(spec: Path, db: Path) -> list[str]:
    """`ablate study run` as a user starts it, quiet, on a SQLite file."""
    return [
        sys.executable,
        "-m",
        "ablate",
        "study",
        "run",
        str(spec),
        "--storage",
        sqlite_url(db),
        "--quiet",
        "--no-plots",
    ]


def _runs(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("select role, trial_number, seed, fix, scale, status from ablate_runs").fetchall()


def test_study_stores_every_seed_and_baseline(mini_study_db):
    runs = _runs(mini_study_db)
    complete = [r for r in runs if r[5] == "complete"]
    # trials x seeds, and per seed a Stage 1 run, a baseline and a control
    assert len(complete) == len(runs) == 4 * 2 + 2 + 2 + 2
    assert sorted((r[2], r[3]) for r in runs if r[0] == "stage1") == [(0, "no-branch"), (1, "no-branch")]
    assert sorted((r[2], r[3]) for r in runs if r[0] == "baseline") == [(0, "no-branch"), (1, "no-branch")]
    assert sorted((r[2], r[3]) for r in runs if r[0] == "control") == [(0, "no-branch"), (1, "no-branch")]
    trial_seeds = sorted((r[1], r[2]) for r in runs if r[0] == "trial")
    assert trial_seeds == [(t, s) for t in range(4) for s in (0, 1)]
    with sqlite3.connect(mini_study_db) as con:
        per_run = con.execute(
            "select run_id, count(*) from ablate_step_metrics where run_id in "
            "(select id from ablate_runs where role != 'stage1') group by run_id"
        ).fetchall()
        stage1 = con.execute(
            "select run_id, count(*) from ablate_step_metrics where run_id in "
            "(select id from ablate_runs where role = 'stage1') group by run_id"
        ).fetchall()
        probes = con.execute("select run_id, group_concat(step) from ablate_probe_points group by run_id").fetchall()
    # 6 steps x (5 metrics + 1 gate for tanh-gate)
    assert {n for _, n in per_run} <= {6 * N_METRICS, 6 * (N_METRICS + 1)}
    assert [n for _, n in stage1] == [5 * 3, 5 * 3]  # 5 epochs of one batch: loss and its two parts
    assert all(sorted(map(int, s.split(","))) == [0, 3, 6] for _, s in probes)


def test_optuna_api_reads_our_file_and_defaults_come_first(mini_study_db):
    study = optuna.load_study(study_name="mini", storage=sqlite_url(mini_study_db))
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["adapter_gain", "dilution_train"]
    # Every fix at its registry default first, then the sampler.
    assert [t.params for t in trials[:3]] == [default_arm_params(f) for f in ("none", "fixed-scale", "tanh-gate")]
    assert trials[2].params["scale[tanh-gate]"] == 0.0
    # The objectives are computed from the stored runs the same way the query computes them.
    engine = open_storage(sqlite_url(mini_study_db))
    runs = query.runs_frame(engine, "mini")
    frame = query.trials_frame(engine, "mini")
    for t in trials:
        rows = runs[(runs.role == "trial") & (runs.trial_number == t.number)].to_dict(orient="records")
        assert t.values[0] == pytest.approx(sum(r["adapter_gain"] for r in rows) / 2)
        assert t.values[1] == pytest.approx(trial_value("dilution_train", rows))
        shown = frame[frame.trial_number == t.number].iloc[0]
        assert (shown.adapter_gain, shown.dilution_train) == pytest.approx(tuple(t.values))
        assert shown.ranked


def test_optuna_cli_lists_trials(mini_study_db):
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("optuna")),
            "trials",
            "--storage",
            sqlite_url(mini_study_db),
            "--study-name",
            "mini",
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 4


def test_resume_runs_only_missing_trials(tmp_path):
    url = sqlite_url(tmp_path / "r.db")
    spec = parse_spec(MINI)
    first = run_study(spec, MINI, url, n_trials=2)
    assert (first.n_trials, first.ran) == (2, 2)
    before = {r[:3]: r for r in _runs(tmp_path / "r.db")}
    again = run_study(spec, MINI, url, n_trials=2)
    assert again.ran == 0 and len(_runs(tmp_path / "r.db")) == len(before)
    more = run_study(spec, MINI, url, n_trials=3)
    assert (more.n_trials, more.ran) == (3, 1)
    runs = _runs(tmp_path / "r.db")
    assert len(runs) == 2 + 2 + 2 + 3 * 2  # the Stage 1 runs, baselines and controls were not repeated
    assert len({r[:3] for r in runs}) == len(runs)


def test_same_name_different_spec_is_refused(tmp_path):
    url = sqlite_url(tmp_path / "r.db")
    run_study(parse_spec(MINI), MINI, url, n_trials=1)
    other = MINI.replace("steps = 6", "steps = 5")
    with pytest.raises(StudySpecConflict, match="different spec"):
        run_study(parse_spec(other), other, url, n_trials=1)


@pytest.mark.parametrize(
    ("sig", "code", "word", "twice"),
    [
        (signal.SIGINT, 130, "interrupted", False),
        (signal.SIGTERM, 143, "terminated", False),
        # A second Ctrl-C 50 ms later, while the first is cleaning up (it used to crash Optuna's
        # clean-up with UnboundLocalError, or kill the process during Python's shutdown).
        (signal.SIGINT, 130, "interrupted", True),
    ],
    ids=["sigint", "sigterm", "double-sigint"],
)
def test_interrupt_then_rerun_completes_without_double_counting(tmp_path, sig, code, word, twice):
    spec = write_spec(tmp_path, MINI.replace("steps = 6", "steps = 40").replace("every = 3", "every = 20"))
    db = tmp_path / "results.db"
    cmd = study_cmd(spec, db)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    # Wait until a trial run is in the middle of training, then Ctrl-C.
    while time.time() < deadline:
        time.sleep(0.5)
        if db.exists():
            try:
                rows = _runs(db)
            except sqlite3.OperationalError:
                continue
            if any(r[0] == "trial" and r[5] == "complete" for r in rows) and any(r[5] == "running" for r in rows):
                break
    proc.send_signal(sig)
    if twice:
        time.sleep(0.05)
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert word in err and "Traceback" not in err
    interrupted = _runs(db)
    assert any(r[5] == "failed" for r in interrupted) and not any(r[5] == "running" for r in interrupted)
    states = [t.state for t in optuna.load_study(study_name="mini", storage=sqlite_url(db)).trials]
    assert optuna.trial.TrialState.RUNNING not in states

    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("pragma integrity_check").fetchone() == ("ok",)
        dup = con.execute(
            "select trial_key, seed, count(*) from ablate_runs where status = 'complete' group by role, trial_key, seed"
            " having count(*) > 1"
        ).fetchall()
    assert dup == []
    study = optuna.load_study(study_name="mini", storage=sqlite_url(db))
    complete = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    frame = query.trials_frame(open_storage(sqlite_url(db)), "mini")
    ok = frame[frame.status == "complete"]
    assert len(ok) == 4 and set(ok.n_seeds) == {2}
    # Every enqueued default arm finished once, the interrupted one included.
    assert sum(t.params == default_arm_params("none") for t in complete) >= 1


def test_single_objective_with_dilution_constraint_and_pruning(tmp_path):
    text = MINI.replace(
        "seeds = [0, 1]",
        'seeds = [0]\nobjectives = ["loss_slope"]\nconstraint_metric = "dilution_init"\nconstraint_min = 0.2\n'
        "pruning = true\nfrozen_control = false",
    )
    out = run_study(parse_spec(text), text, sqlite_url(tmp_path / "c.db"))
    assert out.n_trials == 4
    study = optuna.load_study(study_name="mini", storage=sqlite_url(tmp_path / "c.db"))
    assert len(study.directions) == 1
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(len(t.user_attrs["constraint"]) == 1 for t in done)
    # constraint value = dilution - 0.2 for a metric to minimise (<= 0 means satisfied)
    runs = query.runs_frame(open_storage(sqlite_url(tmp_path / "c.db")), "mini")
    for t in done:
        row = runs[(runs.role == "trial") & (runs.trial_number == t.number)].iloc[0]
        assert t.user_attrs["constraint"][0] == pytest.approx(trial_value("dilution_init", [row]) - 0.2)
        # The pruner read the objective's own quantity: the slope of the losses so far (one flush here).
        assert t.intermediate_values[5] == pytest.approx(row.loss_slope)
    assert not (runs.role == "control").any()


def test_pruning_is_refused_for_objectives_known_only_at_the_end():
    text = MINI.replace("seeds = [0, 1]", 'seeds = [0]\nobjectives = ["adapter_gain"]\npruning = true')
    with pytest.raises(AblateInputError, match="only known at the end of a run"):
        parse_spec(text)


def test_ratio_objectives_that_reward_amplification_are_refused():
    text = MINI.replace("seeds = [0, 1]", 'seeds = [0]\nobjectives = ["grad_ratio_mean"]')
    with pytest.raises(AblateInputError, match="dilution_bypass"):
        parse_spec(text)


@pytest.mark.parametrize("role", ["baseline", "stage1"])
def test_a_trial_waits_for_a_baseline_leased_elsewhere(tmp_path, monkeypatch, role):
    """Another worker holds seed 0's baseline (or its Stage 1); the trial waits instead of failing, then
    takes the run over once the lease lapses, and every trial completes with its comparison computed."""
    monkeypatch.setattr(study_runner, "REFERENCE_POLL_S", 0.2)
    monkeypatch.setattr(study_runner, "BASELINE_LEASE_S", 1.5)
    text = MINI.replace("seeds = [0, 1]", "seeds = [0]\nfrozen_control = false").replace("trials = 4", "trials = 1")
    if role == "baseline":  # Stage 1 off: run before the baseline, it could outlast the 1.5 s lease
        text += "[stage1]\nenabled = false\n"
    url = sqlite_url(tmp_path / "w.db")
    spec = parse_spec(text)
    engine = open_storage(url)
    from ablate.spec import spec_hash

    objectives = [{"metric": m, "direction": d} for m, d in zip(spec.study.objectives, spec.study.directions)]
    meta = provenance.runtime_meta()
    sid = provenance.register_study(engine, "mini", "mini", text, spec_hash(text), objectives, meta)
    claims.start_run(engine, sid, role, None, 0, "no-branch", None, "cpu")  # the other worker's

    waits = []

    class Recorder(StudyReporter):
        def waiting(self, what: str) -> None:
            waits.append(what)

    out = run_study(spec, text, url, reporter=Recorder())
    assert waits and f"{role} seed 0" in waits[0]
    assert out.n_trials == 1 and out.failed == 0
    runs = query.runs_frame(engine, "mini")
    trial = runs[runs.role == "trial"].iloc[0]
    assert trial.status == "complete" and pd.notna(trial.loss_slope_rel) and pd.notna(trial.train_grad_ratio)


def test_study_on_postgresql(fresh_pg_url):
    text = MINI.replace("trials = 4", "trials = 2").replace("seeds = [0, 1]", "seeds = [0]")
    out = run_study(parse_spec(text), text, fresh_pg_url)
    assert out.n_trials == 2
    study = optuna.load_study(study_name="mini", storage=fresh_pg_url)
    assert len(study.get_trials()) == 2
    frame = query.runs_frame(open_storage(fresh_pg_url), "mini")
    assert len(frame) == 5 and set(frame.status) == {"complete"}  # 2 trials + Stage 1 + baseline + control
    trials = query.trials_frame(open_storage(fresh_pg_url), "mini")  # Optuna's states read by SQL on PostgreSQL
    assert list(trials.status) == ["complete", "complete"] and trials.ranked.all()
    _optuna_fails_one_trial_and_no_view_counts_it(fresh_pg_url)


def _optuna_fails_one_trial_and_no_view_counts_it(url: str) -> None:
    """A trial whose runs all completed but that Optuna holds FAIL (e.g. a NaN objective) is counted
    complete nowhere: not by --studies, not as a ranked trial, not in --group-by fix."""
    from ablate.store.catalog import study_rows

    engine = open_storage(url)
    before = {r.name: r.n_trials for r in study_rows(engine)}["mini"]
    study = optuna.load_study(study_name="mini", storage=url)
    victim = next(t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    with engine.begin() as conn:
        conn.execute(text("UPDATE trials SET state = 'FAIL' WHERE trial_id = :id"), {"id": victim._trial_id})
    assert {r.name: r.n_trials for r in study_rows(engine)}["mini"] == before - 1
    trials = query.trials_frame(engine, "mini")
    row = trials[trials.trial_number == victim.number].iloc[0]
    assert row.status == "failed" and not row.ranked
    groups = query.group_by_fix(engine, "mini")
    assert groups.n_trials.sum() == before - 1


def test_optuna_and_ablate_agree_on_a_failed_trial_sqlite(mini_study_db, tmp_path):
    _optuna_fails_one_trial_and_no_view_counts_it(sqlite_url(copy_db(mini_study_db, tmp_path / "r.db")))


def test_dashboard_serves_our_study(mini_study_db, tmp_path):
    import socket
    import urllib.request

    db = copy_db(mini_study_db, tmp_path / "copy.db")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen(
        [str(exe), sqlite_url(db), "--port", str(port), "--host", "127.0.0.1", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        body = None
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as resp:
                    body = json.loads(resp.read())
                    break
            except OSError:
                time.sleep(0.5)
        assert body is not None, "dashboard did not answer"
        names = [s["study_name"] for s in body["study_summaries"]]
        assert names == ["mini"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_env_storage_override(tmp_path, monkeypatch):
    from ablate.store.engine import storage_url

    monkeypatch.setenv("ABLATE_STORAGE", sqlite_url(tmp_path / "env.db"))
    assert storage_url(None) == sqlite_url(tmp_path / "env.db")
    assert storage_url("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.delenv("ABLATE_STORAGE")
    assert storage_url(None) == "sqlite:///results.db"
    assert os.environ.get("ABLATE_STORAGE") is None


def test_two_workers_share_one_sqlite_study(tmp_path):
    text = MINI.replace("seeds = [0, 1]", "seeds = [0]")
    spec = write_spec(tmp_path, text)
    db = tmp_path / "shared.db"
    cmd = study_cmd(spec, db)
    # The first worker creates the study; the second joins while it runs.
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    second = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for proc in (first, second):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    runs = _runs(db)
    assert len([r for r in runs if r[0] == "baseline"]) == 1
    assert len({r[:3] for r in runs}) == len(runs)  # no (role, trial, seed) twice
    study = optuna.load_study(study_name="mini", storage=sqlite_url(db))
    finished = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) >= 4  # an in-flight trial of the other worker may land past the count
    with sqlite3.connect(db) as con:
        assert con.execute("pragma integrity_check").fetchone() == ("ok",)


CLAIM_WORKER = """
import sys, time, optuna
from ablate.study.runner import _rdb_storage
optuna.logging.set_verbosity(optuna.logging.CRITICAL)
study = optuna.load_study(study_name="race", storage=_rdb_storage(sys.argv[1]))
log = open(sys.argv[2], "w")
def objective(trial):
    log.write(f"{trial.number}\\n"); log.flush(); time.sleep(0.02)
    return trial.suggest_float("x", 0, 1)
study.optimize(objective, n_trials=30)
"""


def test_sqlite_workers_never_claim_the_same_enqueued_trial(tmp_path):
    # Plain Optuna on SQLite lets two workers claim one WAITING trial (pysqlite runs the state check
    # outside the write transaction); measured here: 6 of 80 trials ran twice with 4 workers.
    url = sqlite_url(tmp_path / "claim.db")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="race", storage=url)
    for i in range(60):
        study.enqueue_trial({"x": i / 60})
    logs = [tmp_path / f"ran-{k}.txt" for k in range(3)]
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIM_WORKER, url, str(log)], stderr=subprocess.PIPE, text=True)
        for log in logs
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    ran = [int(line) for log in logs for line in log.read_text().split()]
    assert len(ran) == len(set(ran)) >= 60


@pytest.mark.parametrize("pack", [1, 3])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_three_workers_started_together_on_an_empty_database_all_finish(tmp_path, backend, pack, request):
    """Three workers at the same instant on an empty database: all start (Optuna's schema race is
    retried), together they finish exactly the trials asked for, every one a distinct parameter set,
    and every enqueued default arm runs once. The random sampler draws the scale-less 'none' again
    and again; those copies are skipped, never run. With pack = 3 (one seed) each worker asks for up
    to 3 trials at a time and trains them together (ablate/study/trial_pack.py)."""
    url = sqlite_url(tmp_path / "fresh.db") if backend == "sqlite" else request.getfixturevalue("fresh_pg_url")
    spec_text = MINI.replace("seeds = [0, 1]", 'seeds = [0]\nsampler = "random"').replace("trials = 4", "trials = 6")
    spec_text = spec_text.replace('device = "cpu"', f'device = "cpu"\npack = {pack}')
    spec = write_spec(tmp_path, spec_text.replace("steps = 6", "steps = 4"))
    cmd = [sys.executable, "-m", "ablate", "study", "run", str(spec), "--storage", url, "--quiet", "--no-plots"]
    env = {**os.environ, "ABLATE_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    engine = open_storage(url)
    with engine.connect() as conn:
        runs = conn.execute(text("select role, trial_number, seed, status from ablate_runs")).all()
    assert not any(r.status == "running" for r in runs)
    study = optuna.load_study(study_name="mini", storage=url)
    states = {t.state for t in study.trials}
    assert not states & {optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 6
    for fix in ("none", "fixed-scale", "tanh-gate"):
        assert sum(t.params == default_arm_params(fix) for t in complete) == 1, fix
    # Optuna's view and ablate's agree: one complete run per counted trial, none for a skipped one.
    trial_runs = sorted(r.trial_number for r in runs if r.role == "trial")
    assert trial_runs == sorted(t.number for t in complete)
    assert all(r.status == "complete" for r in runs)


# The kill points: by timing (somewhere in a run: the seed's Stage 1, its baseline, a trial), or
# exactly through ABLATE_FAULT (ablate/faults.py): in trial 0's second probe (the baseline's 60 steps
# probe at 0, 30 and 60), between its first flush's rows and their commit (the baseline flushes
# twice), and after its runs completed but before Optuna was told.
KILL_POINTS = {
    "stage1": None,
    "baseline": None,
    "trial": None,
    "probe": "probe:5",
    "flush": "flush:3",
    "finish": "finish:1",
}


@pytest.mark.parametrize("when", list(KILL_POINTS))
def test_a_worker_killed_outright_loses_only_its_run(tmp_path, when):
    """SIGKILL (no handler runs) at each point of a worker's work; the rerun, started at once,
    detects the dead run within about two heartbeats, fails and retries it, and ends with every
    default arm evaluated exactly once, no run left 'running' and no trial left RUNNING."""
    text = (
        MINI.replace("steps = 6", "steps = 60").replace("every = 3", "every = 30").replace("trials = 4", "trials = 3")
    )
    spec = write_spec(tmp_path, text.replace("seeds = [0, 1]", "seeds = [0]\nfrozen_control = false"))
    db = tmp_path / "results.db"
    env = {**os.environ, "ABLATE_HEARTBEAT_S": "1", "ABLATE_THREADS": "1"}
    if KILL_POINTS[when] is not None:
        proc = subprocess.run(
            study_cmd(spec, db), cwd=tmp_path, env={**env, "ABLATE_FAULT": KILL_POINTS[when]}, timeout=600
        )
        assert proc.returncode == -signal.SIGKILL
        role = "trial"
    else:
        proc = subprocess.Popen(study_cmd(spec, db), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                rows = _runs(db) if db.exists() else []
            except sqlite3.OperationalError:
                continue
            if any(r[0] == when and r[5] == "running" for r in rows):
                time.sleep(0.3)  # into the run: building, training or probing
                break
        proc.kill()
        proc.wait(timeout=60)
        role = when
    if when == "finish":  # its runs are complete; Optuna still holds the trial RUNNING
        states = [t.state for t in optuna.load_study(study_name="mini", storage=sqlite_url(db)).trials]
        assert optuna.trial.TrialState.RUNNING in states
    else:
        assert any(r[0] == role and r[5] == "running" for r in _runs(db)), "the kill did not land mid-run"

    done = subprocess.run(study_cmd(spec, db), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    runs = _runs(db)
    assert not any(r[5] == "running" for r in runs)
    study = optuna.load_study(study_name="mini", storage=sqlite_url(db))
    states = [t.state for t in study.get_trials()]
    assert optuna.trial.TrialState.RUNNING not in states
    complete = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    # Every enqueued default arm (none, fixed-scale, tanh-gate) finished exactly once.
    assert sorted(t.params["fix"] for t in complete) == ["fixed-scale", "none", "tanh-gate"]
    ok = [r for r in runs if r[5] == "complete"]
    assert sorted((r[0], r[3]) for r in ok) == sorted(
        [
            ("stage1", "no-branch"),
            ("baseline", "no-branch"),
            ("trial", "fixed-scale"),
            ("trial", "none"),
            ("trial", "tanh-gate"),
        ]
    )
    frame = query.trials_frame(open_storage(sqlite_url(db)), "mini")
    assert frame[frame.status == "complete"].train_grad_ratio.notna().all()
