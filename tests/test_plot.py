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
    best_trial_per_fix,
    extract_gates,
    extract_grad_norms,
    extract_loss_curves,
    extract_ratio_vs_scale,
    extract_tradeoff,
    pareto_front,
)

NAN = float("nan")
RUN_COLUMNS = [
    "run_id", "study", "trial_number", "role", "seed", "fix", "scale", "status", "loss_slope",
    "loss_slope_rel", "loss_first", "loss_last", "grad_ratio_init", "grad_ratio_init_lo",
    "grad_ratio_init_hi", "grad_ratio_final", "grad_ratio_mean", "verdict",
]  # fmt: skip
STEP_COLUMNS = ["run_id", "role", "trial_number", "seed", "fix", "scale", "step", "name", "value"]

# (trial, fix, scale, seed, status, grad_ratio_mean, loss_slope); trial None = baseline.
RUN_SPECS = [
    (0, "none", NAN, 0, "complete", 0.40, -0.10),
    (0, "none", NAN, 1, "complete", 0.30, -0.20),
    (1, "fixed-scale", 0.1, 0, "complete", 0.90, -0.50),
    (1, "fixed-scale", 0.1, 1, "complete", 1.00, -0.70),
    (2, "fixed-scale", 1.0, 0, "complete", 0.60, -0.90),
    (2, "fixed-scale", 1.0, 1, "failed", 5.00, -100.0),  # must be ignored everywhere
    (3, "learnable-alpha", 0.0, 0, "complete", 1.00, -0.30),
    (3, "learnable-alpha", 0.0, 1, "complete", 1.00, -0.30),
    (4, "tanh-gate", 0.5, 0, "complete", 0.95, -0.80),
    (4, "tanh-gate", 0.5, 1, "complete", 0.95, -0.80),
    (5, "zero-init", NAN, 0, "complete", 1.10, -0.20),
    (6, "layerscale", 1e-4, 0, "complete", 0.99, -0.40),
    (7, "norm-match", 0.5, 0, "pruned", 0.99, -9.0),
    (8, "fixed-scale+zero-init", 0.1, 0, "complete", 1.05, -0.60),
    (None, "no-branch", NAN, 0, "complete", NAN, -1.00),
    (None, "no-branch", NAN, 1, "complete", NAN, -1.20),
    (None, "no-branch", NAN, 2, "failed", NAN, 50.0),
]
N_STEPS = 5


def make_runs(specs=RUN_SPECS) -> pd.DataFrame:
    rows = []
    for run_id, (trial, fix, scale, seed, status, ratio, slope) in enumerate(specs):
        rows.append({
            "run_id": run_id, "study": "s1", "trial_number": NAN if trial is None else float(trial),
            "role": "baseline" if trial is None else "trial", "seed": seed, "fix": fix, "scale": scale,
            "status": status, "loss_slope": slope, "loss_slope_rel": NAN, "loss_first": 3.0,
            "loss_last": 2.0, "grad_ratio_init": ratio, "grad_ratio_init_lo": ratio, "grad_ratio_init_hi": ratio,
            "grad_ratio_final": ratio, "grad_ratio_mean": ratio, "verdict": "OK",
        })  # fmt: skip
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def loss_value(run_id: int, seed: int, step: int) -> float:
    return 3.0 - 0.1 * step + 0.05 * seed + 0.001 * run_id


def raw_gate(fix: str, seed: int, step: int) -> float:
    return 0.25 * step + 0.1 * seed


