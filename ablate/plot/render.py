"""Matplotlib renderers: each takes an ``extract_*`` structure and returns a Figure; nothing is queried.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state, nothing to close, no leak when
a study renders hundreds of plots). The Agg backend is selected for headless use, except when pyplot
is already loaded (a notebook): hijacking the user's interactive backend would break their display.

Every fix has one colour AND one marker from a fixed table, so a fix looks the same in every plot;
``X+zero-init`` combos take X's colour with zero-init's marker (dashed lines in curve plots).
"""

from __future__ import annotations

import logging
import sys
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ablate.errors import AblateInputError
from ablate.plot.extract import (
    BASELINE_FIX,
    EVAL_KIND,
    FIX_ORDER,
    KINDS,
    PLOT_KINDS,
    Curve,
    EvalData,
    GatesData,
    GradNormsData,
    LossCurvesData,
    NoPlotData,
    RatioScaleData,
    TradeoffData,
    extract_eval,
    extract_gates,
    extract_grad_norms,
    extract_loss_curves,
    extract_ratio_vs_scale,
    extract_tradeoff,
    is_evaluated,
)

# Figures are plain Figure objects, so the backend only matters to pyplot users; a notebook that
# already loaded pyplot keeps its own backend.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

log = logging.getLogger(__name__)


# tab10, in FIX_ORDER; the baseline is always black.
_COLOURS = ("#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_EXTRA_COLOURS = ("#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31")
_EXTRA_MARKERS = ("h", "<", ">", "p", "8", "d")
BASELINE_COLOUR = "black"


@dataclass(frozen=True)
class FixStyle:
    """How one fix is drawn everywhere."""

    colour: str
    marker: str
    linestyle: str


def fix_style(fix: str) -> FixStyle:
    """Stable style for a fix name: table order for known fixes, a name hash for unknown ones."""
    if fix == BASELINE_FIX:
        return FixStyle(BASELINE_COLOUR, "*", "-")
    if fix in FIX_ORDER:
        i = FIX_ORDER.index(fix)
        return FixStyle(_COLOURS[i], _MARKERS[i], "-")
    base, _, other = fix.partition("+")
    if base in FIX_ORDER and other in FIX_ORDER:
        return FixStyle(_COLOURS[FIX_ORDER.index(base)], _MARKERS[FIX_ORDER.index(other)], "--")
    h = zlib.crc32(fix.encode())
    return FixStyle(_EXTRA_COLOURS[h % len(_EXTRA_COLOURS)], _EXTRA_MARKERS[h % len(_EXTRA_MARKERS)], ":")


def _figure(width: float = 8.0, height: float = 5.5) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _legend(ax: Axes, n_entries: int) -> None:
    if n_entries > 10:  # many trials: keep the data area clear
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize="small")


def _study_suffix(studies: Sequence[str]) -> str:
    if not studies:
        return ""
    return f" — study {studies[0]}" if len(studies) == 1 else f" — {len(studies)} studies"


# --------------------------------------------------------------------------------------------
# Renderers
# --------------------------------------------------------------------------------------------


_METRIC_LABELS = {
    "adapter_gain": "adapter gain: held-out loss, adapters reset − trained (higher = learned more)",
    "adapter_gain_rel": "adapter gain / baseline's (1 = learned as much as without the branch)",
    "dilution_train": "dilution during training: max(0, −log R_train) (0 = baseline's gradient)",
    "dilution_update": "update dilution: max(0, −log U_train) (0 = baseline's step size)",
    "dilution_init": "dilution at step 0: max(0, −log R_bypass)",
    "dilution_bypass": "bypass dilution over the run (includes co-adaptation)",
    "loss_slope": "loss slope per 100 steps (negative = learning)",
    "loss_slope_rel": "loss slope − baseline's (negative = faster)",
    "loss_last": "final training loss",
}


def _errs(vals: Sequence[float], los: Sequence[float], his: Sequence[float]) -> np.ndarray:
    v, lo, hi = (np.asarray(a, dtype=float) for a in (vals, los, his))
    return np.nan_to_num(np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)]))


