"""Several trials of one fix type in one pack (training.pack >= 2 x seeds): the same numbers as one
trial at a time, trials independent inside the pack (divergence, pruning), faults repaired."""

from __future__ import annotations

import io
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys

import optuna
import pytest
import torch
from rich.console import Console

from ablate.console import PlainStudyReporter
from ablate.spec import parse_spec
from ablate.study.runner import run_study
from ablate.study.space import default_arm_params, scale_param
from tests.study_helpers import MINI, sqlite_url, write_spec

SEEDS = 2
SCALES = (0.05, 0.2, 0.7)  # three fixed-scale trials, enqueued in this order
FIXED_SCALE_ONLY = (
    MINI.replace('fixes = ["none", "fixed-scale", "tanh-gate"]', 'fixes = ["fixed-scale"]')
    .replace("trials = 4", "trials = 3")
    .replace("[study]", "[study]\nfrozen_control = false")
)


def packed_spec(pack: int, extra: str = "") -> str:
    return FIXED_SCALE_ONLY.replace('device = "cpu"', f'device = "cpu"\npack = {pack}') + extra


def run_enqueued(db, spec_text: str, scales=SCALES, reporter=None):
    """Create the study, enqueue one fixed-scale trial per scale (so every layout runs the same
    points), then run it as `ablate study run` does."""
    spec = parse_spec(spec_text)
    url = sqlite_url(db)
    study = optuna.create_study(study_name=spec.name, storage=url, directions=spec.study.directions)
    for s in scales:
        study.enqueue_trial({"fix": "fixed-scale", scale_param("fixed-scale"): s})
    out = run_study(spec, spec_text, storage=url, reporter=reporter)
    return out, optuna.load_study(study_name=spec.name, storage=url)


COLUMNS = "loss_slope, loss_last, adapter_gain, train_grad_ratio, grad_ratio_init, loss_slope_rel"


def trial_runs(db) -> dict[tuple[int, int], tuple]:
    """(trial, seed) -> (scale, status, packed_arms, error, *numbers) for every trial run."""
    with sqlite3.connect(db) as con:
        rows = con.execute(
            f"SELECT trial_number, seed, scale, status, packed_arms, error, {COLUMNS} FROM ablate_runs "
            "WHERE role = 'trial' ORDER BY trial_number, seed"
        ).fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def assert_same_numbers(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]  # scale
    for x, y in zip(a[4:], b[4:]):
        assert y == pytest.approx(x, rel=1e-3, abs=1e-6)


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory):
    db = tmp_path_factory.mktemp("single") / "results.db"
    out, study = run_enqueued(db, packed_spec(SEEDS))
    assert out.failed == 0
    return db, study


def test_trials_packed_together_store_what_they_store_one_at_a_time(one_at_a_time, tmp_path):
    single_db, single = one_at_a_time
    db = tmp_path / "results.db"
    log = io.StringIO()
    reporter = PlainStudyReporter(Console(file=log), ["adapter_gain", "dilution_train"])
    out, study = run_enqueued(db, packed_spec(3 * SEEDS), reporter=reporter)
    assert out.n_trials == 3 and out.failed == 0
    # The progress lines name each run's own trial and scale, though they trained in one pack.
    ends = re.findall(r"\] (trial .*): complete in", log.getvalue())
    assert ends == [f"trial {t} fixed-scale s={s:.3g} seed {seed}" for t, s in enumerate(SCALES) for seed in (0, 1)]
    alone, packed = trial_runs(single_db), trial_runs(db)
    assert alone.keys() == packed.keys() == {(t, s) for t in range(3) for s in range(SEEDS)}
    for key in alone:
        assert alone[key][1] == packed[key][1] == "complete"
        assert (alone[key][2], packed[key][2]) == (SEEDS, 3 * SEEDS)  # packed_arms
        assert_same_numbers(alone[key], packed[key])
    # Optuna's values (the objectives over seeds) agree too.
    for a, p in zip(single.trials, study.trials):
        assert a.params == p.params and p.state == optuna.trial.TrialState.COMPLETE
        assert p.values == pytest.approx(a.values, rel=1e-3, abs=1e-6)


def test_a_diverging_trial_fails_alone_and_its_pack_mates_finish_as_they_would(one_at_a_time, tmp_path, monkeypatch):
    """A planted NaN loss in one arm of the middle trial (scale 0.2): that trial fails (both its
    seeds' runs), the other two complete with the numbers they have when run one at a time."""
    from ablate.subjects.aaclip.packed import PackedAAClip

    compute = PackedAAClip.compute_loss

    def planted(self, batch):
        loss, out = compute(self, batch)
        if self.n_arms == 3 * SEEDS:  # arms: trial 0 seeds 0,1; trial 1 seeds 0,1; trial 2 ...
            mask = torch.ones(self.n_arms, dtype=loss.dtype)
            mask[SEEDS] = math.nan  # trial 1, seed 0
            loss = loss * mask
        return loss, out

    monkeypatch.setattr(PackedAAClip, "compute_loss", planted)
    db = tmp_path / "results.db"
    out, study = run_enqueued(db, packed_spec(3 * SEEDS))
    states = [t.state.name for t in study.trials]
    # The study still wants 3 trials: a fourth, drawn afresh, replaces the failed one.
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert out.failed == 1 and out.n_trials == 3
    runs, alone = trial_runs(db), trial_runs(one_at_a_time[0])
    for seed in range(SEEDS):
        status, _arms, error = runs[(1, seed)][1:4]
        assert status == "failed" and "non-finite loss at step 0" in error
        for t in (0, 2):
            assert runs[(t, seed)][1] == "complete"
            assert_same_numbers(alone[(t, seed)], runs[(t, seed)])
    # The failed trial is evidence nowhere: ablate's view holds the trials Optuna completed.
    from ablate.store import query
    from ablate.store.engine import open_storage

    frame = query.trials_frame(open_storage(sqlite_url(db)), "mini")
    assert sorted(frame[frame.status == "complete"].trial_number) == [0, 2, 3]
    failed = frame[frame.trial_number == 1].iloc[0]
    assert failed.status == "failed" and not failed.ranked


