"""Plot data extraction: the store's DataFrames in, small named structures out (no matplotlib).

Following Optuna's ``visualization`` habit, every plot has an ``extract_*`` function that does all
the grouping and averaging and returns a frozen dataclass; the renderers in ``render.py`` only draw
it. Tests and notebooks can therefore check the numbers behind a figure without looking at pixels.

Conventions shared by every extractor:

- Only runs with ``status == 'complete'`` count; failed, pruned and running runs are ignored, and the
  caller passes only the runs of *ranked* trials (``ablate.plot.ranked_runs``), so a pruned trial's
  complete seeds never stand for the trial.
- A *trial* is identified by ``(study, trial_number)``; its seeds are its complete runs.
- Seed spread is the sample standard deviation (ddof=1) over seeds, 0.0 for a single seed.
- Curves carry a smoothed copy (a centred moving mean, ``smooth_window``): per-step losses and
  gradient norms are noisy, and the slope differences a study ranks are invisible in the raw lines.
  The min..max over seeds stays in the data; the figures draw it only where it reads.
- The ``no-branch`` reference runs have ``role == 'baseline'``; the frozen-adapter control ``'control'``.
- No data to draw raises :class:`NoPlotData` (an ``AblateInputError``, hence a ``ValueError``)
  with a one-line message, never a matplotlib traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ablate import textfmt
from ablate.engine.fix_order import registry_names
from ablate.engine.metrics import loss_line  # the slope's own fit (plain maths, no torch)
from ablate.errors import AblateInputError
from ablate.eval import EVAL_METRICS
from ablate.objectives import OBJECTIVES
from ablate.pareto import pareto_front
from ablate.stats import dilution, geo_mean, ratio_ci

# The registry's names read without importing torch (read commands stay light; see fix_order.py).
_REGISTERED, NO_BRANCH = registry_names()

KINDS: tuple[str, ...] = ("tradeoff", "loss", "ratio-scale", "gates", "grad-norms")
# Drawn by default only when the study was evaluated (spec [eval]); always valid by name.
EVAL_KIND = "eval"
PLOT_KINDS: tuple[str, ...] = (*KINDS, EVAL_KIND)
EVAL_PLOT_METRICS = tuple(sorted(EVAL_METRICS, key=lambda m: m.endswith("_ap")))  # AUROCs, then APs
BASELINE_FIX = NO_BRANCH
# Display order (legends, the stable colour/marker mapping in render.py) is the registry's order, so
# the registry stays the one place that knows fix names; a name it does not know still plots.
FIX_ORDER: tuple[str, ...] = _REGISTERED
GATE_PREFIX = "gate/"
# Gate parameters whose effect on the stream is a transform of the logged raw value.
TANH_GATES = frozenset({"tanh_alpha"})
BEST_TRIAL_RULE = "per fix, the trial with the lowest mean {metric} over its complete seeds"
BAND_RULE = "min..max over seeds"
# What each logged gate is called on a figure: the effective factor on the branch output.
GATE_NAMES = {"alpha": "α", "tanh_alpha": "tanh(α)", "layerscale_mean": "mean |λ|"}
GATES_NOTE = "the factor on the branch output: α; tanh(α) for tanh-gate; mean |λ| over channels for layerscale"


class NoPlotData(AblateInputError):
    """Nothing to draw for a plot (e.g. no complete runs); the CLI maps it to exit code 2."""


def fix_sort_key(fix: str) -> tuple[int, str]:
    """Stable display order: the known fixes in table order, then combos and unknowns by name."""
    base = fix.split("+", 1)[0]
    if fix in FIX_ORDER:
        return (FIX_ORDER.index(fix), "")
    if base in FIX_ORDER:  # 'X+zero-init' sits right after X
        return (FIX_ORDER.index(base), fix)
    return (len(FIX_ORDER), fix)


# --------------------------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialPoint:
    """One trial on the tradeoff plot: its values over its complete seeds, with 95% intervals."""

    study: str
    trial_number: int
    fix: str
    scale: float  # NaN for fixes without a scale
    x: float
    x_lo: float
    x_hi: float
    y: float
    y_lo: float
    y_hi: float
    n_seeds: int
    status: str
    ranked: bool


@dataclass(frozen=True)
class ReferenceMark:
    """A reference arm (the no-branch baseline, the frozen-adapter control) over its seeds."""

    label: str
    x: float
    x_lo: float
    x_hi: float
    y: float
    y_lo: float
    y_hi: float
    n_seeds: int


@dataclass(frozen=True)
class TradeoffData:
    """The study's two objectives per trial: ranked trials, their Pareto front, the references.

    Only ranked trials (complete, every seed of the spec) are points and may sit on the front;
    pruned, failed and incomplete trials are listed in ``unranked`` and drawn apart, never ranked.
    """

    points: tuple[TrialPoint, ...]  # ranked trials, fix display order, then study, trial number
    unranked: tuple[TrialPoint, ...]
    front: tuple[TrialPoint, ...]  # non-dominated ranked trials, sorted by x
    references: tuple[ReferenceMark, ...]
    x_metric: str
    y_metric: str
    x_direction: str  # "minimize" | "maximize"
    y_direction: str
    threshold_x: float | None  # where the probe threshold R falls on x (dilution axes), else None
    interval: str  # what the bars are, e.g. "95% interval over 3 seeds"
    studies: tuple[str, ...]

    def by_fix(self) -> dict[str, list[TrialPoint]]:
        """Points grouped by fix, in display order."""
        out: dict[str, list[TrialPoint]] = {}
        for p in self.points:
            out.setdefault(p.fix, []).append(p)
        return out

    @property
    def has_bars(self) -> bool:
        """Whether any point or reference has an interval of non-zero width (else: no bars to name)."""
        marks = [*self.points, *self.references]
        return any(_width(m.x_lo, m.x_hi) or _width(m.y_lo, m.y_hi) for m in marks)


def _width(lo: float, hi: float) -> bool:
    return bool(np.isfinite(lo) and np.isfinite(hi) and hi > lo)


def scale_text(scale: float) -> str:
    """A scale as figures label it, 's=' and the one scale format (ablate/textfmt.py); '' without one."""
    return "" if np.isnan(scale) else f"s={textfmt.scale_text(scale)}"


@dataclass(frozen=True, eq=False)  # holds numpy arrays
class Curve:
    """A per-step series averaged over seeds, with its min..max over seeds and a smoothed mean.

    ``trial_number`` is None for the baseline curve.
    """

    label: str
    fix: str
    study: str | None
    trial_number: int | None
    scale: float
    steps: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n_seeds: int
    smooth: np.ndarray | None = None  # the mean, centred moving mean over ``smooth_window`` steps
    smooth_window: int = 1


@dataclass(frozen=True)
class SlopeFit:
    """The fitted loss slope of one curve: the line ``loss_slope`` fits (after the warm-up) through
    the seeds' mean loss, and the per-seed slopes' range."""

    label: str
    fix: str
    start: int  # first fitted step
    end: int  # last step
    slope: float  # loss per 100 steps (the mean curve's; equals the mean of the seeds' slopes)
    intercept: float  # the line's loss at step 0
    seed_lo: float  # smallest and largest per-seed slope (equal with one seed)
    seed_hi: float
    n_seeds: int

    def at(self, step: float) -> float:
        return self.intercept + self.slope / 100.0 * step


@dataclass(frozen=True, eq=False)  # holds numpy arrays
class LossCurvesData:
    """Loss per step for the best trial of each fix, plus the ``no-branch`` baseline, and each
    curve's fitted slope (the quantity a study compares)."""

    curves: tuple[Curve, ...]  # one per fix, display order
    baseline: Curve | None
    selection: str  # how the trial shown for each fix was chosen
    band: str = BAND_RULE
    fits: tuple[SlopeFit, ...] = ()  # the curves' order, then the baseline's