def render_tradeoff(data: TradeoffData) -> Figure:
    """The study's two objectives per ranked trial, with 95% intervals, the front and the references."""
    fig = _figure()
    ax = fig.add_subplot()
    n_entries = 0
    for fix, pts in data.by_fix().items():
        st = fix_style(fix)
        ax.errorbar(
            [p.x for p in pts],
            [p.y for p in pts],
            xerr=_errs([p.x for p in pts], [p.x_lo for p in pts], [p.x_hi for p in pts]),
            yerr=_errs([p.y for p in pts], [p.y_lo for p in pts], [p.y_hi for p in pts]),
            fmt=st.marker,
            color=st.colour,
            ecolor=st.colour,
            elinewidth=0.8,
            capsize=2,
            markersize=7,
            alpha=0.9,
            label=f"{fix} ({len(pts)} trial{'s' if len(pts) != 1 else ''})",
        )
        n_entries += 1
    if data.unranked:
        ax.scatter(
            [p.x for p in data.unranked],
            [p.y for p in data.unranked],
            s=40,
            facecolors="none",
            edgecolors="0.6",
            label=f"not ranked: pruned, failed, incomplete or no value ({len(data.unranked)})",
        )
        n_entries += 1
    if data.front:
        ax.scatter(
            [p.x for p in data.front],
            [p.y for p in data.front],
            s=160,
            facecolors="none",
            edgecolors="0.25",
            linewidths=1.0,
            zorder=3,
            label="Pareto front (ranked trials)",
        )
        n_entries += 1
    for ref, marker in zip(data.references, ("*", "X", "P")):
        ax.errorbar(
            [ref.x],
            [ref.y],
            xerr=_errs([ref.x], [ref.x_lo], [ref.x_hi]),
            yerr=_errs([ref.y], [ref.y_lo], [ref.y_hi]),
            fmt=marker,
            color=BASELINE_COLOUR,
            markersize=14 if marker == "*" else 10,
            capsize=3,
            zorder=4,
            label=f"{ref.label}, {ref.n_seeds} seed{'s' if ref.n_seeds != 1 else ''}",
        )
        n_entries += 1
    if data.threshold_x is not None:
        ax.axvline(data.threshold_x, color="0.4", linestyle="--", linewidth=1.0, zorder=0, label="probe threshold R")
        n_entries += 1
    ax.set_xlabel(_METRIC_LABELS.get(data.x_metric, data.x_metric), fontsize="small")
    ax.set_ylabel(_METRIC_LABELS.get(data.y_metric, data.y_metric), fontsize="small")
    better_x = "left" if data.x_direction == "minimize" else "right"
    better_y = "up" if data.y_direction == "maximize" else "down"
    ax.set_title(
        f"{data.y_metric} vs {data.x_metric}{_study_suffix(data.studies)}\n"
        f"bars = {data.interval}; better is {better_x} and {better_y}",
        fontsize="medium",
    )
    ax.grid(alpha=0.3)
    _legend(ax, n_entries)
    return fig


def _draw_curve(ax: Axes, c: Curve, band: bool = True, positive_only: bool = False) -> None:
    st = fix_style(c.fix)
    mean, lo, hi = c.mean, c.lo, c.hi
    if positive_only:  # log axes cannot show 0 (e.g. a zero-init gradient at step 0)
        mean, lo, hi = (np.where(a > 0, a, np.nan) for a in (mean, lo, hi))
    width = 2.0 if c.fix == BASELINE_FIX else 1.4
    ax.plot(
        c.steps,
        mean,
        color=st.colour,
        linestyle=st.linestyle,
        linewidth=width,
        label=f"{c.label}, {c.n_seeds} seed{'s' if c.n_seeds != 1 else ''}",
    )
    if band and c.n_seeds > 1:
        ax.fill_between(c.steps, lo, hi, color=st.colour, alpha=0.15, linewidth=0)


