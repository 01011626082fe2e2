"""``ablate plot``: a study's figures as PNG and SVG."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ablate.cli.app import JsonOpt, StorageOpt, StudyOpt, app, err
from ablate.cli.common import check_out_dir, emit_json, lookup_errors, open_read
from ablate.errors import AblateInputError


@app.command()
def plot(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    out_dir: Annotated[str | None, typer.Option("--out", help="Output directory (default: plots/<study>).")] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind",
            help="tradeoff | loss | ratio-scale | gates | grad-norms | eval (repeat; default: all, eval when "
            "the study was evaluated).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw a study's plots as PNG and SVG: the loss-vs-ratio tradeoff, loss curves, ratio vs scale,
    gate trajectories and gradient norms."""
    from ablate.store import query as q
    from ablate.store.engine import open_storage, storage_url

    url = storage_url(storage)
    engine = open_read(open_storage, url)
    with lookup_errors():
        name = study or q.latest_study(engine)
    check_out_dir(out_dir, "--out")
    written = draw_plots(url, name, out_dir or f"plots/{name}", kind, quiet=as_json)
    if as_json:
        emit_json({"study": name, "plots": [str(p) for p in written]})
    else:
        for p in written:
            sys.stdout.write(f"plot: {p}\n")  # plain: a long path must not wrap


def draw_plots(url: str, name: str, out_dir: str, kinds: list[str] | None, quiet: bool) -> list:
    from ablate.objectives import DEFAULT_OBJECTIVES, OBJECTIVES, known_objectives
    from ablate.plot import render_all, source
    from ablate.plot.extract import PLOT_KINDS
    from ablate.store.engine import open_storage

    bad = [k for k in kinds or () if k not in PLOT_KINDS]
    if bad:  # before any read: a typo should not cost a pass over the database
        raise AblateInputError("--kind", f"unknown plot kind(s) {', '.join(bad)}; choose from {', '.join(PLOT_KINDS)}")
    engine = open_storage(url, create=False)
    with lookup_errors():
        inputs = source.load(engine, name, kinds)
    settings = inputs.settings
    objectives = known_objectives(settings["objectives"])
    y, x = (objectives + [m for m in DEFAULT_OBJECTIVES if m not in objectives])[:2]
    return render_all(
        inputs.runs,
        inputs.steps,
        out_dir,
        kinds=kinds,
        trials=inputs.trials,
        references=inputs.references,
        axes=(x, y, OBJECTIVES[x].direction, OBJECTIVES[y].direction),
        threshold=settings["threshold"],
        on_skip=(lambda k, why: None) if quiet else (lambda k, why: err.print(f"plot {k} skipped: {why}")),
        gates_selection=inputs.gates_selection,
    )
