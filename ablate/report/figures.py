"""The report's figures: ``ablate plot``'s own extraction and renderers, PNG only, into the report's
folder (so the markdown can show them beside the text and the HTML can embed them)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from ablate.stats import LEVEL

PCT = f"{LEVEL:.0%}"

# What each figure draws, for the captions (the figures' own titles carry their numbers and rules).
CAPTIONS = {
    "tradeoff": f"The study's two objectives per ranked trial, one marker and colour per fix; bars: {PCT} "
    "intervals where an interval has width; ringed: the Pareto front; black: the no-branch baseline and the "
    "frozen control.",
    "loss": "Left: the training loss per step of one trial per fix (the one with the lowest mean loss slope) and of "
    "the no-branch baseline, mean over seeds, smoothed, with the fitted slope dashed. Right: those slopes, a line "
    "from the lowest to the highest seed's slope, the baseline's dotted. The trial may differ from the tables', "
    "which are chosen by the first objective.",
    "ratio-scale": f"The judged group's gradient ratio during training against the baseline run, geometric mean "
    f"over the runs at each fix and scale, bars {PCT} intervals over those runs; the fixes without a scale as "
    "dotted levels. The title says when the study ran each fix at one scale only.",
    "gates": "The factor a learned gate puts on the branch output per step (α; tanh(α) for tanh-gate; mean |λ| "
    "for layerscale), mean over seeds, one panel per fix.",
    "grad-norms": "Gradient norm per step (log scale, smoothed) of each watched group and of the branch, for the "
    "trial of each fix the loss figure shows and for the baseline.",
    "eval": f"Image- and pixel-level AUROC and AP (means over classes) per reference and ranked trial, bars {PCT} "
    "intervals over seeds; at most a few trials per fix, the title says which.",
}


def render_figures(engine: Engine, study: str, out_dir: Path) -> dict[str, Path]:
    """Draw every figure the study has data for as ``out_dir/<kind>.png``; {kind: path}."""
    from ablate.plot.draw import draw_study
    from ablate.plot.extract import NoPlotData

    skipped: dict[str, str] = {}
    try:
        written = draw_study(engine, study, out_dir, formats=("png",), on_skip=skipped.__setitem__)
    except NoPlotData:  # nothing at all to draw (no complete trial): the report says so in words
        return {}
    return {p.stem: p for p in written}