def render_loss_curves(data: LossCurvesData) -> Figure:
    """Training loss per step: does the adapter still learn with the branch joined this way?"""
    fig = _figure()
    ax = fig.add_subplot()
    curves = list(data.curves) + ([data.baseline] if data.baseline is not None else [])
    for c in curves:
        _draw_curve(ax, c)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"Loss curves — best trial per fix\n{data.selection}; band = {data.band}", fontsize="medium")
    ax.grid(alpha=0.3)
    _legend(ax, len(curves))
    return fig


def render_ratio_vs_scale(data: RatioScaleData) -> Figure:
    """Gradient ratio against the fix's scale on a log axis (scale 0 in a narrow linear panel)."""
    fig = _figure()
    has_zero = any(s.zero_scale.size for s in data.series)
    has_pos = any(s.scale.size for s in data.series)
    if has_zero and has_pos:
        gs = fig.add_gridspec(1, 2, width_ratios=(1, 7), wspace=0.02)
        ax0 = fig.add_subplot(gs[0])
        ax = fig.add_subplot(gs[1], sharey=ax0)
        ax.tick_params(labelleft=False)
    elif has_zero:
        ax0, ax = fig.add_subplot(), None
    else:
        ax0, ax = None, fig.add_subplot()

    for s in data.series:
        st = fix_style(s.fix)
        kw = {"fmt": st.marker, "color": st.colour, "linestyle": st.linestyle, "capsize": 2, "markersize": 6}
        if ax is not None and s.scale.size:
            ax.errorbar(s.scale, s.ratio, yerr=s.ratio_std, label=s.fix, **kw)
        if ax0 is not None and s.zero_scale.size:
            ax0.errorbar(
                s.zero_scale,
                s.zero_ratio,
                yerr=s.zero_ratio_std,
                label=s.fix if ax is None or not s.scale.size else None,
                **kw,
            )
    main = ax if ax is not None else ax0
    for axis in (a for a in (ax0, ax) if a is not None):
        axis.axhline(
            data.threshold,
            color="0.4",
            linestyle="--",
            linewidth=1.0,
            label=f"threshold R = {data.threshold:g}" if axis is main else None,
        )
        axis.axhline(1.0, color="0.75", linewidth=0.8, label="R = 1 (no dilution)" if axis is main else None)
        for lv in data.unscaled:
            st = fix_style(lv.fix)
            axis.axhline(
                lv.ratio,
                color=st.colour,
                linestyle=":",
                linewidth=1.2,
                label=f"{lv.fix} (no scale, {lv.n_runs} run{'s' if lv.n_runs != 1 else ''})" if axis is main else None,
            )
        axis.grid(alpha=0.3)
    if ax is not None:
        ax.set_xscale("log")
        ax.set_xlabel("scale s (log)")
    if ax0 is not None:
        zeros = sorted({float(v) for s in data.series for v in s.zero_scale})
        ax0.set_xticks(zeros)
        ax0.set_xticklabels([f"{v:g}" for v in zeros])
        lo, hi = min(zeros), max(zeros)
        pad = max(1.0, hi - lo) * 0.5
        ax0.set_xlim(lo - pad, hi + pad)
        ax0.set_xlabel("s ≤ 0" if ax is not None else "scale s")
    (ax0 if ax0 is not None else ax).set_ylabel(f"gradient ratio R  [{data.ratio_metric}]")
    fig.suptitle("Gradient ratio vs scale — geometric mean over runs, bars = std of the ratios", fontsize="medium")
    n = len(data.series) + len(data.unscaled) + 2
    _legend(main, n)
    return fig


