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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    ScaleSeries,
    TradeoffData,
    TrialPoint,
    extract_eval,
    extract_gates,
    extract_grad_norms,
    extract_loss_curves,
    extract_ratio_vs_scale,
    extract_tradeoff,
    is_evaluated,
    scale_text,
)
from ablate.plot.layout import place_labels

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


def _legend(ax: Axes, fontsize: str = "small", also: Sequence[Axes] = ()) -> None:
    """The axes' legend beside it, right of the plot area: never over the data. ``also``: axes whose
    labelled artists join it (a side panel without a legend of its own)."""
    handles, labels = [], []
    for a in (*also, ax):
        h, lab = a.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    ax.legend(handles, labels, fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _plain_log_ticks(ax: Axes, axis: str = "y") -> None:
    """A log axis labelled with plain numbers ('60', '0.5', '0.0001', no '6x10^1'), with enough
    labelled ticks to read a value: every 1..9 within a decade or so, 1, 2, 5 over a few decades, the
    powers of ten beyond. Call it once the data are drawn (it reads the axis' range)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else 10.0
    subs = tuple(range(1, 10)) if decades <= 1.3 else (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=subs))
    target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


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
    "train_grad_ratio": "gradient ratio R during training: the judged adapters' gradient vs the baseline run's",
    "train_update_ratio": "update ratio during training: the judged adapters' step size vs the baseline run's",
    "grad_ratio_init": "bypass probe ratio R at step 0: gradient with / without the branch",
    "adapter_gain_diff": "adapter gain − the baseline's, paired by seed (0 = learned as much)",
}


def _bars(ax: Axes, xs, ys, x_lo, x_hi, y_lo, y_hi, colour: str, zorder: float = 2) -> int:
    """Interval bars where an interval has non-zero width; none where it has not (a zero-width bar
    draws as a crosshair that looks like data). Returns how many bars were drawn."""
    drawn = 0
    for axis, lo, hi in (("x", x_lo, x_hi), ("y", y_lo, y_hi)):
        v = np.asarray(xs if axis == "x" else ys, dtype=float)
        lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
        keep = np.isfinite(lo) & np.isfinite(hi) & (hi > lo)
        if not keep.any():
            continue
        err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])[:, keep]
        kw = {"xerr": err} if axis == "x" else {"yerr": err}
        ax.errorbar(
            np.asarray(xs, dtype=float)[keep],
            np.asarray(ys, dtype=float)[keep],
            fmt="none",
            ecolor=colour,
            elinewidth=0.8,
            capsize=2,
            alpha=0.8,
            zorder=zorder,
            **kw,
        )
        drawn += int(keep.sum())
    return drawn


MAX_POINT_LABELS = 40  # beyond this many, labels would bury the points they name
MAX_BARRED_POINTS = 60  # beyond this many trials, interval bars only on the front
MAX_JOINED_SCALES = 12  # ratio vs scale: beyond this many scales of a fix, markers without a line


def _symlog_if_crowded(ax: Axes, xs: Sequence[float]) -> str:
    """A symlog x axis when non-negative values span more than a decade: points near 0
    (R near 1 on a dilution axis) pile up on a linear axis. Returns the axis note ('' if linear)."""
    from matplotlib.ticker import FuncFormatter

    v = np.asarray([x for x in xs if np.isfinite(x)], dtype=float)
    pos = v[v > 0]
    if v.size < 3 or (v < 0).any() or pos.size < 2 or pos.max() / pos.min() < 10:
        return ""
    linthresh = 10.0 ** np.floor(np.log10(pos.min()))
    ax.set_xscale("symlog", linthresh=linthresh, linscale=0.5)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.set_xlim(left=-0.3 * linthresh)  # the values are >= 0: no negative decade
    return f" [symlog: linear below {linthresh:g}]"


def _threshold_r(data: TradeoffData) -> float:
    """The probe threshold as a ratio: on a dilution axis the line sits at -log R."""
    x = float(data.threshold_x)
    return float(np.exp(-x)) if data.x_metric.startswith("dilution") else x


def _point_label(p: TrialPoint) -> str:
    return scale_text(p.scale) or f"trial {p.trial_number}"


def render_tradeoff(data: TradeoffData) -> Figure:
    """The study's two objectives per ranked trial: where each fix lands, the front, the references."""
    fig = _figure(9.0, 5.5)
    ax = fig.add_subplot()
    bars = 0
    # hundreds of bars hide the points they belong to: then only the front's are drawn
    front_ids = {id(p) for p in data.front}
    few = len(data.points) <= MAX_BARRED_POINTS
    for fix, pts in data.by_fix().items():
        st = fix_style(fix)
        xs, ys = [p.x for p in pts], [p.y for p in pts]
        barred = pts if few else [p for p in pts if id(p) in front_ids]
        ax.scatter(
            xs,
            ys,
            marker=st.marker,
            color=st.colour,
            s=45,
            alpha=0.9,
            zorder=3,
            label=f"{fix} ({len(pts)} trial{'s' if len(pts) != 1 else ''})",
        )
        bars += _bars(
            ax,
            [p.x for p in barred],
            [p.y for p in barred],
            [p.x_lo for p in barred],
            [p.x_hi for p in barred],
            [p.y_lo for p in barred],
            [p.y_hi for p in barred],
            st.colour,
        )
    if data.unranked:
        ax.scatter(
            [p.x for p in data.unranked],
            [p.y for p in data.unranked],
            s=40,
            facecolors="none",
            edgecolors="0.6",
            label=f"not ranked: pruned, failed, incomplete or no value ({len(data.unranked)})",
        )
    if data.front:
        ax.scatter(
            [p.x for p in data.front],
            [p.y for p in data.front],
            s=170,
            facecolors="none",
            edgecolors="0.25",
            linewidths=1.0,
            zorder=4,
            label="Pareto front (ranked trials)",
        )
    for ref, marker in zip(data.references, ("*", "X", "P")):
        ax.scatter(
            [ref.x],
            [ref.y],
            marker=marker,
            color=BASELINE_COLOUR,
            s=190 if marker == "*" else 90,
            zorder=5,
            label=f"{ref.label}, {_seeds(ref.n_seeds)}",
        )
        bars += _bars(ax, [ref.x], [ref.y], [ref.x_lo], [ref.x_hi], [ref.y_lo], [ref.y_hi], BASELINE_COLOUR, 4)
    if data.threshold_x is not None:
        ax.axvline(
            data.threshold_x,
            color="0.4",
            linestyle="--",
            linewidth=1.0,
            zorder=0,
            label=f"probe threshold R = {_threshold_r(data):.2g}",
        )
    xs = [p.x for p in data.points] + [r.x for r in data.references] + [p.x for p in data.unranked]
    note = _symlog_if_crowded(ax, xs)
    ax.set_xlabel(_METRIC_LABELS.get(data.x_metric, data.x_metric) + note, fontsize="small")
    ax.set_ylabel(_METRIC_LABELS.get(data.y_metric, data.y_metric), fontsize="small")
    ax.grid(alpha=0.3)
    _legend(ax)
    # where one fix has several points, markers repeat: each such point says its scale
    repeated = [p for pts in data.by_fix().values() if len(pts) > 1 for p in pts]
    front = {id(p) for p in data.front}
    repeated.sort(key=lambda p: id(p) not in front)  # the front's labels first
    shown = repeated[:MAX_POINT_LABELS]
    better_x = "left" if data.x_direction == "minimize" else "right"
    better_y = "up" if data.y_direction == "maximize" else "down"
    what = f"bars: {data.interval}" if bars else f"no bars: no interval of non-zero width ({data.interval})"
    if bars and not few:
        what = f"bars (Pareto front only): {data.interval}"

    def title(left_out: int) -> str:
        head = f"{data.y_metric} vs {data.x_metric}{_study_suffix(data.studies)}"
        lines = [f"{head} (better: {better_x}, {better_y})", what]
        if repeated:
            gone = f"; {left_out} of {len(repeated)} left out (no room)" if left_out else ""
            lines.append(f"labels: the scale s (or trial) where a fix has several trials{gone}")
        return "\n".join(lines)

    # the title is set before the labels are placed: its lines decide the layout the labels are placed in
    ax.set_title(title(len(repeated) - len(shown)), fontsize="small")
    marks = [(m.x, m.y) for m in (*data.points, *data.references, *data.unranked)]
    left_out = len(repeated) - len(shown) + place_labels(ax, [(p.x, p.y, _point_label(p)) for p in shown], avoid=marks)
    ax.set_title(title(left_out), fontsize="small")
    return fig


def _smooth_note(curves: Sequence[Curve]) -> str:
    w = max((c.smooth_window for c in curves), default=1)
    return f"centred mean over {w} steps" if w > 1 else "not smoothed"


def _draw_curve(ax: Axes, c: Curve, positive_only: bool = False, label: str | None = None) -> None:
    """The seeds' mean, smoothed; the baseline thicker and black."""
    st = fix_style(c.fix)
    y = c.smooth if c.smooth is not None else c.mean
    if positive_only:  # log axes cannot show 0 (e.g. a zero-init gradient at step 0)
        y = np.where(y > 0, y, np.nan)
    base = c.fix == BASELINE_FIX
    ax.plot(
        c.steps,
        y,
        color=st.colour,
        linestyle=st.linestyle,
        linewidth=2.2 if base else 1.3,
        alpha=1.0 if base else 0.85,
        zorder=3 if base else 2,
        label=label or f"{c.label}, {_seeds(c.n_seeds)}",
    )


def render_loss_curves(data: LossCurvesData) -> Figure:
    """Does the adapter still learn with the branch joined this way? Smoothed loss with each fitted
    slope drawn over it, and the slopes side by side (the number a study compares)."""
    fig = _figure(12.0, 6.0)
    ax, ax_s = fig.subplots(1, 2, width_ratios=(2.2, 1))
    curves = list(data.curves) + ([data.baseline] if data.baseline is not None else [])
    fits = {f.label: f for f in data.fits}
    for c in curves:
        fit = fits.get(c.label)
        slope = f": slope {fit.slope:.2f}" if fit is not None else ""
        _draw_curve(ax, c, label=f"{c.label}, {_seeds(c.n_seeds)}{slope}")
        if fit is not None:
            st = fix_style(c.fix)
            ax.plot(
                [fit.start, fit.end],
                [fit.at(fit.start), fit.at(fit.end)],
                color=st.colour,
                linestyle="--",
                linewidth=1.0,
                alpha=0.9,
                zorder=4,
            )
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over seeds)")
    ax.set_title(f"smoothed loss ({_smooth_note(curves)}); dashed: fitted slope", fontsize="medium")
    ax.grid(alpha=0.3)
    order = list(data.fits)
    ys = np.arange(len(order))[::-1]
    spread = False
    for y, f in zip(ys, order):
        st = fix_style(f.fix)
        ax_s.scatter([f.slope], [y], marker=st.marker, color=st.colour, s=45, zorder=3)
        if f.n_seeds > 1 and f.seed_hi > f.seed_lo:
            spread = True
            ax_s.plot([f.seed_lo, f.seed_hi], [y, y], color=st.colour, linewidth=1.2, zorder=2)
    base = next((f for f in order if f.fix == BASELINE_FIX), None)
    if base is not None:
        ax_s.axvline(base.slope, color=BASELINE_COLOUR, linewidth=0.8, linestyle=":", zorder=1)
    ax_s.set_yticks(
        ys, [f.fix if f.fix != BASELINE_FIX else f"{BASELINE_FIX} (baseline)" for f in order], fontsize="small"
    )
    ax_s.set_xlabel("loss slope per 100 steps (lower = learns faster)")
    ax_s.set_title("fitted slope" + (": lines = min..max over seeds" if spread else ""), fontsize="medium")
    ax_s.grid(alpha=0.3, axis="x")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(f"Loss — best trial per fix ({data.selection})", fontsize="medium")
    return fig


