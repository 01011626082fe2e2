"""The default objectives separate a known-good arm from a known-bad one on the quick default.

The known-good arm is the no-branch baseline (the adapters learn undisturbed); the known-bad arm is
the frozen control (the block adapters never move). Both run exactly as ``studies/quick.toml``
runs them, for every seed of that spec.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from ablate.arms import train_arm
from ablate.engine.compare import compare_to_baseline
from ablate.objectives import OBJECTIVES, seed_value
from ablate.spec import load_spec

GROUPS = ("layers", "proj", "all")  # the AA-CLIP subject's groups and their union

QUICK = Path(__file__).resolve().parents[1] / "studies" / "quick.toml"


@pytest.mark.slow
def test_quick_default_objectives_separate_frozen_control_from_baseline():
    spec, _ = load_spec(QUICK)
    rows = {"baseline": [], "control": []}
    for seed in spec.study.seeds:
        base = train_arm(spec.arm("no-branch", None, seed))
        frozen = train_arm(spec.arm("no-branch", None, seed, frozen=True))
        for role, r in (("baseline", base), ("control", frozen)):
            row = r.summary()
            row.update(
                compare_to_baseline(
                    r.metrics, base.metrics, r.adapter_gain_batches, base.adapter_gain_batches, GROUPS, r.group
                )
            )
            rows[role].append(row)
    for name in spec.study.objectives:
        good = [seed_value(name, r) for r in rows["baseline"]]
        bad = [seed_value(name, r) for r in rows["control"]]
        sign = 1.0 if OBJECTIVES[name].direction == "maximize" else -1.0
        gap = sign * (statistics.mean(good) - statistics.mean(bad))
        spread = max(statistics.stdev(good), statistics.stdev(bad))
        # The control is never better than the baseline on any default objective ...
        assert gap >= 0.0, (name, good, bad)
        if name == "adapter_gain":
            # ... and on the gain it is worse by more than the seed-to-seed spread, on every seed.
            assert gap > spread, (good, bad)
            assert all(g > b for g, b in zip(good, bad)), (good, bad)
            assert bad == [0.0] * len(bad)


@pytest.mark.slow
def test_quick_default_dilution_sees_the_full_scale_branch_and_not_the_baseline():
    """Planted contrast on seed 0: the full-scale branch (`none`, the seed's bug) against the
    baseline itself. The training-time ratio puts `none` below 1 (interval excluded), the baseline
    compared with itself at exactly 1, while the seed's step-0 bypass probe sees no dilution at all
    (on this init it even reads amplification)."""
    spec, _ = load_spec(QUICK)
    base = train_arm(spec.arm("no-branch", None, 0))
    bug = train_arm(spec.arm("none", None, 0))
    args = (base.metrics, bug.adapter_gain_batches, base.adapter_gain_batches, GROUPS, "layers")
    bad = compare_to_baseline(bug.metrics, *args)
    good = compare_to_baseline(base.metrics, base.metrics, base.adapter_gain_batches, *args[2:])
    assert good["train_grad_ratio"] == 1.0 and seed_value("dilution_train", good) == 0.0
    assert bad["train_grad_ratio_hi"] < 1.0  # the whole 95% interval is below 1
    assert seed_value("dilution_train", bad) > 0.1
    assert bug.grad_ratio_init > 1.0  # the step-0 bypass probe misses what training shows