def render_gates(data: GatesData) -> Figure:
    """Learned gate values per step: does the gate open, and how fast?"""
    fig = _figure()
    ax = fig.add_subplot()
    per_fix: dict[str, int] = {}
    styles = ("-", "--", "-.", ":")
    for g in data.series:
        st = fix_style(g.fix)
        k = per_fix.get(g.fix, 0)
        per_fix[g.fix] = k + 1
        ax.plot(
            g.steps,
            g.mean,
            color=st.colour,
            linestyle=styles[k % len(styles)],
            linewidth=1.4,
            marker=st.marker,
            markevery=max(1, len(g.steps) // 8),
            markersize=4,
            label=f"{g.label} ({g.n_seeds} seed{'s' if g.n_seeds != 1 else ''})",
        )
        if g.n_seeds > 1:
            ax.fill_between(g.steps, g.lo, g.hi, color=st.colour, alpha=0.12, linewidth=0)
    ax.axhline(0.0, color="0.8", linewidth=0.8, zorder=0)
    ax.set_xlabel("step")
    ax.set_ylabel("effective gate value")
    ax.set_title(f"Gate trajectories, mean over seeds\n{data.note}", fontsize="medium")
    ax.grid(alpha=0.3)
    _legend(ax, len(data.series))
    return fig


def render_grad_norms(data: GradNormsData) -> Figure:
    """Gradient norms per step (log y) of the block adapters, the projections and the branch."""
    fig = _figure(16.0, 5.0)
    axes = fig.subplots(1, 3, sharex=True)
    panels = ((data.layers, "block adapters"), (data.proj, "projections"), (data.branch, "branch"))
    for ax, (curves, what) in zip(axes, panels):
        for c in curves:
            _draw_curve(ax, c, positive_only=True)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(f"‖∇‖ of {what}")
        ax.set_title(f"{what}", fontsize="medium")
        ax.grid(alpha=0.3, which="both")
        if curves:
            _legend(ax, len(curves))
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="0.5")
    fig.suptitle(f"Gradient norms — {data.selection}; band = {data.band}", fontsize="medium")
    return fig


_EVAL_LABELS = {"image_auroc": "image", "pixel_auroc": "pixel", "image_ap": "image", "pixel_ap": "pixel"}


def render_eval(data: EvalData) -> Figure:
    """AUROC (left) and AP (right), image and pixel level, per reference and ranked trial."""
    fig = _figure(max(8.0, 1.0 + 0.9 * len(data.entries)), 5.0)
    axes = fig.subplots(1, 2, sharey=True)
    x = np.arange(len(data.entries))
    labels = [e.label for e in data.entries]
    for ax, pair, what in zip(axes, (data.metrics[:2], data.metrics[2:]), ("AUROC", "AP")):
        for k, (metric, colour) in enumerate(zip(pair, ("#1f77b4", "#ff7f0e"))):
            vals = [e.values[metric] for e in data.entries]
            has_ci = any(np.isfinite(v[1]) and np.isfinite(v[2]) for v in vals)
            ax.bar(
                x + (k - 0.5) * 0.38,
                [v[0] for v in vals],
                0.38,
                yerr=_errs(*zip(*vals)) if has_ci else None,
                color=colour,
                capsize=2,
                label=_EVAL_LABELS[metric],
            )
        if what == "AUROC":
            ax.axhline(0.5, color="0.5", linestyle="--", linewidth=0.8, label="chance")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize="small")
        ax.set_ylim(0.0, 1.02)
        ax.set_title(f"{what} (mean over classes)", fontsize="medium")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small")
    fig.suptitle(f"End-of-run evaluation — {data.interval}{_study_suffix(data.studies)}", fontsize="medium")
    return fig


RENDERERS: dict[str, Callable] = {
    "tradeoff": render_tradeoff,
    "loss": render_loss_curves,
    "ratio-scale": render_ratio_vs_scale,
    "gates": render_gates,
    "grad-norms": render_grad_norms,
    "eval": render_eval,
}


# --------------------------------------------------------------------------------------------
# Saving and the all-in-one entry point
# --------------------------------------------------------------------------------------------


