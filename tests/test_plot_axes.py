"""The figures a newcomer reads: the tradeoff on any two stored metrics (``ablate plot --x --y``), the
evaluation figure bounded per fix, the ratio-vs-scale intervals and its one-scale note, log ticks."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from ablate.plot.extract import EVAL_PLOT_METRICS, extract_eval, extract_ratio_vs_scale, extract_tradeoff, with_metric
from ablate.stats import dilution
from tests.study_helpers import copy_db
from tests.study_helpers import run_cli as cli


def _trials(n_per_fix: int, fixes=("fixed-scale", "tanh-gate")) -> pd.DataFrame:
    rows = []
    number = 0
    for fix in fixes:
        for k in range(n_per_fix):
            rows.append(
                {
                    "study": "s", "trial_number": number, "fix": fix, "scale": 0.1 * (k + 1), "status": "complete",
                    "ranked": True, "n_seeds": 2, "adapter_gain": k / 10,
                    "train_grad_ratio": 0.5 + k / 100, "train_grad_ratio_lo": 0.4, "train_grad_ratio_hi": 0.6 + k / 100,
                    **{m: 0.5 + k / 1000 for m in EVAL_PLOT_METRICS},
                }
            )  # fmt: skip
            number += 1
    return pd.DataFrame(rows)


def test_an_objective_the_study_did_not_optimise_is_derived_from_its_column() -> None:
    frame = with_metric(_trials(2), "dilution_train")
    r = frame.iloc[1]
    assert r["dilution_train"] == pytest.approx(dilution(0.51))
    # a dilution falls as R rises: R's upper end gives the lower end
    assert (r["dilution_train_lo"], r["dilution_train_hi"]) == pytest.approx((dilution(0.61), dilution(0.4)))
    assert math.isnan(with_metric(_trials(1), "adapter_gain").iloc[0]["adapter_gain_lo"])  # no interval: NaN


def test_tradeoff_on_a_ratio_axis_puts_the_threshold_at_r() -> None:
    data = extract_tradeoff(_trials(3), None, "train_grad_ratio", "adapter_gain", "maximize", "maximize", 0.8)
    assert data.threshold_x == 0.8 and data.x_metric == "train_grad_ratio"
    assert [p.x for p in data.front] == [0.52, 0.52]  # the highest ratio and gain of each fix tie


def test_eval_figure_shows_the_best_few_trials_per_fix_and_says_so() -> None:
    from ablate.plot.render import render_eval

    data = extract_eval(_trials(10), None, ("adapter_gain", "maximize"), per_fix=3)
    shown = [(e.fix, e.trial_number) for e in data.entries]
    # the three best on adapter_gain per fix (k = 9, 8, 7), in trial order
    assert shown == [("fixed-scale", 7), ("fixed-scale", 8), ("fixed-scale", 9), ("tanh-gate", 17),
                     ("tanh-gate", 18), ("tanh-gate", 19)]  # fmt: skip
    assert data.selection == (
        "per fix at most 3 trials, the best by adapter_gain (ranked trials evaluated: fixed-scale 10, tanh-gate 10)"
    )
    assert data.selection in render_eval(data)._suptitle.get_text()
    low = extract_eval(_trials(10), None, ("adapter_gain", "minimize"), per_fix=3)
    assert [e.trial_number for e in low.entries][:3] == [0, 1, 2]
    assert extract_eval(_trials(2), None).selection is None  # nothing left out, nothing to say


def test_eval_figure_size_does_not_grow_with_the_trials() -> None:
    from ablate.plot.render import render_eval

    small, big = (render_eval(extract_eval(_trials(n), None)) for n in (3, 3000))
    assert small.get_size_inches().tolist() == big.get_size_inches().tolist()


def test_ratio_vs_scale_says_when_each_fix_ran_at_one_scale() -> None:
    from ablate.plot.render import render_ratio_vs_scale

    runs = pd.DataFrame(
        [
            {"run_id": i, "study": "s", "trial_number": t, "role": "trial", "fix": fix, "scale": scale,
             "status": "complete", "train_grad_ratio": r}
            for i, (t, fix, scale, r) in enumerate(
                [(0, "fixed-scale", 0.1, 0.9), (0, "fixed-scale", 0.1, 0.95), (1, "layerscale", 1e-4, 0.99),
                 (1, "layerscale", 1e-4, 0.97), (2, "none", math.nan, 0.7), (2, "none", math.nan, 0.8)]
            )
        ]
    )  # fmt: skip
    data = extract_ratio_vs_scale(runs)
    assert data.one_scale_per_fix
    title = render_ratio_vs_scale(data)._suptitle.get_text()
    assert "bars = 95% interval over runs" in title and "one scale only" in title
    level = data.unscaled[0]
    assert level.ratio == pytest.approx(math.sqrt(0.7 * 0.8)) and level.ratio_lo < level.ratio < level.ratio_hi


def test_log_axes_label_enough_ticks_to_read_a_value() -> None:
    """A log panel spanning less than a decade still gets three or more labelled ticks, as plain numbers."""
    from matplotlib.figure import Figure

    from ablate.plot.layout import draw
    from ablate.plot.render import _plain_log_ticks

    for lo, hi in ((1.0, 3.2), (15.0, 50.0), (0.8, 25.0), (1e-4, 0.2)):
        fig = Figure()
        ax = fig.add_subplot()
        ax.plot([0, 1], [lo, hi])
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        draw(fig)
        labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        lo_lim, hi_lim = ax.get_ylim()
        inside = [s for s in labels if lo_lim <= float(s) <= hi_lim]
        assert len(inside) >= 3, (lo, hi, labels)
        assert not any("^" in s or "times" in s for s in labels)


@pytest.fixture
def db_url(mini_study_db, tmp_path):
    return f"sqlite:///{copy_db(mini_study_db, tmp_path / 'results.db')}"


def test_plot_x_y_draws_the_loss_versus_ratio_tradeoff(capsys, db_url, tmp_path):
    from ablate.plot.draw import draw_study
    from ablate.store import open_storage

    out = tmp_path / "figs"
    code, stdout, err = cli(
        capsys, "plot", "--storage", db_url, "--x", "train_grad_ratio", "--y", "loss_slope", "--out", str(out)
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "tradeoff-loss_slope-vs-train_grad_ratio.png",
        "tradeoff-loss_slope-vs-train_grad_ratio.svg",
    ]
    svg = (out / "tradeoff-loss_slope-vs-train_grad_ratio.svg").read_text()
    assert "loss_slope vs train_grad_ratio" in svg and "probe threshold R = 0.8" in svg
    # the same figure's data: every ranked trial at its stored ratio and slope
    from ablate.plot.extract import extract_tradeoff as ex
    from ablate.store import query

    trials = query.trials_frame(open_storage(db_url), "mini")
    data = ex(trials, None, "train_grad_ratio", "loss_slope", "maximize", "minimize")
    ranked = trials[trials["ranked"]].set_index("trial_number")
    for p in data.points:
        assert (p.x, p.y) == pytest.approx((ranked.loc[p.trial_number, "train_grad_ratio"],
                                            ranked.loc[p.trial_number, "loss_slope"]))  # fmt: skip
    # the default figure keeps its name and its axes
    written = draw_study(open_storage(db_url), "mini", tmp_path / "default", ["tradeoff"], formats=("png",))
    assert [p.name for p in written] == ["tradeoff.png"]


@pytest.mark.parametrize(
    "args, line",
    [
        (["--x", "train_grad_rato"], "error: --x: unknown metric 'train_grad_rato' (did you mean 'train_grad_ratio'?)"),
        (["--y", "nope"], "error: --y: unknown metric 'nope'; one of: adapter_gain, "),
        (["--x", "loss_slope", "--kind", "loss"], "error: --x: sets the tradeoff's axes; add --kind tradeoff"),
    ],
)
def test_plot_axes_bad_input_is_one_line(capsys, db_url, tmp_path, args, line):
    code, out, err = cli(capsys, "plot", "--storage", db_url, "--out", str(tmp_path / "f"), *args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith(line)
    assert not (tmp_path / "f").exists()


def test_plot_eval_kind_in_a_study_without_evaluation_is_one_line(capsys, db_url, tmp_path):
    code, _, err = cli(capsys, "plot", "--storage", db_url, "--kind", "eval", "--out", str(tmp_path / "f"))
    assert code == 2 and len(err.splitlines()) == 1 and "evaluation" in err
