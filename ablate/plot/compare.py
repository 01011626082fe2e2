"""The figure of ``ablate plot --compare B``: two studies fix by fix (an ``ablate.compare.Comparison``,
nothing queried here). Per objective, left: each fix's value in A (open marker) and in B (filled)
with their 95% intervals; right: B - A with its interval (paired by seed or Welch's) and 0 marked.
Legends sit below the panels, never over the data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ablate.objectives import OBJECTIVES
from ablate.plot.extract import FIX_ORDER
from ablate.plot.render import _figure, fix_style, save_figure

A_COLOUR, B_COLOUR = "#1f77b4", "#d62728"


def _interval_err(iv: Any) -> list[list[float]] | None:
    if math.isfinite(iv.lo) and math.isfinite(iv.hi):
        return [[iv.estimate - iv.lo], [iv.hi - iv.estimate]]
    return None


def render_comparison(c: Any) -> Any:
    """The Figure for a Comparison: one row of two panels per objective."""
    rows = list(c.rows)
    n = len(c.objectives)
    fig = _figure(10.0, 1.2 + n * (0.45 * len(rows) + 1.2))
    grid = fig.subplots(n, 2, squeeze=False, sharey=True, gridspec_kw={"width_ratios": (3, 2)})
    ys = list(range(len(rows)))[::-1]  # the first row on top
    sides = (("A", c.a.study, A_COLOUR, "white", 0.15), ("B", c.b.study, B_COLOUR, B_COLOUR, -0.15))
    for i, m in enumerate(c.objectives):
        values, diffs = grid[i][0], grid[i][1]
        labelled: set[str] = set()
        for y, r in zip(ys, rows):
            for side, name, colour, face, offset in sides:
                iv = (r.a if side == "A" else r.b).get(m)
                if iv is None or math.isnan(iv.estimate):
                    continue
                label = None if side in labelled else f"{side}: study {name}"
                labelled.add(side)
                values.errorbar(iv.estimate, y + offset, xerr=_interval_err(iv), fmt="o", color=colour,
                                markerfacecolor=face, capsize=3, label=label)  # fmt: skip
            d = r.diff.get(m)
            if d is not None and not math.isnan(d.estimate):
                colour = "black" if r.fix not in FIX_ORDER and "+" not in r.fix else fix_style(r.fix).colour
                diffs.errorbar(d.estimate, y, xerr=_interval_err(d), fmt="D", color=colour, capsize=3)
        diffs.axvline(0.0, color="grey", linewidth=0.8, linestyle="--")
        values.set_yticks(ys, [r.fix for r in rows])
        better = "higher" if OBJECTIVES[m].direction == "maximize" else "lower"
        values.set_xlabel(f"{m} ({better} is better), 95% interval")
        diffs.set_xlabel(f"{m}: B − A (paired by seed, else Welch)")
        for ax in (values, diffs):
            ax.grid(axis="x", alpha=0.3)
    handles, labels = grid[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(f"Study {c.b.study} (B) against {c.a.study} (A), fix by fix", fontsize="medium")
    return fig


def compare_stem(a: str, b: str) -> str:
    return f"compare-{a}-vs-{b}"


def draw_comparison(c: Any, out_dir: str | Path, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Write the comparison figure as ``compare-A-vs-B.png`` and ``.svg`` into ``out_dir``."""
    return save_figure(render_comparison(c), Path(out_dir) / compare_stem(c.a.study, c.b.study), formats)
