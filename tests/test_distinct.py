"""Counted once: no parameter set runs twice, and a study never finishes more trials than asked."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from ablate.spec import parse_spec
from ablate.store import open_storage, query
from ablate.study import run_study
from ablate.study.distinct import SKIPPED_ATTR, counted, skip_reason
from tests.study_helpers import MINI, sqlite_url

DIST = {"fix": CategoricalDistribution(["none", "zero-init"])}


def _trial(number: int, state: TrialState, fix: str, **attrs: object) -> optuna.trial.FrozenTrial:
    t = create_trial(state=state, params={"fix": fix}, distributions=DIST, user_attrs=attrs,
                     values=[1.0] if state == TrialState.COMPLETE else None)  # fmt: skip
    t.number = number
    return t


def test_the_lower_numbered_trial_wins_and_failed_or_skipped_ones_hold_nothing():
    trials = [
        _trial(0, TrialState.COMPLETE, "none"),
        _trial(1, TrialState.FAIL, "zero-init"),  # a killed run: its point is free again
        _trial(2, TrialState.PRUNED, "zero-init", **{SKIPPED_ATTR: "duplicate of trial 9"}),
        _trial(3, TrialState.RUNNING, "zero-init"),
    ]
    assert skip_reason(trials, 4, {"fix": "none"}, total=10) == "duplicate of trial 0"
    assert skip_reason(trials, 4, {"fix": "zero-init"}, total=10) == "duplicate of trial 3"
    # Trial 3 only sees lower numbers: trial 1 failed and trial 2 was skipped, so 3 runs.
    assert skip_reason(trials, 3, {"fix": "zero-init"}, total=10) is None
    # Two trials (0 and 3) hold places; a third new point is surplus when the study wants 2.
    assert skip_reason(trials, 4, {"fix": "other"}, total=2) == "the study already has its 2 trials"
    assert skip_reason(trials, 4, {"fix": "other"}, total=3) is None
    assert [t.number for t in counted(trials)] == [0]


def test_a_waiting_trial_holds_its_enqueued_parameters():
    waiting = create_trial(state=TrialState.WAITING, system_attrs={"fixed_params": {"fix": "none"}})
    waiting.number = 0
    assert skip_reason([waiting], 1, {"fix": "none"}, total=5) == "duplicate of trial 0"


def test_resumes_with_a_seeded_random_sampler_never_repeat_a_parameter_set(tmp_path):
    """The seeded sampler used to restart its stream on every resume: --trials 4, then 5, then 6
    re-drew trial 0's point. Now every counted trial is a new point, and the copies the sampler
    still draws (the scale-less 'none' again) are skipped before they train or write anything."""
    text = MINI.replace("seeds = [0, 1]", 'seeds = [0]\nsampler = "random"\nfrozen_control = false')
    text = text.replace("steps = 6", "steps = 3")
    spec = parse_spec(text)
    url = sqlite_url(tmp_path / "results.db")
    for n in (4, 5, 6, 7):
        outcome = run_study(spec, text, url, n_trials=n)
        assert outcome.n_trials == n
    study = optuna.load_study(study_name="mini", storage=url)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 7
    points = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(points)) == 7
    skipped = [t for t in study.trials if SKIPPED_ATTR in t.user_attrs]
    assert all(t.state == TrialState.PRUNED for t in skipped)
    assert all(t.user_attrs[SKIPPED_ATTR].startswith("duplicate of trial") for t in skipped)
    frame = query.trials_frame(open_storage(url), "mini")
    # ablate's tables hold exactly Optuna's counted trials: no run row for a skipped one.
    assert sorted(frame.trial_number) == sorted(t.number for t in complete)
    assert set(frame.status) == {"complete"}


def test_a_search_without_scales_refuses_more_trials_than_it_has_points():
    from ablate.errors import AblateInputError

    text = MINI.replace('["none", "fixed-scale", "tanh-gate"]', '["none", "zero-init"]')
    try:
        parse_spec(text.replace("trials = 4", "trials = 3"))
    except AblateInputError as exc:
        assert exc.field == "study.trials" and "only 2 distinct parameter sets" in exc.message
    else:
        raise AssertionError("accepted 3 trials over 2 points")
    assert parse_spec(text.replace("trials = 4", "trials = 2")).max_distinct_trials == 2