def _dodge(series: Sequence[ScaleSeries], zero: bool) -> dict[tuple[str, float], float]:
    """Where several fixes share a scale, spread their markers a little apart so none hides another
    (a log step on the log axis, a fixed one in the s <= 0 panel); the tick still names the scale."""
    by_scale: dict[float, list[str]] = {}
    for s in series:
        for v in s.zero_scale if zero else s.scale:
            by_scale.setdefault(float(v), []).append(s.fix)
    out = {}
    for v, fixes in by_scale.items():
        for i, fix in enumerate(fixes):
            k = i - (len(fixes) - 1) / 2
            out[(fix, v)] = v + 0.12 * k if zero else v * 10 ** (0.05 * k)
    return out


def render_ratio_vs_scale(data: RatioScaleData) -> Figure:
    """Gradient ratio against the fix's scale on a log axis (scale 0 in a narrow linear panel)."""
    fig = _figure(9.5, 5.5)
    has_zero = any(s.zero_scale.size for s in data.series)
    has_pos = any(s.scale.size for s in data.series)
    if has_zero and has_pos:
        ax0, ax = fig.subplots(1, 2, sharey=True, width_ratios=(1, 7))
        ax.tick_params(labelleft=False)
    elif has_zero:
        ax0, ax = fig.add_subplot(), None
    else:
        ax0, ax = None, fig.add_subplot()
    pos_at, zero_at = _dodge(data.series, False), _dodge(data.series, True)
    bars = 0
    for s in data.series:
        st = fix_style(s.fix)
        for axis, scales, ratio, lo, hi, at in ((ax, s.scale, s.ratio, s.ratio_lo, s.ratio_hi, pos_at),
                                                (ax0, s.zero_scale, s.zero_ratio, s.zero_ratio_lo, s.zero_ratio_hi,
                                                 zero_at)):  # fmt: skip
            if axis is None or not scales.size:
                continue
            xs = [at[(s.fix, float(v))] for v in scales]
            first = axis is ax or ax is None or not s.scale.size
            axis.plot(
                xs,
                ratio,
                marker=st.marker,
                color=st.colour,
                # a line through a few scales shows a trend; through hundreds of sampled ones, noise
                linestyle=st.linestyle if 1 < len(xs) <= MAX_JOINED_SCALES else "none",
                markersize=7 if len(xs) <= MAX_JOINED_SCALES else 4,
                alpha=1.0 if len(xs) <= MAX_JOINED_SCALES else 0.7,
                label=s.fix if first else None,
                zorder=3,
            )
            bars += _bars(axis, xs, ratio, xs, xs, lo, hi, st.colour)
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
        _plain_log_ticks(ax, "x")
        ax.set_xlabel("scale s (log); markers at one scale are spread apart so none hides another", fontsize="small")
    if ax0 is not None:
        zeros = sorted({float(v) for s in data.series for v in s.zero_scale})
        ax0.set_xticks(zeros, [f"{v:g}" for v in zeros])
        ax0.set_xlim(min(zeros) - 0.5, max(zeros) + 0.5)
        ax0.set_xlabel("s ≤ 0" if ax is not None else "scale s")
    (ax0 if ax0 is not None else ax).set_ylabel(f"gradient ratio R  [{data.ratio_metric}]")
    what = "bars = 95% interval over runs" if bars else "one run per point or equal ratios: no bars"
    lines = [f"Gradient ratio vs scale — geometric mean over runs (seeds of trials at that scale); {what}"]
    if data.one_scale_per_fix:
        lines.append(
            "This study ran each fix at one scale only, so the figure cannot show how the ratio follows the "
            "scale;\nmore trials than fixes let the sampler vary it (spec study.trials)."
        )
    fig.suptitle("\n".join(lines), fontsize="medium")
    _legend(main, also=[ax0] if ax0 is not None and ax0 is not main else [])
    return fig