@dataclass(frozen=True, eq=False)  # holds numpy arrays
class ScaleSeries:
    """Mean gradient ratio against scale for one fix (scale > 0 only: it goes on a log axis).

    Runs are pooled per (fix, scale): trials that drew the same scale are the same configuration.
    ``ratio`` is the geometric mean over those runs, ``ratio_lo/_hi`` its 95% t-interval on the logs
    (NaN with one run). Points at scale <= 0 (e.g. ReZero's alpha init 0) cannot sit on a log axis
    and are kept in the ``zero_*`` arrays, which the renderer draws in a separate linear panel.
    """

    fix: str
    scale: np.ndarray  # sorted ascending, all > 0
    ratio: np.ndarray
    ratio_lo: np.ndarray
    ratio_hi: np.ndarray
    n_runs: np.ndarray
    zero_scale: np.ndarray  # the scales <= 0, sorted
    zero_ratio: np.ndarray
    zero_ratio_lo: np.ndarray
    zero_ratio_hi: np.ndarray
    zero_n_runs: np.ndarray

    @property
    def n_scales(self) -> int:
        return int(self.scale.size + self.zero_scale.size)


@dataclass(frozen=True)
class RatioLevel:
    """Mean ratio of a fix that has no scale (drawn as a horizontal reference line), with its 95%
    interval over runs."""

    fix: str
    ratio: float
    ratio_lo: float
    ratio_hi: float
    n_runs: int


@dataclass(frozen=True, eq=False)  # holds numpy arrays
class RatioScaleData:
    """Gradient ratio versus the fix's scale."""

    series: tuple[ScaleSeries, ...]  # fixes that have a scale, display order
    unscaled: tuple[RatioLevel, ...]  # fixes without a scale (none, zero-init, ...)
    threshold: float
    ratio_metric: str

    @property
    def one_scale_per_fix(self) -> bool:
        """Every fix was run at one scale only: the figure cannot show how the ratio follows the scale."""
        return all(s.n_scales <= 1 for s in self.series)