def save_figure(fig: Figure, stem: Path, formats: Iterable[str] = ("png", "svg"), dpi: int = 150) -> list[Path]:
    """Write ``stem.<fmt>`` for each format; returns the paths written."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(path, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths


def extract_kind(
    kind: str,
    runs: pd.DataFrame,
    steps: pd.DataFrame | None = None,
    *,
    trials: pd.DataFrame | None = None,
    references: pd.DataFrame | None = None,
    axes: tuple[str, str, str, str] = ("dilution_train", "adapter_gain", "minimize", "maximize"),
    ratio_metric: str = "train_grad_ratio",
    slope_metric: str = "loss_slope",
    threshold: float = 0.8,
    gates_selection: str | None = None,
) -> TradeoffData | LossCurvesData | RatioScaleData | GatesData | GradNormsData | EvalData:
    """Run the extractor of one plot kind (see ``KINDS``). ``axes`` = (x metric, y metric, x
    direction, y direction) of the tradeoff, which reads ``trials`` (``query.trials_frame``).
    ``gates_selection`` says which trials ``steps`` holds gates for, when not every trial."""
    if kind == "tradeoff":
        if trials is None:
            raise NoPlotData("trials", "the tradeoff plot needs the trials frame")
        return extract_tradeoff(trials, references, *axes, threshold=threshold)
    if kind == "ratio-scale":
        return extract_ratio_vs_scale(runs, ratio_metric, threshold)
    if kind == EVAL_KIND:
        if trials is None:
            raise NoPlotData("trials", "the evaluation plot needs the trials frame")
        return extract_eval(trials, references)
    if kind not in KINDS:
        raise AblateInputError("kinds", f"unknown plot kind {kind!r}; choose from {', '.join(PLOT_KINDS)}")
    if steps is None:
        raise NoPlotData("steps", f"plot {kind!r} needs the per-step metrics frame")
    if kind == "loss":
        return extract_loss_curves(steps, runs, slope_metric)
    if kind == "gates":
        return extract_gates(steps, runs, gates_selection)
    return extract_grad_norms(steps, runs, slope_metric)


def render_all(
    runs: pd.DataFrame,
    steps: pd.DataFrame | None,
    out_dir: str | Path,
    kinds: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "svg"),
    *,
    trials: pd.DataFrame | None = None,
    references: pd.DataFrame | None = None,
    axes: tuple[str, str, str, str] = ("dilution_train", "adapter_gain", "minimize", "maximize"),
    ratio_metric: str = "train_grad_ratio",
    slope_metric: str = "loss_slope",
    threshold: float = 0.8,
    on_skip: Callable[[str, str], None] | None = None,
    gates_selection: str | None = None,
) -> list[Path]:
    """Extract and render each kind to ``out_dir/<kind>.<fmt>``; returns the files written.

    With ``kinds=None`` (all), a kind with nothing to draw (e.g. gates in a study without learnable
    gates) is skipped and reported through ``on_skip(kind, reason)`` (default: a log warning); if
    nothing at all could be drawn, the first reason is raised. Kinds asked for by name always raise.
    """
    explicit = kinds is not None
    kinds = tuple(kinds) if explicit else (*KINDS, *((EVAL_KIND,) if is_evaluated(trials) else ()))
    bad = [k for k in kinds if k not in PLOT_KINDS]
    if bad:
        raise AblateInputError("kinds", f"unknown plot kind(s) {', '.join(bad)}; choose from {', '.join(PLOT_KINDS)}")
    bad_fmt = [f for f in formats if f not in ("png", "svg", "pdf")]
    if bad_fmt:
        raise AblateInputError("formats", f"unsupported format(s) {', '.join(bad_fmt)}; use png, svg or pdf")
    report = on_skip or (lambda kind, reason: log.warning("plot %s skipped: %s", kind, reason))
    out = Path(out_dir)
    written: list[Path] = []
    first_error: NoPlotData | None = None
    for kind in kinds:
        try:
            data = extract_kind(
                kind,
                runs,
                steps,
                trials=trials,
                references=references,
                axes=axes,
                ratio_metric=ratio_metric,
                slope_metric=slope_metric,
                threshold=threshold,
                gates_selection=gates_selection,
            )
        except NoPlotData as exc:
            if explicit:
                raise
            first_error = first_error or exc
            report(kind, str(exc))
            continue
        written += save_figure(RENDERERS[kind](data), out / kind, formats)
    if not written and first_error is not None:
        raise first_error
    return written
