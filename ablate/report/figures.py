"""The report's figures: ``ablate plot``'s own extraction and renderers, PNG only, into the report's
folder (so the markdown can show them beside the text and the HTML can embed them)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from ablate.objectives import DEFAULT_OBJECTIVES, OBJECTIVES, known_objectives
from ablate.stats import LEVEL

PCT = f"{LEVEL:.0%}"

# What each figure shows, for the captions (the figures' own titles carry their numbers' meaning).
CAPTIONS = {
    "tradeoff": f"The study's objectives per ranked trial with {PCT} intervals, the Pareto front and the references.",
    "loss": "Training loss per fix and of the no-branch baseline (band: min..max over seeds). The figure picks "
    "each fix's trial by its own rule (in its title), which may differ from the trial in the tables.",
    "ratio-scale": "The judged group's training-time gradient ratio against the baseline, by scale.",
    "gates": "Gate trajectories of the fixes that learn one.",
    "grad-norms": "Gradient norms per step: block adapters, projections and the branch (each fix's trial chosen "
    "as in the loss figure).",
}


def render_figures(engine: Engine, study: str, out_dir: Path) -> dict[str, Path]:
    """Draw every figure the study has data for as ``out_dir/<kind>.png``; {kind: path}."""
    from ablate.plot import render_all, source
    from ablate.plot.extract import NoPlotData

    inputs = source.load(engine, study)
    settings = inputs.settings
    objectives = known_objectives(settings["objectives"])
    y, x = (objectives + [m for m in DEFAULT_OBJECTIVES if m not in objectives])[:2]
    skipped: dict[str, str] = {}
    try:
        written = render_all(
            inputs.runs,
            inputs.steps,
            out_dir,
            formats=("png",),
            trials=inputs.trials,
            references=inputs.references,
            axes=(x, y, OBJECTIVES[x].direction, OBJECTIVES[y].direction),
            threshold=settings["threshold"],
            on_skip=lambda kind, why: skipped.__setitem__(kind, why),
            gates_selection=inputs.gates_selection,
        )
    except NoPlotData:  # nothing at all to draw (no complete trial): the report says so in words
        return {}
    return {p.stem: p for p in written}