def make_steps(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    gate_names = {
        "learnable-alpha": "gate/alpha",
        "tanh-gate": "gate/tanh_alpha",
        "layerscale": "gate/layerscale_mean",
    }
    for r in runs.itertuples():
        for step in range(N_STEPS):
            vals = {"loss": loss_value(r.run_id, r.seed, step), "grad_norm_adapter": 1.0 + step + r.seed}
            if r.role == "trial":
                # zero at step 0 exercises the log-axis masking of the renderer
                vals["grad_norm_branch"] = 0.0 if step == 0 else 0.5 * step + r.seed
            if r.fix in gate_names:
                vals[gate_names[r.fix]] = raw_gate(r.fix, r.seed, step)
            for name, value in vals.items():
                rows.append((r.run_id, r.role, r.trial_number, r.seed, r.fix, r.scale, step, name, value))
    return pd.DataFrame(rows, columns=STEP_COLUMNS)


@pytest.fixture
def runs() -> pd.DataFrame:
    return make_runs()


@pytest.fixture
def steps(runs: pd.DataFrame) -> pd.DataFrame:
    return make_steps(runs)


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
# (a) tradeoff
# ---------------------------------------------------------------------------------------------


def test_tradeoff_means_spread_and_exclusions(runs: pd.DataFrame) -> None:
    data = extract_tradeoff(runs, threshold=0.8)
    by_trial = {p.trial_number: p for p in data.points}
    assert set(by_trial) == {0, 1, 2, 3, 4, 5, 6, 8}  # pruned trial 7 and baselines excluded
    t1 = by_trial[1]
    assert t1.ratio == pytest.approx(0.95)
    assert t1.slope == pytest.approx(-0.6)
    assert t1.ratio_std == pytest.approx(np.std([0.9, 1.0], ddof=1))
    assert t1.slope_std == pytest.approx(np.std([-0.5, -0.7], ddof=1))
    assert t1.n_seeds == 2 and t1.scale == 0.1
    t2 = by_trial[2]  # its failed seed (ratio 5, slope -100) must not count
    assert (t2.ratio, t2.slope, t2.n_seeds, t2.ratio_std, t2.slope_std) == (0.6, -0.9, 1, 0.0, 0.0)
    assert math.isnan(by_trial[0].scale)
    assert data.threshold == 0.8
    assert data.studies == ("s1",)
    # Groups in the fixed display order, combo right after its base join.
    assert list(data.by_fix()) == [
        "none", "fixed-scale", "fixed-scale+zero-init", "learnable-alpha", "zero-init", "tanh-gate", "layerscale",
    ]  # fmt: skip


def test_tradeoff_front_and_baseline(runs: pd.DataFrame) -> None:
    data = extract_tradeoff(runs)
    assert [p.trial_number for p in data.front] == [2, 4, 8, 5]  # sorted by ratio
    b = data.baseline
    assert b is not None
    assert b.ratio == 1.0  # grad_ratio_mean is NaN for no-branch: 1.0 by definition
    assert b.slope == pytest.approx(-1.1)  # failed baseline (slope 50) excluded
    assert b.slope_std == pytest.approx(np.std([-1.0, -1.2], ddof=1))
    assert b.n_seeds == 2


def test_tradeoff_baseline_ratio_from_column_and_absent(runs: pd.DataFrame) -> None:
    r = runs.copy()
    r.loc[r["role"] == "baseline", "grad_ratio_init"] = 0.97
    assert extract_tradeoff(r, ratio_metric="grad_ratio_init").baseline.ratio == pytest.approx(0.97)
    assert extract_tradeoff(runs[runs["role"] == "trial"]).baseline is None


def test_tradeoff_empty_raises_one_line(runs: pd.DataFrame) -> None:
    failed = runs.assign(status="failed")
    with pytest.raises(ValueError, match="no complete trial runs") as exc:
        extract_tradeoff(failed)
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value, NoPlotData)
    with pytest.raises(ValueError, match="no complete trial runs"):
        extract_tradeoff(pd.DataFrame(columns=RUN_COLUMNS))
    with pytest.raises(AblateInputError, match="grad_ratio_nope"):
        extract_tradeoff(runs, ratio_metric="grad_ratio_nope")


# ---------------------------------------------------------------------------------------------
# (b) loss curves, (e) grad norms: best trial per fix
# ---------------------------------------------------------------------------------------------


def test_best_trial_per_fix(runs: pd.DataFrame) -> None:
    best = best_trial_per_fix(runs)
    assert best["fixed-scale"].trial_number == 2  # -0.9 beats -0.6; the failed seed's -100 ignored
    assert best["fixed-scale"].run_ids == (4,)
    assert best["none"].trial_number == 0
    assert "no-branch" not in best and "norm-match" not in best  # baseline / only pruned


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
    base = data.baseline
    assert base is not None and base.n_seeds == 2 and base.trial_number is None  # failed seed dropped
    np.testing.assert_allclose(base.mean, [(loss_value(14, 0, s) + loss_value(15, 1, s)) / 2 for s in range(N_STEPS)])


