"""A study's figures from the database to files: what ``ablate plot``, ``study run`` and ``ablate
report`` all draw, in one place (the axes of the tradeoff, the trials the evaluation figure shows)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import Engine

from ablate.objectives import known_objectives, metric_direction, tradeoff_axes


def tradeoff_stem(x: str, y: str, default: tuple[str, str]) -> str:
    """The tradeoff's file name: ``tradeoff`` on the study's objectives, else it names its axes, so a
    figure on other metrics never overwrites the default one."""
    return "tradeoff" if (x, y) == default else f"tradeoff-{y}-vs-{x}"


def draw_study(
    engine: Engine,
    study: str,
    out_dir: str | Path,
    kinds: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "svg"),
    x: str | None = None,
    y: str | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> list[Path]:
    """Draw the study's figures of ``kinds`` (default: every kind with data) into ``out_dir``.

    The tradeoff plots ``y`` against ``x`` (default: the study's first objective against its second);
    each axis is better in its metric's direction (``objectives.metric_direction``). LookupError for
    an unknown study; NoPlotData when nothing at all can be drawn.
    """
    from ablate.plot import render_all, source

    inputs = source.load(engine, study, kinds)
    settings = inputs.settings
    objectives = known_objectives(settings["objectives"])
    default = tradeoff_axes(objectives)
    x, y = x or default[0], y or default[1]
    primary = (objectives or ["adapter_gain"])[0]
    return render_all(
        inputs.runs,
        inputs.steps,
        out_dir,
        kinds=kinds,
        formats=formats,
        trials=inputs.trials,
        references=inputs.references,
        axes=(x, y, metric_direction(x), metric_direction(y)),
        threshold=settings["threshold"],
        on_skip=on_skip,
        gates_selection=inputs.gates_selection,
        best_by=(primary, metric_direction(primary)),
        stems={"tradeoff": tradeoff_stem(x, y, default)},
        groups=inputs.groups,
        group_labels=inputs.group_labels,
    )