def _symlog_y_if_spread(ax: Axes, values: Sequence[np.ndarray]) -> str:
    """A symlog y axis when a panel's trials sit decades apart (a gate opened to 0.76 beside gates
    near 0.01 flattens those to a line on a linear axis). Returns the label note ('' if linear)."""
    from matplotlib.ticker import FuncFormatter

    finals = np.abs(np.concatenate([np.asarray(v, dtype=float) for v in values]))
    finals = finals[np.isfinite(finals) & (finals > 0)]
    if finals.size < 2 or finals.max() / np.percentile(finals, 25) < 20:
        return ""
    linthresh = 10.0 ** np.floor(np.log10(np.percentile(finals, 25)))
    ax.set_yscale("symlog", linthresh=linthresh, linscale=0.5)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    return f"\n(symlog, linear below {linthresh:g})"


def render_gates(data: GatesData) -> Figure:
    """Learned gate values per step, one panel per fix (each gate has its own range): does the gate
    open, and how fast?"""
    groups = data.by_fix()
    fig = _figure(9.0, 1.0 + 2.4 * len(groups))
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
    # a fix shows up to GATE_TRIALS_PER_FIX (8) trials: four dash patterns, then the same with markers
    styles = [(ls, None) for ls in ("-", "--", "-.", ":")] + [(ls, m) for ls, m in zip(("-", "--", "-.", ":"), "os^D")]
    band = False
    for ax, (fix, series) in zip(axes, groups.items()):
        st = fix_style(fix)
        for k, g in enumerate(series):
            ax.plot(
                g.steps,
                g.mean,
                color=st.colour,
                linestyle=styles[k % len(styles)][0],
                marker=styles[k % len(styles)][1],
                markevery=max(1, len(g.steps) // 6),
                markersize=4,
                linewidth=1.4,
                label=f"{scale_text(g.scale) or 'no scale'} (trial {g.trial_number}), {_seeds(g.n_seeds)}",
            )
            if g.n_seeds > 1 and np.nanmax(g.hi - g.lo) > 0:
                band = True
                ax.fill_between(g.steps, g.lo, g.hi, color=st.colour, alpha=0.12, linewidth=0)
        note = _symlog_y_if_spread(ax, [g.mean for g in series])
        ax.set_ylabel(series[0].param + note)
        ax.set_title(fix, fontsize="small", loc="left")
        ax.grid(alpha=0.3)
        _legend(ax, "x-small")
    axes[-1].set_xlabel("step")
    shade = "; shaded: min..max over seeds" if band else ""
    fig.suptitle(f"Gate trajectories, mean over seeds{shade}\n{data.note}", fontsize="medium")
    return fig


def render_grad_norms(data: GradNormsData) -> Figure:
    """Gradient norms per step (log y, smoothed), one panel per watched group and one for the branch."""
    n = len(data.panels)
    fig = _figure(max(16.0, 5.4 * n), 5.5)
    axes = fig.subplots(1, n, sharex=True, squeeze=False)[0]
    panels = [(p.curves, p.label) for p in data.panels]
    handles: dict[str, Any] = {}
    for ax, (curves, what) in zip(axes, panels):
        for c in curves:
            _draw_curve(ax, c, positive_only=True)
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel("step")
        ax.set_ylabel(f"‖∇‖ of {what}")
        ax.set_title(f"{what}", fontsize="medium")
        ax.grid(alpha=0.3, which="both")
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
        if not curves:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="0.5")
    curves = [c for p in data.panels for c in p.curves]
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=3, fontsize="small")
    fig.suptitle(f"Gradient norms, mean over seeds, {_smooth_note(curves)} — {data.selection}", fontsize="medium")
    return fig