@dataclass(frozen=True, eq=False)  # holds numpy arrays
class GateSeries:
    """One trial's gate trajectory, mean over its seeds.

    For ``tanh-gate`` the logged raw alpha is transformed to tanh(alpha) per seed *before*
    averaging, because tanh(alpha) is the factor that actually multiplies the branch output;
    ``transform`` says which was applied and ``param`` names what is shown.
    """

    label: str
    fix: str
    study: str
    trial_number: int
    scale: float
    metric: str  # the stored name, e.g. 'gate/tanh_alpha'
    param: str  # what is plotted, e.g. 'tanh(alpha)'
    transform: str  # 'identity' or 'tanh'
    steps: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n_seeds: int


@dataclass(frozen=True, eq=False)  # holds numpy arrays
class GatesData:
    """Gate trajectories of every trial that logged a ``gate/*`` metric."""

    series: tuple[GateSeries, ...]
    note: str = GATES_NOTE

    def by_fix(self) -> dict[str, list[GateSeries]]:
        """Series grouped by fix, in display order (each fix's gate has its own range)."""
        out: dict[str, list[GateSeries]] = {}
        for g in self.series:
            out.setdefault(g.fix, []).append(g)
        return out


@dataclass(frozen=True, eq=False)  # holds numpy arrays
class GradPanel:
    """One panel of the gradient-norm figure: a watched group (or the branch) and its curves."""

    group: str
    label: str
    curves: tuple[Curve, ...]


@dataclass(frozen=True, eq=False)
class GradNormsData:
    """Gradient norms per step of each watched group and of the branch (the last panel), best trial
    per fix plus the baseline (last in each group's panel; it has no branch)."""

    panels: tuple[GradPanel, ...]
    selection: str
    band: str = BAND_RULE

    def panel(self, group: str) -> tuple[Curve, ...]:
        """The curves of one panel (empty when the figure has no such group)."""
        return next((p.curves for p in self.panels if p.group == group), ())


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

_RUN_KEY = ["study", "trial_number"]
_NAN_KEY = float("nan")  # the one key under which a fix's runs without a scale are pooled