def test_a_trial_pruned_inside_a_pack_stops_alone(tmp_path, monkeypatch):
    """The pruner stops trial 1 at its first report (the flush after step 49); trials 0 and 2 train
    on to step 59, and nothing more of trial 1 is written."""
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 1)
    db = tmp_path / "results.db"
    extra = '\npruning = true\nobjectives = ["loss_slope"]\n'
    spec_text = (
        packed_spec(3 * SEEDS)
        .replace("frozen_control = false", "frozen_control = false" + extra)
        .replace("steps = 6", "steps = 60")
    )
    _out, study = run_enqueued(db, spec_text)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert "skipped" not in study.trials[1].user_attrs
    assert max(study.trials[1].intermediate_values) == 49
    with sqlite3.connect(db) as con:
        steps = dict(
            con.execute(
                "SELECT r.trial_number * 10 + r.seed, count(*) FROM ablate_step_metrics m "
                "JOIN ablate_runs r ON r.id = m.run_id WHERE r.role = 'trial' AND m.name = 'loss' "
                "GROUP BY r.id"
            ).fetchall()
        )
    assert steps == {t * 10 + s: 50 if t == 1 else 60 for t in range(3) for s in range(SEEDS)}
    runs = trial_runs(db)
    assert {runs[(t, s)][1] for t in (0, 2) for s in range(SEEDS)} == {"complete"}
    assert {runs[(1, s)][1] for s in range(SEEDS)} == {"pruned"}
    # Its evidence never ranks: ablate's view holds it pruned and unranked, as Optuna does.
    from ablate.store import query
    from ablate.store.engine import open_storage

    frame = query.trials_frame(open_storage(sqlite_url(db)), "mini").set_index("trial_number")
    assert frame.loc[1, "status"] == "pruned" and not frame.loc[1, "ranked"]
    assert frame.loc[[0, 2], "ranked"].all()


def test_packs_hold_one_fix_type_and_scale_less_fixes_pack_no_second_trial(tmp_path):
    text = (
        MINI.replace('fixes = ["none", "fixed-scale", "tanh-gate"]', 'fixes = ["none", "zero-init", "fixed-scale"]')
        .replace("trials = 4", 'trials = 6\nsampler = "random"\nsampler_seed = 3')
        .replace('device = "cpu"', 'device = "cpu"\npack = 6')
    )
    spec = parse_spec(text)
    url = sqlite_url(tmp_path / "results.db")
    out = run_study(spec, text, storage=url)
    assert out.n_trials == 6 and out.failed == 0
    study = optuna.load_study(study_name="mini", storage=url)
    counted = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(counted) == 6 and len({tuple(sorted(t.params.items())) for t in counted}) == 6
    with sqlite3.connect(tmp_path / "results.db") as con:
        packed = dict(
            con.execute("SELECT fix, max(packed_arms) FROM ablate_runs WHERE role = 'trial' GROUP BY fix").fetchall()
        )
    assert packed["none"] == packed["zero-init"] == SEEDS  # one trial per pack
    assert packed["fixed-scale"] > SEEDS  # its later trials packed together
    # The default arms were each run once, at their default scale.
    for fix in ("none", "zero-init", "fixed-scale"):
        assert sum(t.params == default_arm_params(fix) for t in counted) == 1


def test_a_worker_killed_mid_pack_leaves_trials_the_next_run_retries(tmp_path):
    """SIGKILL between a packed flush's rows and their commit: every trial of the pack is left
    RUNNING; the next run fails and retries each, and ends with exactly 3 counted trials."""
    spec = write_spec(tmp_path, packed_spec(3 * SEEDS).replace("steps = 6", "steps = 40"))
    db = tmp_path / "results.db"
    directions = parse_spec(spec.read_text()).study.directions
    study = optuna.create_study(study_name="mini", storage=sqlite_url(db), directions=directions)
    for s in SCALES:
        study.enqueue_trial({"fix": "fixed-scale", scale_param("fixed-scale"): s})
    env = {**os.environ, "ABLATE_HEARTBEAT_S": "1", "ABLATE_THREADS": "1"}
    cmd = [sys.executable, "-m", "ablate", "study", "run", str(spec), "--storage", sqlite_url(db), "--quiet"]
    # flush:3 is the trial pack's first flush (the 2 packed baselines flush once per arm before it).
    killed = subprocess.run(cmd, cwd=tmp_path, env={**env, "ABLATE_FAULT": "flush:3"}, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    states = [t.state.name for t in optuna.load_study(study_name="mini", storage=sqlite_url(db)).trials]
    assert states == ["RUNNING"] * 3
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="mini", storage=sqlite_url(db)).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params[scale_param("fixed-scale")] for t in complete) == sorted(SCALES)
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    runs = trial_runs(db)
    by_status = {}
    for (trial, _seed), row in runs.items():
        by_status.setdefault(row[1], set()).add(trial)
    assert by_status["complete"] == {t.number for t in complete}
    assert "running" not in by_status
    # The retries ran packed again.
    assert {runs[(t.number, s)][2] for t in complete for s in range(SEEDS)} == {3 * SEEDS}