_EVAL_LABELS = {"image_auroc": "image", "pixel_auroc": "pixel", "image_ap": "image", "pixel_ap": "pixel"}


def _errs(vals: Sequence[float], los: Sequence[float], his: Sequence[float]) -> np.ndarray:
    """Bar half-lengths from (value, lo, hi); a missing bound draws no bar."""
    v, lo, hi = (np.asarray(a, dtype=float) for a in (vals, los, his))
    return np.nan_to_num(np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)]))


def render_eval(data: EvalData) -> Figure:
    """AUROC (left) and AP (right), image and pixel level, per reference and ranked trial.

    Horizontal bars: one row per arm, so long arm labels never collide; the legend sits below."""
    n = len(data.entries)
    fig = _figure(10.0, max(3.0, 1.6 + 0.45 * n))
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(n)[::-1]  # the first entry on top
    labels = [e.label for e in data.entries]
    handles: dict[str, Any] = {}
    for ax, pair, what in zip(axes, (data.metrics[:2], data.metrics[2:]), ("AUROC", "AP")):
        for k, (metric, colour) in enumerate(zip(pair, ("#1f77b4", "#ff7f0e"))):
            vals = [e.values[metric] for e in data.entries]
            has_ci = any(np.isfinite(v[1]) and np.isfinite(v[2]) for v in vals)
            handles[_EVAL_LABELS[metric]] = ax.barh(
                y - (k - 0.5) * 0.38,
                [v[0] for v in vals],
                0.38,
                xerr=_errs(*zip(*vals)) if has_ci else None,
                color=colour,
                capsize=2,
            )
        if what == "AUROC":
            handles["chance (0.5)"] = ax.axvline(0.5, color="0.5", linestyle="--", linewidth=0.8)
        ax.set_yticks(y, labels, fontsize="small")
        ax.set_xlim(0.0, 1.02)
        ax.set_title(f"{what} (mean over classes)", fontsize="medium")
        ax.grid(alpha=0.3, axis="x")
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles), fontsize="small")
    chosen = f"\n{data.selection}" if data.selection else ""
    fig.suptitle(f"End-of-run evaluation — {data.interval}{_study_suffix(data.studies)}{chosen}", fontsize="medium")
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
    best_by: tuple[str, str] = ("adapter_gain", "maximize"),
    groups: Sequence[str] | None = None,
    group_labels: dict[str, str] | None = None,
) -> TradeoffData | LossCurvesData | RatioScaleData | GatesData | GradNormsData | EvalData:
    """Run the extractor of one plot kind (see ``KINDS``). ``axes`` = (x metric, y metric, x
    direction, y direction) of the tradeoff, which reads ``trials`` (``query.trials_frame``).
    ``gates_selection`` says which trials ``steps`` holds gates for, when not every trial;
    ``best_by`` (metric, direction) picks the evaluation figure's trials where a fix has many;
    ``groups`` (in order) and ``group_labels`` name the subject's watched groups for the
    gradient-norm panels."""
    if kind == "tradeoff":
        if trials is None:
            raise NoPlotData("trials", "the tradeoff plot needs the trials frame")
        return extract_tradeoff(trials, references, *axes, threshold=threshold)
    if kind == "ratio-scale":
        return extract_ratio_vs_scale(runs, ratio_metric, threshold)
    if kind == EVAL_KIND:
        if trials is None:
            raise NoPlotData("trials", "the evaluation plot needs the trials frame")
        return extract_eval(trials, references, best_by)
    if kind not in KINDS:
        raise AblateInputError("kinds", f"unknown plot kind {kind!r}; choose from {', '.join(PLOT_KINDS)}")
    if steps is None:
        raise NoPlotData("steps", f"plot {kind!r} needs the per-step metrics frame")
    if kind == "loss":
        return extract_loss_curves(steps, runs, slope_metric)
    if kind == "gates":
        return extract_gates(steps, runs, gates_selection)
    return extract_grad_norms(steps, runs, slope_metric, groups, group_labels)


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
    groups: Sequence[str] | None = None,
    group_labels: dict[str, str] | None = None,
    best_by: tuple[str, str] = ("adapter_gain", "maximize"),
    stems: Mapping[str, str] | None = None,
) -> list[Path]:
    """Extract and render each kind to ``out_dir/<kind>.<fmt>`` (``stems`` may name a kind's file
    otherwise); returns the files written.

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
                groups=groups,
                group_labels=group_labels,
                best_by=best_by,
            )
        except NoPlotData as exc:
            if explicit:
                raise
            first_error = first_error or exc
            report(kind, str(exc))
            continue
        written += save_figure(RENDERERS[kind](data), out / (stems or {}).get(kind, kind), formats)
    if not written and first_error is not None:
        raise first_error
    return written
