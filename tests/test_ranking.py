"""The rules the per-fix table and the report share (ablate/ranking.py): the verdict against the
baseline, each fix's best trial, and the recommended trial."""

from __future__ import annotations

import math
import random

import pytest

from ablate import ranking
from ablate.stats import t_ppf


def _run(seed: int, **values: float) -> dict:
    return {"seed": seed, **values}


def test_paired_difference_pairs_by_seed_and_skips_unpaired_seeds() -> None:
    base = [_run(0, adapter_gain=0.30), _run(1, adapter_gain=0.36), _run(2, adapter_gain=0.33)]
    runs = [_run(2, adapter_gain=0.30), _run(0, adapter_gain=0.20), _run(1, adapter_gain=0.31), _run(5, adapter_gain=9)]
    diff = ranking.paired_difference("adapter_gain", runs, base)
    d = [-0.03, -0.10, -0.05]  # seed 5 has no baseline run: not paired
    m = sum(d) / 3
    half = t_ppf(0.975, 2) * math.sqrt(sum((x - m) ** 2 for x in d) / 2) / math.sqrt(3)
    assert (diff.estimate, diff.lo, diff.hi, diff.n) == pytest.approx((m, m - half, m + half, 3))


def test_dilution_is_compared_per_seed_as_the_objective_counts_it() -> None:
    """dilution_train of a seed is max(0, -log R); the baseline's R is 1, so its dilution is 0."""
    base = [_run(s, train_grad_ratio=1.0) for s in range(3)]
    runs = [_run(s, train_grad_ratio=r) for s, r in enumerate([0.5, 0.6, 0.55])]
    diff = ranking.paired_difference("dilution_train", runs, base)
    assert diff.estimate == pytest.approx(sum(-math.log(r) for r in (0.5, 0.6, 0.55)) / 3)
    assert ranking.versus_baseline(diff, "minimize") == "worse"


@pytest.mark.parametrize(
    "lo, hi, direction, want",
    [
        (0.1, 0.3, "maximize", "better"),
        (0.1, 0.3, "minimize", "worse"),
        (-0.3, -0.1, "maximize", "worse"),
        (-0.3, -0.1, "minimize", "better"),
        (-0.1, 0.2, "maximize", "≈ base"),
        (0.0, 0.2, "minimize", "≈ base"),
    ],
)
def test_verdict_is_the_side_of_zero_the_interval_lies_on(lo, hi, direction, want) -> None:
    from ablate.stats import Interval

    assert ranking.versus_baseline(Interval((lo + hi) / 2, lo, hi, 3, "seeds"), direction) == want


def test_verdict_separates_the_frozen_control_from_an_arm_like_the_baseline() -> None:
    """Known-bad (adapters that never learn: gain 0) reads 'worse'; an arm that learns like the
    baseline, up to noise, reads '≈ base'; one seed gives no interval, so no verdict."""
    rng = random.Random(1)
    base = [_run(s, adapter_gain=0.07 + rng.gauss(0, 0.02)) for s in range(4)]
    control = [_run(s, adapter_gain=0.0) for s in range(4)]
    alike = [_run(s, adapter_gain=r["adapter_gain"] + rng.gauss(0, 0.002)) for s, r in enumerate(base)]
    assert ranking.versus_baseline(ranking.paired_difference("adapter_gain", control, base), "maximize") == "worse"
    assert ranking.versus_baseline(ranking.paired_difference("adapter_gain", alike, base), "maximize") == "≈ base"
    one = ranking.paired_difference("adapter_gain", control[:1], base)
    assert one.n == 1 and ranking.versus_baseline(one, "maximize") == "-"


def _trial(number: int, fix: str, gain: float, dil: float, ranked: bool = True) -> dict:
    return {"trial_number": number, "fix": fix, "adapter_gain": gain, "dilution_train": dil, "ranked": ranked}


def test_recommendation_and_each_fix_best_trial() -> None:
    objectives = ["adapter_gain", "dilution_train"]
    trials = [
        _trial(0, "a", 0.5, 0.2),
        _trial(1, "a", 0.5, 0.1),  # ties trial 0 on gain, better dilution: on the front, trial 0 is not
        _trial(2, "b", 0.4, 0.0),
        _trial(3, "b", 0.9, 0.5, ranked=False),  # unranked: never counts
        _trial(4, "c", math.nan, 0.0),  # an objective unknown: cannot be ranked
        _trial(5, "c", 0.3, 0.3),
    ]
    ranked = ranking.rank_trials(trials, objectives)
    assert [(r["trial_number"], rank) for r, rank in ranked] == [(1, 1), (2, 1), (0, 2), (5, 3)]
    assert ranking.recommend(ranked)["trial_number"] == 1
    best = ranking.best_per_fix(ranked, "adapter_gain")
    assert list(best) == ["a", "b", "c"]  # best first on adapter_gain
    assert [best[f][0]["trial_number"] for f in best] == [1, 2, 5]
    assert ranking.recommend([]) is None


def test_the_fix_ranked_first_holds_the_recommended_trial() -> None:
    """On random studies (ties included) the first fix's best trial is the report's recommendation."""
    rng = random.Random(0)
    objectives = ["adapter_gain", "dilution_train"]
    for _ in range(200):
        trials = [
            _trial(i, rng.choice("abcd"), rng.randint(0, 4) / 4, rng.randint(0, 4) / 4, rng.random() > 0.1)
            for i in range(rng.randint(1, 25))
        ]
        ranked = ranking.rank_trials(trials, objectives)
        chosen = ranking.recommend(ranked)
        best = ranking.best_per_fix(ranked, "adapter_gain")
        if chosen is None:
            assert not best
            continue
        first = next(iter(best.values()))[0]
        assert first["trial_number"] == chosen["trial_number"]
