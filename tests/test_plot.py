"""Plot package: assert on the extracted numbers; render every kind once to check the files."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablate.errors import AblateInputError
from ablate.plot import (
    KINDS,
    NoPlotData,
    ReferenceMark,
    best_trial_per_fix,
    extract_gates,
    extract_grad_norms,
    extract_loss_curves,
    extract_ratio_vs_scale,
    extract_tradeoff,
    pareto_front,
    ranked_runs,
)
from ablate.stats import t_ppf

NAN = float("nan")
RUN_COLUMNS = [
    "run_id", "study", "trial_number", "role", "seed", "fix", "scale", "status", "loss_slope",
    "loss_slope_rel", "loss_first", "loss_last", "train_grad_ratio", "grad_ratio_init",
]  # fmt: skip
STEP_COLUMNS = ["run_id", "role", "trial_number", "seed", "fix", "scale", "step", "name", "value"]

# (trial, role, fix, scale, seed, status, train_grad_ratio, loss_slope); references have no trial.
RUN_SPECS = [
    (0, "trial", "none", NAN, 0, "complete", 0.2, -0.10),
    (0, "trial", "none", NAN, 1, "complete", 0.8, -0.20),
    (1, "trial", "fixed-scale", 0.1, 0, "complete", 0.5, -0.50),
    (1, "trial", "fixed-scale", 0.1, 1, "complete", 2.0, -0.70),
    (2, "trial", "fixed-scale", 1.0, 0, "complete", 0.6, -0.90),
    (2, "trial", "fixed-scale", 1.0, 1, "failed", 5.0, -100.0),  # must be ignored everywhere
    (3, "trial", "learnable-alpha", 0.0, 0, "complete", 1.0, -0.30),
    (3, "trial", "learnable-alpha", 0.0, 1, "complete", 1.0, -0.30),
    (4, "trial", "tanh-gate", 0.5, 0, "complete", 0.95, -0.80),
    (4, "trial", "tanh-gate", 0.5, 1, "complete", 0.95, -0.80),
    (5, "trial", "zero-init", NAN, 0, "complete", 1.1, -0.20),
    (6, "trial", "layerscale", 1e-4, 0, "complete", 1.0, -0.40),
    (7, "trial", "norm-match", 0.5, 0, "pruned", 0.99, -9.0),
    (8, "trial", "fixed-scale+zero-init", 0.1, 0, "complete", 1.05, -0.60),
    (9, "trial", "layerscale", 1e-4, 0, "complete", 0.25, -0.10),  # same config as trial 6: pooled
    (None, "baseline", "no-branch", NAN, 0, "complete", NAN, -1.00),
    (None, "baseline", "no-branch", NAN, 1, "complete", NAN, -1.20),
    (None, "baseline", "no-branch", NAN, 2, "failed", NAN, 50.0),
    (None, "control", "no-branch", NAN, 0, "complete", 1e-6, 0.0),  # frozen adapters: never the baseline
    (None, "control", "no-branch", NAN, 1, "complete", 1e-6, 0.0),
]
N_STEPS = 5
CONTROL_VALUE = 1000.0  # what the control logs for every step metric: shows up if it leaks in


def make_runs(specs=RUN_SPECS) -> pd.DataFrame:
    rows = []
    for run_id, (trial, role, fix, scale, seed, status, ratio, slope) in enumerate(specs):
        rows.append({
            "run_id": run_id, "study": "s1", "trial_number": pd.NA if trial is None else trial, "role": role,
            "seed": seed, "fix": fix, "scale": scale, "status": status, "loss_slope": slope,
            "loss_slope_rel": NAN, "loss_first": 3.0, "loss_last": 2.0, "train_grad_ratio": ratio,
            "grad_ratio_init": 2 * ratio,
        })  # fmt: skip
    # trial_number is nullable Int64, as in query.runs_frame
    return pd.DataFrame(rows, columns=RUN_COLUMNS).astype({"trial_number": "Int64"})


def loss_value(run_id: int, seed: int, step: int) -> float:
    return 3.0 - 0.1 * step + 0.05 * seed + 0.001 * run_id


def raw_gate(seed: int, step: int) -> float:
    return 0.25 * step + 0.1 * seed


GATE_NAMES = {"learnable-alpha": "gate/alpha", "tanh-gate": "gate/tanh_alpha", "layerscale": "gate/layerscale_mean"}


def make_steps(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in runs.itertuples():
        for step in range(N_STEPS):
            if r.role == "control":
                vals = dict.fromkeys(("loss", "grad_norm_layers", "grad_norm_proj"), CONTROL_VALUE)
            else:
                layers = 1.0 + step + r.seed
                vals = {"loss": loss_value(r.run_id, r.seed, step), "grad_norm_layers": layers}
                vals["grad_norm_proj"] = 10.0 * layers
            if r.role == "trial":
                # zero at step 0 exercises the log-axis masking of the renderer
                vals["grad_norm_branch"] = 0.0 if step == 0 else 0.5 * step + r.seed
            elif r.role == "baseline":  # a stray row: the baseline has no branch, so never in that panel
                vals["grad_norm_branch"] = CONTROL_VALUE
            if r.fix in GATE_NAMES:
                vals[GATE_NAMES[r.fix]] = raw_gate(r.seed, step)
            for name, value in vals.items():
                rows.append((r.run_id, r.role, r.trial_number, r.seed, r.fix, r.scale, step, name, value))
    return pd.DataFrame(rows, columns=STEP_COLUMNS)


def run_ids(runs: pd.DataFrame, role: str, status: str = "complete") -> list[int]:
    return runs.loc[(runs["role"] == role) & (runs["status"] == status), "run_id"].tolist()


# The trials frame (query.trials_frame) for the tradeoff, x = dilution_train (minimise),
# y = adapter_gain (maximise): (trial, fix, scale, status, ranked, n_seeds, x, y).
X, Y = "dilution_train", "adapter_gain"
TRIAL_SPECS = [
    (0, "none", NAN, "complete", True, 3, 0.5, 0.10),  # dominated by 2
    (1, "fixed-scale", 0.1, "complete", True, 3, 0.0, 0.05),  # front: least dilution
    (2, "fixed-scale", 1.0, "complete", True, 3, 0.2, 0.30),  # front
    (3, "tanh-gate", 0.5, "complete", True, 3, 0.3, 0.25),  # dominated by 2
    (4, "zero-init", NAN, "complete", True, 3, 0.6, 0.40),  # front: most gain
    # Unranked trials whose numbers beat every ranked one: never points, never on the front.
    (5, "layerscale", 1e-4, "pruned", False, 3, 0.0, 0.90),
    (6, "norm-match", 0.5, "failed", False, 1, 0.0, 0.95),
    (7, "learnable-alpha", 0.0, "complete", False, 2, 0.0, 1.00),  # complete, but a seed missing
    (8, "fixed-scale+zero-init", 0.1, "complete", True, 3, 0.0, NAN),  # ranked, but no y: not plotted
]
UNRANKED = {5, 6, 7}


def make_trials(specs=TRIAL_SPECS) -> pd.DataFrame:
    rows = []
    for number, fix, scale, status, ranked, n_seeds, x, y in specs:
        rows.append({
            "study": "s1", "trial_number": number, "fix": fix, "scale": scale, "status": status,
            "ranked": ranked, "n_seeds": n_seeds, "seeds_wanted": 3,
            X: x, f"{X}_lo": x - 0.05, f"{X}_hi": x + 0.1, Y: y, f"{Y}_lo": y - 0.02, f"{Y}_hi": y + 0.03,
        })  # fmt: skip
    return pd.DataFrame(rows).astype({"trial_number": "int64", "n_seeds": "int64", "ranked": "bool"})


def make_references() -> pd.DataFrame:
    """Reference rows as ``query.group_by_fix`` returns them (the caller keeps only these labels)."""
    return pd.DataFrame(
        [
            {"study": "s1", "fix": "no-branch (baseline)", "n_seeds": 3, X: 0.0, f"{X}_lo": 0.0, f"{X}_hi": 0.0,
             Y: 0.35, f"{Y}_lo": 0.30, f"{Y}_hi": 0.41},
            {"study": "s1", "fix": "frozen (control)", "n_seeds": 2, X: 13.8, f"{X}_lo": 13.0,
             f"{X}_hi": 14.0, Y: 0.0, f"{Y}_lo": NAN, f"{Y}_hi": NAN},
        ]
    )  # fmt: skip


@pytest.fixture
def runs() -> pd.DataFrame:
    return make_runs()


@pytest.fixture
def steps(runs: pd.DataFrame) -> pd.DataFrame:
    return make_steps(runs)


@pytest.fixture
def trials() -> pd.DataFrame:
    return make_trials()


@pytest.fixture
def references() -> pd.DataFrame:
    return make_references()


def tradeoff(trials: pd.DataFrame, references: pd.DataFrame | None = None, threshold: float | None = 0.8):
    return extract_tradeoff(trials, references, X, Y, "minimize", "maximize", threshold=threshold)


# ---------------------------------------------------------------------------------------------
# Pareto front
# ---------------------------------------------------------------------------------------------


def test_pareto_basic_max_x_min_y() -> None:
    pts = [(0.5, -1.0), (1.0, 0.0), (0.8, -0.5), (0.6, 0.5), (0.9, -0.4)]
    # (0.6, 0.5) is dominated by (0.8, -0.5); (0.9, -0.4) is not dominated by anything.
    assert pareto_front(pts) == [0, 2, 4, 1]


def test_pareto_ties_and_duplicates() -> None:
    # Exact duplicates both stay; same x with a worse y is dominated; same y with a worse x too.
    pts = [(1.0, -1.0), (1.0, -1.0), (1.0, -0.5), (0.5, -1.0), (0.2, -2.0)]
    assert pareto_front(pts) == [4, 0, 1]


def test_pareto_nan_excluded_and_empty() -> None:
    pts = [(NAN, -5.0), (1.0, NAN), (0.5, 0.0), (0.4, 1.0)]
    assert pareto_front(pts) == [2]
    assert pareto_front([]) == []
    assert pareto_front([(NAN, NAN)]) == []


def test_pareto_other_directions() -> None:
    pts = [(0.0, 0.0), (1.0, 1.0), (0.5, 2.0)]
    assert pareto_front(pts, maximize_x=False, minimize_y=True) == [0]
    assert pareto_front(pts, maximize_x=True, minimize_y=False) == [2, 1]
    assert pareto_front(pts, maximize_x=False, minimize_y=False) == [0, 2]


# ---------------------------------------------------------------------------------------------
# (a) tradeoff: one point per ranked trial of the trials frame
# ---------------------------------------------------------------------------------------------


def test_tradeoff_points_values_and_order(trials: pd.DataFrame) -> None:
    data = tradeoff(trials)
    # ranked trials with both values, in fix display order (none, fixed-scale, zero-init, tanh-gate)
    assert [p.trial_number for p in data.points] == [0, 1, 2, 4, 3]
    assert list(data.by_fix()) == ["none", "fixed-scale", "zero-init", "tanh-gate"]
    assert [p.trial_number for p in data.by_fix()["fixed-scale"]] == [1, 2]
    p = {q.trial_number: q for q in data.points}[2]
    assert (p.study, p.fix, p.scale, p.status, p.ranked, p.n_seeds) == ("s1", "fixed-scale", 1.0, "complete", True, 3)
    assert (p.x, p.x_lo, p.x_hi) == pytest.approx((0.2, 0.15, 0.3))
    assert (p.y, p.y_lo, p.y_hi) == pytest.approx((0.30, 0.28, 0.33))
    assert math.isnan({q.trial_number: q for q in data.points}[0].scale)
    assert (data.x_metric, data.y_metric, data.x_direction, data.y_direction) == (X, Y, "minimize", "maximize")
    assert data.studies == ("s1",)
    assert data.references == ()


def test_tradeoff_front_uses_the_directions(trials: pd.DataFrame) -> None:
    data = tradeoff(trials)
    assert [p.trial_number for p in data.front] == [1, 2, 4]  # least dilution, most gain; sorted by x
    assert all(p.ranked for p in data.front)
    # The same points read with the other directions have another front: the args are used.
    flipped = extract_tradeoff(trials, None, X, Y, "maximize", "minimize")
    assert [p.trial_number for p in flipped.front] == [1, 0, 4]


def test_tradeoff_unranked_better_trial_is_not_ranked(trials: pd.DataFrame) -> None:
    """A pruned / failed / incomplete trial with better numbers than every ranked one is drawn
    apart: not a point, not on the front, listed in ``unranked``."""
    data = tradeoff(trials)
    points = {p.trial_number for p in data.points}
    front = {p.trial_number for p in data.front}
    unranked = {p.trial_number: p for p in data.unranked}
    assert UNRANKED <= set(unranked)
    assert not (UNRANKED & points) and not (UNRANKED & front)
    assert {n: (unranked[n].status, unranked[n].ranked) for n in UNRANKED} == {
        5: ("pruned", False),
        6: ("failed", False),
        7: ("complete", False),
    }
    assert (unranked[7].x, unranked[7].y, unranked[7].n_seeds) == (0.0, 1.0, 2)
    # A ranked trial without a y value cannot be placed: neither a point nor on the front.
    assert 8 not in points and 8 not in front and 8 in unranked
    # Every trial is listed exactly once.
    assert sorted(points | set(unranked)) == list(range(len(TRIAL_SPECS)))


def test_tradeoff_references(trials: pd.DataFrame, references: pd.DataFrame) -> None:
    data = tradeoff(trials, references)
    base, control = data.references
    assert base == ReferenceMark("no-branch (baseline)", 0.0, 0.0, 0.0, 0.35, 0.30, 0.41, 3)
    assert (control.label, control.x, control.x_lo, control.x_hi, control.y, control.n_seeds) == (
        "frozen (control)", 13.8, 13.0, 14.0, 0.0, 2,
    )  # fmt: skip
    assert math.isnan(control.y_lo) and math.isnan(control.y_hi)
    # References are marks, never points or front members.
    assert [p.trial_number for p in data.front] == [1, 2, 4]


def test_tradeoff_threshold_on_dilution_axis_only(trials: pd.DataFrame) -> None:
    assert tradeoff(trials, threshold=0.8).threshold_x == pytest.approx(-math.log(0.8))
    assert tradeoff(trials, threshold=0.5).threshold_x == pytest.approx(math.log(2.0))
    assert tradeoff(trials, threshold=1.25).threshold_x == 0.0  # R > 1: clamped at no dilution
    assert tradeoff(trials, threshold=None).threshold_x is None
    # x is not a dilution: the probe threshold has no place on it.
    swapped = extract_tradeoff(trials, None, Y, X, "maximize", "minimize", threshold=0.8)
    assert swapped.threshold_x is None
    assert [p.trial_number for p in swapped.front] == [1, 2, 4]


def test_tradeoff_interval_text(trials: pd.DataFrame) -> None:
    assert tradeoff(trials).interval == "95% interval over seeds"
    one_seed = trials.assign(n_seeds=1)
    text = tradeoff(one_seed).interval
    assert "within" in text and "over seeds" not in text
    # One ranked trial with a single seed is enough to make the bars within-seed.
    mixed = trials.copy()
    mixed.loc[mixed["trial_number"] == 3, "n_seeds"] = 1
    assert "within" in tradeoff(mixed).interval
    # Unranked trials' seeds do not count (trial 6 has one seed).
    assert tradeoff(trials[trials["trial_number"] != 3]).interval == "95% interval over seeds"


def test_tradeoff_nothing_ranked_raises_one_line(trials: pd.DataFrame) -> None:
    with pytest.raises(NoPlotData, match="no ranked trial") as exc:
        tradeoff(trials.assign(ranked=False))
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value, ValueError)
    with pytest.raises(NoPlotData, match="no ranked trial"):  # ranked, but y never computed
        tradeoff(trials.assign(**{Y: NAN}))
    with pytest.raises(NoPlotData):
        tradeoff(trials.iloc[0:0])
    with pytest.raises(AblateInputError, match="dilution_nope"):
        extract_tradeoff(trials, None, "dilution_nope", Y, "minimize", "maximize")
    with pytest.raises(AblateInputError, match="ranked"):
        tradeoff(trials.drop(columns="ranked"))


# ---------------------------------------------------------------------------------------------
# ranked_runs: what the per-run plots may draw
# ---------------------------------------------------------------------------------------------


def test_ranked_runs_keeps_references_and_ranked_trials(runs: pd.DataFrame) -> None:
    trials = pd.DataFrame(
        {"trial_number": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "ranked": [1, 1, 0, 1, 1, 1, 1, 0, 1, 1]}
    ).astype({"ranked": "bool"})
    kept = ranked_runs(runs, trials)
    kept_trials = set(kept.loc[kept["role"] == "trial", "trial_number"].astype(int))
    assert kept_trials == {0, 1, 3, 4, 5, 6, 8, 9}
    # both seeds of trial 2 go, the complete one too: a trial with a failed seed is not ranked
    assert set(runs.loc[runs["trial_number"] == 2, "run_id"]).isdisjoint(kept["run_id"])
    # every reference run stays (baseline and control, whatever their status)
    refs = runs[runs["role"] != "trial"]
    assert set(refs["run_id"]) <= set(kept["run_id"])
    assert len(kept) == len(refs) + len(runs[runs["trial_number"].isin(list(kept_trials))])
    # so an unranked trial's complete seed can no longer stand for its fix
    assert best_trial_per_fix(runs)["fixed-scale"].trial_number == 2
    assert best_trial_per_fix(kept)["fixed-scale"].trial_number == 1
    # nothing ranked: only the references are left
    none = ranked_runs(runs, trials.assign(ranked=False))
    assert set(none["role"]) == {"baseline", "control"}


# ---------------------------------------------------------------------------------------------
# (b) loss curves, (e) grad norms: best trial per fix
# ---------------------------------------------------------------------------------------------


def test_best_trial_per_fix(runs: pd.DataFrame) -> None:
    best = best_trial_per_fix(runs)
    assert best["fixed-scale"].trial_number == 2  # -0.9 beats -0.6; the failed seed's -100 ignored
    assert best["fixed-scale"].run_ids == (4,)
    assert best["none"].trial_number == 0
    assert best["layerscale"].trial_number == 6  # -0.4 beats trial 9's -0.1
    assert best["fixed-scale"].mean_slope == pytest.approx(-0.9)
    assert "no-branch" not in best and "norm-match" not in best  # references / only pruned
    assert list(best) == [
        "none", "fixed-scale", "fixed-scale+zero-init", "learnable-alpha", "zero-init", "tanh-gate", "layerscale",
    ]  # fmt: skip


def test_loss_curves(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    data = extract_loss_curves(steps, runs)
    assert "lowest mean loss_slope" in data.selection
    curves = {c.fix: c for c in data.curves}
    fs = curves["fixed-scale"]
    assert fs.trial_number == 2 and fs.n_seeds == 1
    np.testing.assert_allclose(fs.mean, [loss_value(4, 0, s) for s in range(N_STEPS)])
    none = curves["none"]  # trial 0: run ids 0 and 1, seeds 0 and 1
    expect = [[loss_value(0, 0, s), loss_value(1, 1, s)] for s in range(N_STEPS)]
    np.testing.assert_allclose(none.mean, np.mean(expect, axis=1))
    np.testing.assert_allclose(none.lo, np.min(expect, axis=1))
    np.testing.assert_allclose(none.hi, np.max(expect, axis=1))
    np.testing.assert_array_equal(none.steps, np.arange(N_STEPS))
    # the baseline: its complete no-branch runs only (not the failed seed, not the control)
    base = data.baseline
    assert base is not None and base.n_seeds == 2 and base.trial_number is None
    (b0, b1) = run_ids(runs, "baseline")
    np.testing.assert_allclose(base.mean, [(loss_value(b0, 0, s) + loss_value(b1, 1, s)) / 2 for s in range(N_STEPS)])
    assert base.label == "no-branch (baseline)"


def test_grad_norms_three_panels(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    data = extract_grad_norms(steps, runs)
    layers = {c.fix: c for c in data.panel("layers")}
    proj = {c.fix: c for c in data.panel("proj")}
    branch = {c.fix: c for c in data.panel("branch")}
    # the baseline is appended, last, to the adapter panels only: without a branch there is no branch gradient
    assert data.panel("layers")[-1].fix == "no-branch" and data.panel("proj")[-1].fix == "no-branch"
    assert "no-branch" not in branch
    assert [c.fix for c in data.panel("branch")] == [c.fix for c in data.panel("layers")[:-1]]
    assert layers["fixed-scale"].trial_number == 2
    np.testing.assert_allclose(layers["none"].mean, [1.5 + s for s in range(N_STEPS)])  # seeds 0, 1
    np.testing.assert_allclose(layers["none"].lo, [1.0 + s for s in range(N_STEPS)])
    np.testing.assert_allclose(layers["none"].hi, [2.0 + s for s in range(N_STEPS)])
    np.testing.assert_allclose(proj["none"].mean, [15.0 + 10 * s for s in range(N_STEPS)])
    np.testing.assert_allclose(branch["none"].mean, [0.0] + [0.5 * s + 0.5 for s in range(1, N_STEPS)])
    # baseline: seeds 0 and 1; the control's 1000s and the failed seed stay out
    base_layers, base_proj = layers["no-branch"], proj["no-branch"]
    assert base_layers.n_seeds == 2 and base_layers.trial_number is None
    np.testing.assert_allclose(base_layers.mean, [1.5 + s for s in range(N_STEPS)])
    np.testing.assert_allclose(base_proj.hi, [20.0 + 10 * s for s in range(N_STEPS)])


def test_grad_norms_old_metric_name_is_not_read(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    old = steps[steps["name"] == "grad_norm_layers"].assign(name="grad_norm_adapter")
    with pytest.raises(NoPlotData, match="grad_norm_layers"):
        extract_grad_norms(old, runs, groups=("layers", "proj"))
    only_proj = extract_grad_norms(steps[steps["name"] == "grad_norm_proj"], runs)
    assert only_proj.panel("layers") == () and only_proj.panel("branch") == ()
    assert only_proj.panel("proj")[-1].fix == "no-branch"


def test_curves_need_steps(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="no 'loss' step metrics"):
        extract_loss_curves(steps[steps["name"] != "loss"], runs)
    with pytest.raises(ValueError, match="no complete trial runs"):
        extract_grad_norms(steps, runs.assign(status="running"))


# ---------------------------------------------------------------------------------------------
# (c) ratio vs scale: geometric means per (fix, scale)
# ---------------------------------------------------------------------------------------------


def test_ratio_vs_scale_geometric_means(runs: pd.DataFrame) -> None:
    data = extract_ratio_vs_scale(runs, threshold=0.7)
    assert data.ratio_metric == "train_grad_ratio" and data.threshold == 0.7
    series = {s.fix: s for s in data.series}
    assert list(series) == ["fixed-scale", "fixed-scale+zero-init", "learnable-alpha", "tanh-gate", "layerscale"]
    fs = series["fixed-scale"]
    np.testing.assert_allclose(fs.scale, [0.1, 1.0])
    # 0.5 and 2.0 average to 1 geometrically (arithmetically 1.25); the failed seed's 5.0 is ignored
    np.testing.assert_allclose(fs.ratio, [1.0, 0.6])
    # 95% t-interval of the geometric mean over the runs, on the logs; one run has none
    half = t_ppf(0.975, 1) * np.std(np.log([0.5, 2.0]), ddof=1) / np.sqrt(2)
    np.testing.assert_allclose([fs.ratio_lo[0], fs.ratio_hi[0]], [np.exp(-half), np.exp(half)])
    assert np.isnan(fs.ratio_lo[1]) and np.isnan(fs.ratio_hi[1])
    assert not data.one_scale_per_fix  # fixed-scale ran at 0.1 and 1
    np.testing.assert_array_equal(fs.n_runs, [2, 1])
    # trials 6 and 9 drew the same layerscale: one configuration, pooled (sqrt(1.0 * 0.25))
    ls = series["layerscale"]
    np.testing.assert_allclose(ls.scale, [1e-4])
    np.testing.assert_allclose(ls.ratio, [0.5])
    np.testing.assert_array_equal(ls.n_runs, [2])
    # Log-axis data: every plotted scale is > 0; alpha init 0 goes to the separate zero panel.
    assert all((s.scale > 0).all() for s in data.series)
    la = series["learnable-alpha"]
    assert la.scale.size == 0
    np.testing.assert_allclose(la.zero_scale, [0.0])
    np.testing.assert_allclose(la.zero_ratio, [1.0])
    np.testing.assert_array_equal(la.zero_n_runs, [2])
    # Fixes without a scale: levels, also geometric (sqrt(0.2 * 0.8) = 0.4, not 0.5).
    levels = {lv.fix: lv for lv in data.unscaled}
    assert {f: lv.ratio for f, lv in levels.items()} == pytest.approx({"none": 0.4, "zero-init": 1.1})
    assert (levels["none"].n_runs, levels["zero-init"].n_runs) == (2, 1)
    # the references (baseline, control) are never series or levels
    assert "no-branch" not in series and "no-branch" not in levels


def test_ratio_vs_scale_other_metric_and_missing(runs: pd.DataFrame) -> None:
    data = extract_ratio_vs_scale(runs, ratio_metric="grad_ratio_init")
    fs = {s.fix: s for s in data.series}["fixed-scale"]
    np.testing.assert_allclose(fs.ratio, [2.0, 1.2])  # grad_ratio_init = 2 x train_grad_ratio
    assert data.ratio_metric == "grad_ratio_init"
    with pytest.raises(AblateInputError, match="grad_ratio_nope"):
        extract_ratio_vs_scale(runs, ratio_metric="grad_ratio_nope")
    with pytest.raises(NoPlotData, match="train_grad_ratio"):
        extract_ratio_vs_scale(runs.assign(train_grad_ratio=NAN))


# ---------------------------------------------------------------------------------------------
# (d) gates
# ---------------------------------------------------------------------------------------------


def test_gates_tanh_applied(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    data = extract_gates(steps, runs)
    assert [(g.fix, g.trial_number) for g in data.series] == [
        ("learnable-alpha", 3), ("tanh-gate", 4), ("layerscale", 6), ("layerscale", 9),
    ]  # fmt: skip
    by_fix = {g.fix: g for g in data.series}
    tanh = by_fix["tanh-gate"]
    assert (tanh.param, tanh.transform, tanh.metric, tanh.n_seeds) == ("tanh(α)", "tanh", "gate/tanh_alpha", 2)
    # tanh per seed, then the mean over seeds: the effective gate each run actually used
    expect = [(np.tanh(raw_gate(0, s)) + np.tanh(raw_gate(1, s))) / 2 for s in range(N_STEPS)]
    np.testing.assert_allclose(tanh.mean, expect)
    alpha = by_fix["learnable-alpha"]
    assert (alpha.param, alpha.transform) == ("α", "identity")
    np.testing.assert_allclose(alpha.mean, [0.25 * s + 0.05 for s in range(N_STEPS)])
    assert "tanh(α)" in data.note and {g.param for g in data.series} == {"α", "tanh(α)", "mean |λ|"}
    assert "tanh-gate" in tanh.label and "s=0.5" in tanh.label


def test_gates_absent_raises(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    no_gates = steps[~steps["name"].str.startswith("gate/")]
    with pytest.raises(ValueError, match="no 'gate/\\*' step metrics"):
        extract_gates(no_gates, runs)


# ---------------------------------------------------------------------------------------------
# extract_kind: the keyword arguments reach the extractors
# ---------------------------------------------------------------------------------------------


def test_extract_kind_passes_arguments(
    runs: pd.DataFrame, steps: pd.DataFrame, trials: pd.DataFrame, references: pd.DataFrame
) -> None:
    from ablate.plot import extract_kind

    data = extract_kind("tradeoff", runs, trials=trials, references=references, threshold=0.5)
    assert (data.x_metric, data.y_metric) == ("dilution_train", "adapter_gain")  # default axes
    assert data.threshold_x == pytest.approx(math.log(2.0)) and len(data.references) == 2
    flipped = extract_kind("tradeoff", runs, trials=trials, axes=(X, Y, "maximize", "minimize"))
    assert [p.trial_number for p in flipped.front] == [1, 0, 4]
    with pytest.raises(NoPlotData, match="trials"):
        extract_kind("tradeoff", runs, steps)
    rs = extract_kind("ratio-scale", runs, ratio_metric="grad_ratio_init", threshold=0.6)
    assert (rs.ratio_metric, rs.threshold) == ("grad_ratio_init", 0.6)
    loss = extract_kind("loss", runs, steps, slope_metric="loss_first")
    assert "loss_first" in loss.selection
    with pytest.raises(NoPlotData, match="step"):
        extract_kind("grad-norms", runs)
    with pytest.raises(AblateInputError, match="pie"):
        extract_kind("pie", runs, steps)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def assert_valid(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 0, path
    head = path.read_bytes()[:512]
    if path.suffix == ".png":
        assert head.startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert path.suffix == ".svg" and b"<svg" in path.read_bytes()


def test_render_every_kind(
    runs: pd.DataFrame, steps: pd.DataFrame, trials: pd.DataFrame, references: pd.DataFrame, tmp_path: Path
) -> None:
    from ablate.plot import render_all

    paths = render_all(runs, steps, tmp_path, trials=trials, references=references, threshold=0.8)
    assert sorted(p.name for p in paths) == sorted(f"{k}.{f}" for k in KINDS for f in ("png", "svg"))
    for p in paths:
        assert_valid(p)
    # the keyword arguments reach the figure (matplotlib's SVG keeps each text as a comment)
    svg = (tmp_path / "tradeoff.svg").read_text()
    for text in ("no-branch (baseline), 3 seeds", "frozen (control), 2 seeds", "probe threshold R"):
        assert text in svg
    assert "threshold R = 0.8" in (tmp_path / "ratio-scale.svg").read_text()


def test_render_tradeoff_draws_unranked_front_references_threshold(
    trials: pd.DataFrame, references: pd.DataFrame
) -> None:
    from ablate.plot import render_tradeoff

    fig = render_tradeoff(tradeoff(trials, references, threshold=0.8))
    (ax,) = fig.axes
    _, labels = ax.get_legend_handles_labels()
    assert "not ranked: pruned, failed, incomplete or no value (4)" in labels
    assert "Pareto front (ranked trials)" in labels
    assert "no-branch (baseline), 3 seeds" in labels and "frozen (control), 2 seeds" in labels
    assert "fixed-scale (2 trials)" in labels and "none (1 trial)" in labels
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "probe threshold R = 0.8"]
    assert line.get_xdata()[0] == pytest.approx(-math.log(0.8))
    assert "95% interval over seeds" in ax.get_title()


def test_render_grad_norms_three_panels(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    from ablate.plot import render_grad_norms
    from ablate.subjects.aaclip.wording import GROUP_LABELS

    data = extract_grad_norms(steps, runs, labels=GROUP_LABELS)
    fig = render_grad_norms(data)
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["block adapters", "projections", "branch"]
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    for ax, curves in zip(fig.axes, (data.panel("layers"), data.panel("proj"), data.panel("branch"))):
        assert len(ax.get_lines()) == len(curves)


def test_render_all_skips_missing_kind_but_raises_when_named(
    runs: pd.DataFrame, steps: pd.DataFrame, trials: pd.DataFrame, tmp_path: Path
) -> None:
    from ablate.plot import render_all

    no_gates = steps[~steps["name"].str.startswith("gate/")]
    skipped: list[str] = []
    paths = render_all(
        runs, no_gates, tmp_path, formats=("png",), trials=trials, on_skip=lambda k, why: skipped.append(k)
    )
    assert skipped == ["gates"] and len(paths) == len(KINDS) - 1
    # without the trials frame there is no tradeoff: skipped when all kinds are asked for, an error by name
    reasons: dict[str, str] = {}
    paths = render_all(runs, steps, tmp_path / "b", formats=("png",), on_skip=reasons.__setitem__)
    assert list(reasons) == ["tradeoff"] and "trials" in reasons["tradeoff"]
    assert sorted(p.stem for p in paths) == sorted(k for k in KINDS if k != "tradeoff")
    with pytest.raises(NoPlotData, match="trials"):
        render_all(runs, steps, tmp_path, kinds=["tradeoff"])
    with pytest.raises(ValueError, match="gate"):
        render_all(runs, no_gates, tmp_path, kinds=["gates"])
    with pytest.raises(AblateInputError, match="kinds"):
        render_all(runs, steps, tmp_path, kinds=["nope"])


def test_render_all_empty_raises(runs: pd.DataFrame, steps: pd.DataFrame, trials: pd.DataFrame, tmp_path: Path) -> None:
    from ablate.plot import render_all

    skipped: list[str] = []
    with pytest.raises(NoPlotData, match="no ranked trial"):  # the first reason: the tradeoff's
        render_all(
            runs.assign(status="failed"),
            steps,
            tmp_path,
            trials=trials.assign(ranked=False),
            on_skip=lambda k, why: skipped.append(k),
        )
    assert skipped == list(KINDS)
    assert not list(tmp_path.iterdir())


def test_render_edge_layouts(runs: pd.DataFrame, trials: pd.DataFrame, tmp_path: Path) -> None:
    """Ratio-vs-scale with only s=0 points; a tradeoff with one ranked trial, no references, no threshold."""
    from ablate.plot import render_ratio_vs_scale, render_tradeoff, save_figure

    only_zero = runs[runs["fix"] == "learnable-alpha"]
    for p in save_figure(render_ratio_vs_scale(extract_ratio_vs_scale(only_zero)), tmp_path / "rs", ("png",)):
        assert_valid(p)
    one = trials[trials["trial_number"] == 2]
    data = extract_tradeoff(one, None, Y, X, "maximize", "minimize", threshold=0.8)
    assert [p.trial_number for p in data.front] == [2] and data.unranked == () and data.threshold_x is None
    for p in save_figure(render_tradeoff(data), tmp_path / "t", ("svg",)):
        assert_valid(p)


def test_fix_style_stable_and_distinct() -> None:
    from ablate.plot import fix_style

    names = ["none", "fixed-scale", "learnable-alpha", "zero-init", "tanh-gate", "layerscale", "norm-match"]
    styles = [fix_style(n) for n in names]
    assert len({s.colour for s in styles}) == len(names)
    assert len({s.marker for s in styles}) == len(names)
    combo = fix_style("fixed-scale+zero-init")
    assert (combo.colour, combo.marker) == (fix_style("fixed-scale").colour, fix_style("zero-init").marker)
    assert fix_style("something-new") == fix_style("something-new")
    assert fix_style("no-branch").marker == "*"


def test_import_extract_does_not_load_matplotlib() -> None:
    code = "import sys, ablate.plot; assert 'matplotlib' not in sys.modules, 'matplotlib loaded'"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={"PYTHONPATH": str(root)})


def test_plot_fix_order_is_the_registry_order_without_torch() -> None:
    from ablate.engine.fix_order import registry_names
    from ablate.engine.fixes import NO_BRANCH, fix_names
    from ablate.plot.extract import FIX_ORDER

    names, no_branch = registry_names()
    assert names == FIX_ORDER == tuple(fix_names(include_reference=False)) and no_branch == NO_BRANCH
    code = "import sys, ablate.plot; assert 'torch' not in sys.modules, 'torch loaded'"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={"PYTHONPATH": str(root)})


# ---------------------------------------------------------------------------------------------
# What the figures say: smoothing and fitted slopes, rounded labels, no bars without intervals,
# labelled repeated markers, and no text over text or legend over data (bounding boxes)
# ---------------------------------------------------------------------------------------------


def test_loss_fits_are_the_loss_slope_line_through_the_mean(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    data = extract_loss_curves(steps, runs)
    fits = {f.fix: f for f in data.fits}
    assert list(fits)[-1] == "no-branch" and set(fits) == {c.fix for c in data.curves} | {"no-branch"}
    none = fits["none"]  # loss_value falls 0.1 a step on every seed: -10 per 100 steps
    assert none.slope == pytest.approx(-10.0) and none.start == 0 and none.end == N_STEPS - 1
    assert none.at(0) == pytest.approx(np.mean([loss_value(0, 0, 0), loss_value(1, 1, 0)]))
    assert (none.seed_lo, none.seed_hi, none.n_seeds) == (-0.2, -0.1, 2)  # the runs' stored slopes
    curve = next(c for c in data.curves if c.fix == "none")
    np.testing.assert_allclose(curve.smooth, curve.mean)  # 5 steps: a window of 1


def test_smoothing_window_and_centred_mean() -> None:
    from ablate.plot.extract import smooth_window, smoothed

    assert [smooth_window(n) for n in (5, 60, 300)] == [1, 5, 25]
    np.testing.assert_allclose(smoothed(np.array([0.0, 3.0, 6.0, NAN, 12.0]), 3), [1.5, 3.0, 4.5, 9.0, 12.0])


def test_labels_round_the_scale(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    from ablate.plot.extract import scale_text

    # three significant digits, as a scale reads in every table and the report (ablate/textfmt.py)
    assert scale_text(0.00118363) == "s=0.00118" and scale_text(1e-4) == "s=0.0001" and scale_text(NAN) == ""
    gates = {g.fix: g for g in extract_gates(steps, runs.assign(scale=runs["scale"] * 1.0118363)).series}
    assert gates["tanh-gate"].label == "tanh-gate s=0.506 (trial 4): tanh(α)"


def test_tradeoff_bars_only_where_an_interval_has_width(trials: pd.DataFrame, references: pd.DataFrame) -> None:
    from ablate.plot import render_tradeoff

    assert tradeoff(trials, references).has_bars
    flat = trials.assign(**{f"{X}_lo": trials[X], f"{X}_hi": trials[X], f"{Y}_lo": NAN, f"{Y}_hi": NAN})
    flat_refs = references.assign(**{f"{X}_hi": references[X], f"{X}_lo": references[X], f"{Y}_lo": NAN})
    data = tradeoff(flat, flat_refs.assign(**{f"{Y}_hi": NAN}))
    assert not data.has_bars
    ax = render_tradeoff(data).axes[0]
    assert "no bars" in ax.get_title() and "bars =" not in ax.get_title()
    assert not [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]


def test_tradeoff_labels_repeated_markers_with_their_scale(trials: pd.DataFrame) -> None:
    from ablate.plot import render_tradeoff

    ax = render_tradeoff(tradeoff(trials)).axes[0]
    # fixed-scale has two ranked trials (s 0.1 and 1): one marker twice, so each says its scale
    assert sorted(t.get_text() for t in ax.texts) == ["s=0.1", "s=1"]


def test_ratio_vs_scale_spreads_markers_that_share_a_scale(runs: pd.DataFrame) -> None:
    from ablate.plot import render_ratio_vs_scale

    fig = render_ratio_vs_scale(extract_ratio_vs_scale(runs))
    xs = {ln.get_label(): list(ln.get_xdata()) for ax in fig.axes for ln in ax.get_lines() if ln.get_marker() != "None"}
    fixed, combo = xs["fixed-scale"], xs["fixed-scale+zero-init"]
    assert fixed[0] != combo[0]
    assert fixed[0] == pytest.approx(0.1, rel=0.15) and combo[0] == pytest.approx(0.1, rel=0.15)


def test_ratio_vs_scale_legend_names_every_fix_including_those_only_at_scale_zero(runs: pd.DataFrame) -> None:
    """A fix drawn only in the s <= 0 panel (tanh-gate at its closed default) is in the legend too."""
    from ablate.plot import render_ratio_vs_scale

    data = extract_ratio_vs_scale(runs)
    fig = render_ratio_vs_scale(data)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1
    labels = {t.get_text() for t in legends[0].get_texts()}
    only_zero = [s.fix for s in data.series if s.zero_scale.size and not s.scale.size]
    assert only_zero, "the fixture should hold a fix run only at scale 0"
    assert {s.fix for s in data.series} <= labels


def test_gates_one_panel_per_fix_named_by_the_effective_gate(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    from ablate.plot import render_gates

    fig = render_gates(extract_gates(steps, runs))
    assert [ax.get_ylabel() for ax in fig.axes] == ["α", "tanh(α)", "mean |λ|"]
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert "s=0.0001 (trial 6), 1 seed" in labels and not any("layerscale_mean" in t for t in labels)


def test_grad_norm_ticks_are_plain_numbers(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    from ablate.plot import render_grad_norms
    from ablate.plot.layout import draw

    fig = render_grad_norms(extract_grad_norms(steps, runs))
    draw(fig)
    ticks = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels(which="both") if t.get_text()]
    assert ticks and not any("^" in t or "times" in t for t in ticks)


@pytest.mark.parametrize("kind", KINDS)
def test_no_text_overlaps_and_no_legend_over_the_data(
    kind: str, runs: pd.DataFrame, steps: pd.DataFrame, trials: pd.DataFrame, references: pd.DataFrame
) -> None:
    from ablate.plot import RENDERERS, extract_kind
    from ablate.plot.layout import legends_over_axes, overlapping_texts

    fig = RENDERERS[kind](extract_kind(kind, runs, steps, trials=trials, references=references))
    assert overlapping_texts(fig) == []
    assert legends_over_axes(fig) == []


def test_the_overlap_check_sees_an_overlap() -> None:
    from matplotlib.figure import Figure

    from ablate.plot.layout import legends_over_axes, overlapping_texts

    fig = Figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], label="data")
    ax.text(0.5, 0.5, "one label")
    ax.text(0.5, 0.5, "another")
    ax.legend(loc="center")
    assert ("one label", "another") in overlapping_texts(fig)
    assert legends_over_axes(fig) == ["data"]


def test_tradeoff_with_many_trials_bars_only_the_front_and_counts_missing_labels() -> None:
    from ablate.plot import render_tradeoff
    from ablate.plot.render import MAX_BARRED_POINTS, MAX_POINT_LABELS

    n = MAX_BARRED_POINTS + 10
    specs = [(i, "fixed-scale", 0.01 * (i + 1), "complete", True, 3, 0.01 * (i % 7), 0.01 * (i % 11)) for i in range(n)]
    data = tradeoff(make_trials(specs), threshold=None)
    ax = render_tradeoff(data).axes[0]
    barred = {tuple(np.round(seg[0], 9)) for c in ax.collections for seg in getattr(c, "get_segments", list)()}
    assert len(barred) <= 2 * len(data.front)  # one x and one y bar per front point, nothing else
    assert "bars (Pareto front only)" in ax.get_title()
    assert len(ax.texts) <= MAX_POINT_LABELS and f"of {n} left out" in ax.get_title()
