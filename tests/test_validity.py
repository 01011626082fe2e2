"""The default objectives separate a known-good arm from a known-bad one on the quick default.

The known-good arm is the no-branch baseline (the adapters learn undisturbed); the known-bad arm is
the frozen control (the block adapters never move). Both run exactly as ``studies/quick.toml``
runs them, for every seed of that spec.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from ablate.objectives import OBJECTIVES, seed_value
from ablate.spec import load_spec
from ablate.store.schema import GROUPS
from ablate.train.arm import train_arm
from ablate.train.compare import compare_to_baseline

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