def _require_columns(df: pd.DataFrame, name: str, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise AblateInputError(name, f"missing column(s) {', '.join(missing)}")


def _complete(runs: pd.DataFrame) -> pd.DataFrame:
    _require_columns(runs, "runs", ["run_id", "study", "trial_number", "role", "fix", "scale", "status"])
    return runs[runs["status"] == "complete"]


def _complete_trials(runs: pd.DataFrame, what: str) -> pd.DataFrame:
    done = _complete(runs)
    trials = done[(done["role"] == "trial") & done["trial_number"].notna()].copy()
    if trials.empty:
        raise NoPlotData("runs", f"no complete trial runs to plot {what} ({len(done)} complete of {len(runs)} rows)")
    trials["trial_number"] = trials["trial_number"].astype(int)
    return trials


def _first_scale(values: pd.Series) -> float:
    v = values.dropna()
    return float(v.iloc[0]) if len(v) else float("nan")


def _trial_label(fix: str, scale: float, trial_number: int) -> str:
    if np.isnan(scale):
        return f"{fix} (trial {trial_number})"
    return f"{fix} {scale_text(scale)} (trial {trial_number})"


def smooth_window(n_steps: int) -> int:
    """Odd window of about 1/12 of the steps (5 of 60, 25 of 300): enough to see a trend, short
    enough to keep the early drop."""
    w = max(1, round(n_steps / 12))
    return w if w % 2 else w + 1


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving mean, NaN ignored, the ends averaged over what the window holds."""
    if window <= 1:
        return np.asarray(values, dtype=float)
    return pd.Series(values, dtype=float).rolling(window, center=True, min_periods=1).mean().to_numpy()


def _series(rows: pd.DataFrame, value_col: str = "value") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean, min and max over runs per step (NaN values ignored)."""
    g = rows.groupby("step")[value_col]
    agg = g.agg(["mean", "min", "max"]).sort_index()
    return (
        agg.index.to_numpy(dtype=float),
        agg["mean"].to_numpy(dtype=float),
        agg["min"].to_numpy(dtype=float),
        agg["max"].to_numpy(dtype=float),
    )


def _metric_rows(steps: pd.DataFrame, run_ids: Iterable, name: str) -> pd.DataFrame:
    ids = set(run_ids)
    return steps[(steps["name"] == name) & steps["run_id"].isin(ids)]


def _check_steps(steps: pd.DataFrame) -> None:
    _require_columns(steps, "steps", ["run_id", "step", "name", "value"])


# --------------------------------------------------------------------------------------------
# (a) tradeoff
# --------------------------------------------------------------------------------------------


def _f(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    return float("nan") if v is None or pd.isna(v) else float(v)


def _coords(row: Mapping[str, Any], x_metric: str, y_metric: str) -> dict[str, float | int]:
    """x, y with their interval ends, and the seed count, of one trial or reference row."""
    out: dict[str, float | int] = {"n_seeds": int(row["n_seeds"])}
    for axis, metric in (("x", x_metric), ("y", y_metric)):
        out[axis] = _f(row, metric)
        out[f"{axis}_lo"], out[f"{axis}_hi"] = _f(row, f"{metric}_lo"), _f(row, f"{metric}_hi")
    return out


# Ratios against the baseline (or the bypass) that the probe threshold is read on.
THRESHOLD_RATIOS = frozenset({"train_grad_ratio", "grad_ratio_init", "grad_ratio_mean"})


def with_metric(frame: pd.DataFrame | None, name: str) -> pd.DataFrame | None:
    """``frame`` with ``name`` and its ``_lo/_hi`` as columns: an objective the study did not optimise
    is derived from its stored column (a dilution from its ratio, the interval's ends swapped);
    a metric without an interval gets NaN ends."""
    if frame is None:
        return None
    obj = OBJECTIVES.get(name)
    add: dict[str, Any] = {}
    if name not in frame.columns and obj is not None and obj.column in frame.columns:
        source = frame[obj.column].astype(float)
        lo = frame.get(f"{obj.column}_lo", pd.Series(np.nan, index=frame.index)).astype(float)
        hi = frame.get(f"{obj.column}_hi", pd.Series(np.nan, index=frame.index)).astype(float)
        if obj.dilution:  # max(0, -log R): R's upper end is the dilution's lower end
            source, lo, hi = (pd.Series([dilution(v) for v in s], index=frame.index) for s in (source, hi, lo))
        add = {name: source, f"{name}_lo": lo, f"{name}_hi": hi}
    for end in ("_lo", "_hi"):
        if f"{name}{end}" not in frame.columns and f"{name}{end}" not in add:
            add[f"{name}{end}"] = np.nan
    return frame.assign(**add) if add else frame


def extract_tradeoff(
    trials: pd.DataFrame,
    references: pd.DataFrame | None,
    x_metric: str,
    y_metric: str,
    x_direction: str,
    y_direction: str,
    threshold: float | None = None,
) -> TradeoffData:
    """Per-trial values of two objectives (``trials`` is ``query.trials_frame``, with ``<m>``,
    ``<m>_lo``, ``<m>_hi`` and ``ranked``); the front over ranked trials; ``references`` (rows of
    ``query.group_by_fix`` whose fix is a reference label) become marks. ``threshold`` (a probe
    ratio) is placed on a dilution x axis as -log(threshold)."""
    for m in (x_metric, y_metric):
        trials, references = with_metric(trials, m), with_metric(references, m)
    _require_columns(
        trials, "trials", ["study", "trial_number", "fix", "scale", "status", "ranked", "n_seeds", x_metric, y_metric]
    )
    if trials.empty:
        raise NoPlotData("trials", "no trials to plot the tradeoff")
    pts = []
    for r in trials.to_dict(orient="records"):
        pts.append(
            TrialPoint(
                study=str(r["study"]),
                trial_number=int(r["trial_number"]),
                fix=str(r["fix"]),
                scale=_f(r, "scale"),
                **_coords(r, x_metric, y_metric),
                status=str(r["status"]),
                ranked=bool(r["ranked"]),
            )
        )
    pts.sort(key=lambda p: (fix_sort_key(p.fix), p.study, p.trial_number))
    ranked = [p for p in pts if p.ranked and not (np.isnan(p.x) or np.isnan(p.y))]
    if not ranked:
        raise NoPlotData("trials", f"no ranked trial (complete, every seed) has both {x_metric} and {y_metric}")
    ranked_ids = {id(p) for p in ranked}  # identity: a linear split (``p in ranked`` was quadratic)
    front_idx = pareto_front(
        [(p.x, p.y) for p in ranked], maximize_x=x_direction == "maximize", minimize_y=y_direction == "minimize"
    )
    refs = []
    if references is not None:
        for r in references.to_dict(orient="records"):
            refs.append(ReferenceMark(label=str(r["fix"]), **_coords(r, x_metric, y_metric)))
    seeds = sorted({p.n_seeds for p in ranked})
    interval = "95% interval over seeds" if seeds[0] > 1 else "95% interval within one seed only (batch/step noise)"
    threshold_x = None
    if threshold is not None and threshold > 0 and x_metric.startswith("dilution"):
        threshold_x = max(0.0, -float(np.log(threshold)))
    elif threshold is not None and x_metric in THRESHOLD_RATIOS:
        threshold_x = float(threshold)
    return TradeoffData(
        points=tuple(ranked),
        unranked=tuple(p for p in pts if id(p) not in ranked_ids),
        front=tuple(ranked[i] for i in front_idx),
        references=tuple(refs),
        x_metric=x_metric,
        y_metric=y_metric,
        x_direction=x_direction,
        y_direction=y_direction,
        threshold_x=threshold_x,
        interval=interval,
        studies=tuple(sorted({p.study for p in ranked})),
    )


# --------------------------------------------------------------------------------------------
# (b) loss curves and (e) gradient norms: best trial per fix
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BestTrial:
    """The trial chosen to represent a fix, and the run ids of its complete seeds."""

    fix: str
    study: str
    trial_number: int
    scale: float
    mean_slope: float
    run_ids: tuple


def best_trial_per_fix(runs: pd.DataFrame, slope_metric: str = "loss_slope") -> dict[str, BestTrial]:
    """For each fix, the trial with the lowest mean ``slope_metric`` (fastest learning).

    Ties go to the lower (study, trial number); trials with an unknown slope come last, so a fix
    whose slopes are all NaN is still shown (by its first trial) rather than silently dropped.
    """
    return {fix: ranked[0] for fix, ranked in trials_by_slope(runs, slope_metric).items()}


def trials_by_slope(runs: pd.DataFrame, slope_metric: str = "loss_slope") -> dict[str, list[BestTrial]]:
    """Every fix's complete trials, best first by :func:`best_trial_per_fix`'s rule; fixes in
    display order."""
    _require_columns(runs, "runs", [slope_metric])
    trials = _complete_trials(runs, "per-fix curves")
    candidates: dict[str, list[tuple]] = {}
    for (study, number), g in _trial_groups(trials, ["fix", "scale", "run_id", slope_metric]).items():
        slope = _mean_of(g[slope_metric])
        fix = str(g["fix"][0])
        key = (np.isnan(slope), 0.0 if np.isnan(slope) else slope, str(study), int(number))
        best = BestTrial(fix, str(study), int(number), _first_of(g["scale"]), slope, tuple(g["run_id"]))
        candidates.setdefault(fix, []).append((key, best))
    ordered = {fix: [b for _, b in sorted(c, key=lambda kv: kv[0])] for fix, c in candidates.items()}
    return {fix: ordered[fix] for fix in sorted(ordered, key=fix_sort_key)}


def _trial_groups(trials: pd.DataFrame, columns: list[str]) -> dict[tuple[str, int], dict[str, list]]:
    """Column values per (study, trial number), sorted by that key, rows in frame order.

    One pass over plain lists: a pandas groupby loop costs ~0.2 ms a group, 2 s for 10,000 trials.
    """
    keys = list(zip(trials["study"].tolist(), trials["trial_number"].tolist(), strict=True))
    values = {c: trials[c].tolist() for c in columns}
    groups: dict[tuple[str, int], dict[str, list]] = {}
    for i, key in enumerate(keys):
        g = groups.get(key)
        if g is None:
            g = groups[key] = {c: [] for c in columns}
        for c in columns:
            g[c].append(values[c][i])
    return dict(sorted(groups.items(), key=lambda kv: kv[0]))


def _known(values: list) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _mean_of(values: list) -> float:
    """Mean over seeds: NaN ignored, inf kept; numpy's mean for two or more values."""
    v = _known(values)
    if len(v) < 2:
        return v[0] if v else float("nan")
    return float(np.mean(v))


def _first_of(values: list) -> float:
    v = _known(values)
    return v[0] if v else float("nan")


def _baseline_ids(runs: pd.DataFrame) -> list:
    done = _complete(runs)
    return done.loc[done["role"] == "baseline", "run_id"].tolist()


def _curve_for(best: BestTrial, rows: pd.DataFrame) -> Curve | None:
    if rows.empty:
        return None
    s, m, lo, hi = _series(rows)
    w = smooth_window(len(s))
    return Curve(
        label=_trial_label(best.fix, best.scale, best.trial_number),
        fix=best.fix,
        study=best.study,
        trial_number=best.trial_number,
        scale=best.scale,
        steps=s,
        mean=m,
        lo=lo,
        hi=hi,
        n_seeds=int(rows["run_id"].nunique()),
        smooth=smoothed(m, w),
        smooth_window=w,
    )


def _baseline_curve(rows: pd.DataFrame) -> Curve | None:
    if rows.empty:
        return None
    s, m, lo, hi = _series(rows)
    w = smooth_window(len(s))
    return Curve(
        label=f"{BASELINE_FIX} (baseline)",
        fix=BASELINE_FIX,
        study=None,
        trial_number=None,
        scale=float("nan"),
        steps=s,
        mean=m,
        lo=lo,
        hi=hi,
        n_seeds=int(rows["run_id"].nunique()),
        smooth=smoothed(m, w),
        smooth_window=w,
    )


def _slope_fit(curve: Curve, seed_slopes: list[float]) -> SlopeFit | None:
    """``loss_slope``'s line through the curve's mean (steps must be 0..n-1, as stored)."""
    if curve.steps.size < 2 or not np.array_equal(curve.steps, np.arange(curve.steps.size)):
        return None
    start, per_step, intercept = loss_line(curve.mean.tolist())
    if not np.isfinite(per_step):
        return None
    known = _known(seed_slopes) or [100.0 * per_step]
    return SlopeFit(
        label=curve.label,
        fix=curve.fix,
        start=start,
        end=int(curve.steps[-1]),
        slope=100.0 * per_step,
        intercept=intercept,
        seed_lo=min(known),
        seed_hi=max(known),
        n_seeds=curve.n_seeds,
    )


def _run_slopes(runs: pd.DataFrame, run_ids: Iterable) -> list[float]:
    if "loss_slope" not in runs.columns:
        return []
    return runs.loc[runs["run_id"].isin(set(run_ids)), "loss_slope"].tolist()


def extract_loss_curves(steps: pd.DataFrame, runs: pd.DataFrame, slope_metric: str = "loss_slope") -> LossCurvesData:
    """Mean 'loss' per step (band min..max over seeds) of each fix's best trial and the baseline.

    One trial per fix keeps the plot readable; ``selection`` states the rule.
    """
    _check_steps(steps)
    best = best_trial_per_fix(runs, slope_metric)
    curves, fits = [], []
    for b in best.values():
        c = _curve_for(b, _metric_rows(steps, b.run_ids, "loss"))
        if c is not None:
            curves.append(c)
            fits.append(_slope_fit(c, _run_slopes(runs, b.run_ids)))
    base_ids = _baseline_ids(runs)
    baseline = _baseline_curve(_metric_rows(steps, base_ids, "loss"))
    if not curves and baseline is None:
        raise NoPlotData("steps", "no 'loss' step metrics for any complete run")
    if baseline is not None:
        fits.append(_slope_fit(baseline, _run_slopes(runs, base_ids)))
    return LossCurvesData(
        curves=tuple(curves),
        baseline=baseline,
        selection=BEST_TRIAL_RULE.format(metric=slope_metric),
        fits=tuple(f for f in fits if f is not None),
    )


GRAD_PREFIX = "grad_norm_"


def step_groups(steps: pd.DataFrame) -> list[str]:
    """The watched groups whose gradient norm the step table holds (``grad_norm_<group>``), in the
    order first seen, without their union ``all`` and the branch."""
    names = steps.loc[steps["name"].str.startswith(GRAD_PREFIX), "name"].unique()
    groups = [n[len(GRAD_PREFIX) :] for n in names]
    return [g for g in dict.fromkeys(groups) if g not in ("all", "branch")]


def extract_grad_norms(
    steps: pd.DataFrame,
    runs: pd.DataFrame,
    slope_metric: str = "loss_slope",
    groups: Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
) -> GradNormsData:
    """Mean 'grad_norm_<group>' per step for each watched group (``groups``, default: those the steps
    hold) and 'grad_norm_branch', best trial per fix + the baseline (group panels only)."""
    _check_steps(steps)
    groups = [g for g in (groups if groups is not None else step_groups(steps)) if g not in ("all", "branch")]
    labels = labels or {}
    best = best_trial_per_fix(runs, slope_metric)
    panels: dict[str, list[Curve]] = {g: [] for g in (*groups, "branch")}
    for b in best.values():
        for group, out in panels.items():
            c = _curve_for(b, _metric_rows(steps, b.run_ids, f"{GRAD_PREFIX}{group}"))
            if c is not None:
                out.append(c)
    for group in groups:
        base = _baseline_curve(_metric_rows(steps, _baseline_ids(runs), f"{GRAD_PREFIX}{group}"))
        if base is not None:
            panels[group].append(base)
    if not any(panels.values()):
        wanted = ", ".join(f"'{GRAD_PREFIX}{g}'" for g in panels)
        raise NoPlotData("steps", f"no {wanted} step metrics for any complete run")
    return GradNormsData(
        panels=tuple(GradPanel(g, labels.get(g, g), tuple(c)) for g, c in panels.items()),
        selection=BEST_TRIAL_RULE.format(metric=slope_metric),
    )


# --------------------------------------------------------------------------------------------
# (c) ratio vs scale
# --------------------------------------------------------------------------------------------


def _ratio_bounds(ratios: list) -> tuple[float, float]:
    """The 95% t-interval of the geometric mean of runs' ratios (on the logs); NaN for one run."""
    ci = ratio_ci([[r] for r in ratios])
    return ci.lo, ci.hi


def extract_ratio_vs_scale(
    runs: pd.DataFrame, ratio_metric: str = "train_grad_ratio", threshold: float = 0.8
) -> RatioScaleData:
    """Geometric-mean ratio with its 95% interval over runs per (fix, scale) for fixes with a scale;
    levels for the others."""
    _require_columns(runs, "runs", [ratio_metric])
    trials = _complete_trials(runs, "ratio vs scale")
    trials = trials[trials[ratio_metric].notna()]
    if trials.empty:
        raise NoPlotData("runs", f"no complete trial run has a value for {ratio_metric}")
    series, unscaled = [], []
    by_fix: dict[str, dict[float, list]] = {}  # fix -> scale (NaN for none) -> ratios, in frame order
    for fix, scale, ratio in zip(
        trials["fix"].astype(str).tolist(), trials["scale"].tolist(), trials[ratio_metric].tolist(), strict=True
    ):
        key = math.nan if scale is None or math.isnan(scale) else float(scale)
        scales = by_fix.setdefault(fix, {})
        # NaN keys never compare equal, so every unscaled run goes under the one NaN object
        scales.setdefault(key if key == key else _NAN_KEY, []).append(ratio)
    for fix in sorted(by_fix, key=fix_sort_key):
        groups = by_fix[fix]
        scaled = sorted((s, r) for s, r in groups.items() if s is not _NAN_KEY)
        if not scaled:
            ratios = groups[_NAN_KEY]
            ci = ratio_ci([[r] for r in ratios])
            unscaled.append(RatioLevel(fix, geo_mean(ratios), ci.lo, ci.hi, len(ratios)))
            continue
        rows = [(s, geo_mean(r), *_ratio_bounds(r), len(r)) for s, r in scaled]
        arr = np.array(rows, dtype=float).reshape(-1, 5)
        pos, zero = arr[arr[:, 0] > 0], arr[arr[:, 0] <= 0]
        series.append(
            ScaleSeries(
                fix=fix,
                scale=pos[:, 0],
                ratio=pos[:, 1],
                ratio_lo=pos[:, 2],
                ratio_hi=pos[:, 3],
                n_runs=pos[:, 4].astype(int),
                zero_scale=zero[:, 0],
                zero_ratio=zero[:, 1],
                zero_ratio_lo=zero[:, 2],
                zero_ratio_hi=zero[:, 3],
                zero_n_runs=zero[:, 4].astype(int),
            )
        )
    if not series:
        raise NoPlotData("runs", "no complete trial of a fix that takes a scale (all scales are NaN)")
    return RatioScaleData(
        series=tuple(series), unscaled=tuple(unscaled), threshold=float(threshold), ratio_metric=ratio_metric
    )


# --------------------------------------------------------------------------------------------
# (d) gates
# --------------------------------------------------------------------------------------------


def extract_gates(steps: pd.DataFrame, runs: pd.DataFrame, selection: str | None = None) -> GatesData:
    """Every trial's 'gate/*' trajectories in ``steps``, mean over seeds (tanh-gate shown as
    tanh(alpha)). ``selection`` says which trials the caller loaded, when not all of them."""
    _check_steps(steps)
    trials = _complete_trials(runs, "gate trajectories")
    names = steps["name"].astype(str)
    gate_rows = steps[names.str.startswith(GATE_PREFIX) & steps["run_id"].isin(set(trials["run_id"]))]
    if gate_rows.empty:
        raise NoPlotData("steps", "no 'gate/*' step metrics for complete trials (only learnable gates log them)")
    meta = trials[["run_id", "study", "trial_number", "fix", "scale"]]
    rows = gate_rows[["run_id", "step", "name", "value"]].merge(meta, on="run_id", how="inner")
    out = []
    for (study, number, name), g in rows.groupby(["study", "trial_number", "name"], sort=True):
        raw = str(name)[len(GATE_PREFIX) :]
        g = g.copy()
        transform = "identity"
        if raw in TANH_GATES:
            transform = "tanh"
            g["value"] = np.tanh(g["value"].astype(float))
        param = GATE_NAMES.get(raw, raw)
        s, m, lo, hi = _series(g)
        fix = str(g["fix"].iloc[0])
        scale = _first_scale(g["scale"])
        out.append(
            GateSeries(
                label=f"{_trial_label(fix, scale, int(number))}: {param}",
                fix=fix,
                study=str(study),
                trial_number=int(number),
                scale=scale,
                metric=str(name),
                param=param,
                transform=transform,
                steps=s,
                mean=m,
                lo=lo,
                hi=hi,
                n_seeds=int(g["run_id"].nunique()),
            )
        )
    out.sort(key=lambda gs: (fix_sort_key(gs.fix), gs.study, gs.trial_number, gs.metric))
    return GatesData(series=tuple(out), note=GATES_NOTE + (f"\n{selection}" if selection else ""))


# --------------------------------------------------------------------------------------------
# (f) the end-of-run evaluation: AUROC and AP per ranked trial and reference
# --------------------------------------------------------------------------------------------


class NotEvaluated(NoPlotData):
    """The study has no end-of-run evaluation (the default plots skip the figure without a word)."""


@dataclass(frozen=True)
class EvalEntry:
    """One ranked trial or reference arm: each evaluation metric over its seeds, (value, lo, hi)."""

    label: str
    fix: str
    trial_number: int | None  # None for a reference arm
    n_seeds: int
    values: Mapping[str, tuple[float, float, float]]


@dataclass(frozen=True)
class EvalData:
    """Image/pixel AUROC and AP (means over classes) per entry: references first, then ranked trials
    in fix display order. Chance is 0.5 for AUROC; for AP it is the share of anomalous samples.
    ``selection`` says which trials are shown when a fix has more than ``EVAL_TRIALS_PER_FIX``."""

    entries: tuple[EvalEntry, ...]
    metrics: tuple[str, ...]
    interval: str
    studies: tuple[str, ...]
    selection: str | None = None


# One bar row per trial: beyond this many per fix the figure shows the best ones (a study of 1,000
# trials drew a 66,607-pixel-tall figure in 24 s and 1 GB before).
EVAL_TRIALS_PER_FIX = 3


def is_evaluated(frame: pd.DataFrame | None) -> bool:
    """Whether any row of a trials (or runs) frame carries an evaluation metric."""
    if frame is None:
        return False
    return any(m in frame.columns and bool(frame[m].notna().any()) for m in EVAL_PLOT_METRICS)


def _eval_values(r: Mapping[str, Any]) -> dict[str, tuple[float, float, float]]:
    return {m: (_f(r, m), _f(r, f"{m}_lo"), _f(r, f"{m}_hi")) for m in EVAL_PLOT_METRICS}


def extract_eval(
    trials: pd.DataFrame,
    references: pd.DataFrame | None = None,
    best_by: tuple[str, str] = ("adapter_gain", "maximize"),
    per_fix: int = EVAL_TRIALS_PER_FIX,
) -> EvalData:
    """The evaluation metrics of the ranked trials (``query.trials_frame``) that have them, at most
    ``per_fix`` per fix, the best by ``best_by`` (metric, direction: the study's first objective),
    and of the references (reference rows of ``query.group_by_fix``)."""
    _require_columns(trials, "trials", ["study", "trial_number", "fix", "scale", "ranked", "n_seeds"])
    if not is_evaluated(trials) and not is_evaluated(references):
        raise NotEvaluated("trials", "the study stores no evaluation (spec [eval] enabled = true adds it)")
    entries = []
    if references is not None:
        for r in references.to_dict(orient="records"):
            vals = _eval_values(r)
            if any(math.isfinite(v[0]) for v in vals.values()):
                entries.append(EvalEntry(str(r["fix"]), str(r["fix"]), None, int(r.get("n_seeds") or 0), vals))
    metric, direction = best_by
    sign = -1.0 if direction == "maximize" else 1.0
    by_fix: dict[str, list[tuple[tuple, EvalEntry]]] = {}
    for r in trials[trials["ranked"]].to_dict(orient="records"):
        vals = _eval_values(r)
        if any(math.isfinite(v[0]) for v in vals.values()):
            label = _trial_label(str(r["fix"]), _f(r, "scale"), int(r["trial_number"]))
            value = _f(r, metric)
            key = (math.isnan(value), 0.0 if math.isnan(value) else sign * value, int(r["trial_number"]))
            entry = EvalEntry(label, str(r["fix"]), int(r["trial_number"]), int(r["n_seeds"]), vals)
            by_fix.setdefault(str(r["fix"]), []).append((key, entry))
    capped = {fix: len(c) for fix, c in by_fix.items() if len(c) > per_fix}
    for fix in sorted(by_fix, key=fix_sort_key):
        best = [e for _, e in sorted(by_fix[fix], key=lambda kv: kv[0])[:per_fix]]
        entries += sorted(best, key=lambda e: e.trial_number)
    selection = None
    if capped:
        counts = ", ".join(f"{fix} {n}" for fix, n in sorted(capped.items(), key=lambda kv: fix_sort_key(kv[0])))
        selection = f"per fix at most {per_fix} trials, the best by {metric} (ranked trials evaluated: {counts})"
    if not entries:
        raise NoPlotData("trials", "no ranked trial or reference has an evaluation")
    seeds = sorted({e.n_seeds for e in entries})
    interval = "95% interval over seeds" if seeds[0] > 1 else "one seed: no interval over seeds"
    studies = tuple(sorted({str(s) for s in trials["study"]})) if not trials.empty else ()
    return EvalData(tuple(entries), EVAL_PLOT_METRICS, interval, studies, selection)