def test_grad_norms(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    data = extract_grad_norms(steps, runs)
    adapter = {c.fix: c for c in data.adapter}
    branch = {c.fix: c for c in data.branch}
    assert "no-branch" in adapter and "no-branch" not in branch
    assert adapter["fixed-scale"].trial_number == 2
    np.testing.assert_allclose(adapter["none"].mean, [1.5 + s for s in range(N_STEPS)])  # seeds 0, 1
    np.testing.assert_allclose(branch["none"].mean, [0.0] + [0.5 * s + 0.5 for s in range(1, N_STEPS)])


def test_curves_need_steps(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="no 'loss' step metrics"):
        extract_loss_curves(steps[steps["name"] != "loss"], runs)
    with pytest.raises(ValueError, match="no complete trial runs"):
        extract_grad_norms(steps, runs.assign(status="running"))


# ---------------------------------------------------------------------------------------------
# (c) ratio vs scale
# ---------------------------------------------------------------------------------------------


def test_ratio_vs_scale(runs: pd.DataFrame) -> None:
    data = extract_ratio_vs_scale(runs, threshold=0.7)
    series = {s.fix: s for s in data.series}
    assert list(series) == [
        "fixed-scale",
        "fixed-scale+zero-init",
        "learnable-alpha",
        "tanh-gate",
        "layerscale",
    ]
    fs = series["fixed-scale"]
    np.testing.assert_allclose(fs.scale, [0.1, 1.0])
    np.testing.assert_allclose(fs.ratio, [0.95, 0.6])
    np.testing.assert_allclose(fs.ratio_std, [np.std([0.9, 1.0], ddof=1), 0.0])
    np.testing.assert_array_equal(fs.n_runs, [2, 1])
    # Log-axis data: every plotted scale is > 0; alpha init 0 goes to the separate zero panel.
    assert all((s.scale > 0).all() for s in data.series)
    la = series["learnable-alpha"]
    assert la.scale.size == 0
    np.testing.assert_allclose(la.zero_scale, [0.0])
    np.testing.assert_allclose(la.zero_ratio, [1.0])
    np.testing.assert_allclose(series["layerscale"].scale, [1e-4])
    assert {lv.fix: lv.ratio for lv in data.unscaled} == pytest.approx({"none": 0.35, "zero-init": 1.1})
    assert data.threshold == 0.7


# ---------------------------------------------------------------------------------------------
# (d) gates
# ---------------------------------------------------------------------------------------------


def test_gates_tanh_applied(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    data = extract_gates(steps, runs)
    by_fix = {g.fix: g for g in data.series}
    assert set(by_fix) == {"learnable-alpha", "tanh-gate", "layerscale"}
    tanh = by_fix["tanh-gate"]
    assert (tanh.param, tanh.transform, tanh.metric, tanh.n_seeds) == (
        "tanh(alpha)",
        "tanh",
        "gate/tanh_alpha",
        2,
    )
    # tanh per seed, then the mean over seeds: the effective gate each run actually used
    expect = [(np.tanh(raw_gate("", 0, s)) + np.tanh(raw_gate("", 1, s))) / 2 for s in range(N_STEPS)]
    np.testing.assert_allclose(tanh.mean, expect)
    alpha = by_fix["learnable-alpha"]
    assert (alpha.param, alpha.transform) == ("alpha", "identity")
    np.testing.assert_allclose(alpha.mean, [0.25 * s + 0.05 for s in range(N_STEPS)])
    assert "tanh(alpha)" in data.note
    assert "tanh-gate" in tanh.label and "s=0.5" in tanh.label


def test_gates_absent_raises(runs: pd.DataFrame, steps: pd.DataFrame) -> None:
    no_gates = steps[~steps["name"].str.startswith("gate/")]
    with pytest.raises(ValueError, match="no 'gate/\\*' step metrics"):
        extract_gates(no_gates, runs)


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


def test_render_every_kind(runs: pd.DataFrame, steps: pd.DataFrame, tmp_path: Path) -> None:
    from ablate.plot import render_all

    paths = render_all(runs, steps, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{k}.{f}" for k in KINDS for f in ("png", "svg"))
    for p in paths:
        assert_valid(p)


def test_render_all_skips_missing_kind_but_raises_when_named(
    runs: pd.DataFrame, steps: pd.DataFrame, tmp_path: Path
) -> None:
    from ablate.plot import render_all

    no_gates = steps[~steps["name"].str.startswith("gate/")]
    skipped: list[str] = []
    paths = render_all(runs, no_gates, tmp_path, formats=("png",), on_skip=lambda k, why: skipped.append(k))
    assert skipped == ["gates"] and len(paths) == len(KINDS) - 1
    with pytest.raises(ValueError, match="gate"):
        render_all(runs, no_gates, tmp_path, kinds=["gates"])
    with pytest.raises(AblateInputError, match="kinds"):
        render_all(runs, steps, tmp_path, kinds=["nope"])


def test_render_all_empty_raises(runs: pd.DataFrame, steps: pd.DataFrame, tmp_path: Path) -> None:
    from ablate.plot import render_all

    with pytest.raises(ValueError, match="no complete trial runs"):
        render_all(runs.assign(status="failed"), steps, tmp_path)
    assert not list(tmp_path.iterdir())


def test_render_edge_layouts(runs: pd.DataFrame, tmp_path: Path) -> None:
    """Ratio-vs-scale with only s=0 points, and a tradeoff with one trial and no baseline."""
    from ablate.plot import render_ratio_vs_scale, render_tradeoff, save_figure

    only_zero = runs[runs["fix"] == "learnable-alpha"]
    for p in save_figure(render_ratio_vs_scale(extract_ratio_vs_scale(only_zero)), tmp_path / "rs", ("png",)):
        assert_valid(p)
    one = runs[runs["trial_number"] == 2]
    for p in save_figure(render_tradeoff(extract_tradeoff(one)), tmp_path / "t", ("svg",)):
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
