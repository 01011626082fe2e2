"""``ablate plot``: a study's figures as PNG and SVG."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from ablate.cli.app import JsonOpt, StorageOpt, StudyOpt, app, err
from ablate.cli.common import check_out_dir, emit_json, lookup_errors, open_read
from ablate.errors import AblateInputError, did_you_mean


@app.command(
    short_help="Draw a study's figures (PNG + SVG): the tradeoff of two metrics (--x, --y), loss curves, ratio "
    "vs scale, gates, gradient norms, evaluation."
)
def plot(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    out_dir: Annotated[str | None, typer.Option("--out", help="Output directory (default: plots/<study>).")] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind",
            help="tradeoff | loss | ratio-scale | gates | grad-norms | eval (repeat; default: all, eval when "
            "the study was evaluated; only the tradeoff with --x or --y).",
        ),
    ] = None,
    x: Annotated[
        str | None,
        typer.Option(
            "--x",
            metavar="METRIC",
            help="The tradeoff's x axis: any stored metric, e.g. train_grad_ratio (default: the study's second "
            "objective). The figure is then tradeoff-Y-vs-X.png.",
        ),
    ] = None,
    y: Annotated[
        str | None,
        typer.Option(
            "--y",
            metavar="METRIC",
            help="The tradeoff's y axis, e.g. loss_slope (default: the study's first objective).",
        ),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare",
            metavar="B",
            help="Draw study B against --study (A) instead, fix by fix: each objective in A and B with its interval, "
            "and B - A (as ablate compare A B computes it) into compare-A-vs-B.png.",
        ),
    ] = None,
    storage_b: Annotated[
        str | None, typer.Option("--storage-b", help="With --compare: B's database (default: --storage).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw a study's figures as PNG and SVG: the tradeoff of two metrics per trial (default: the
    study's two objectives; --x train_grad_ratio --y loss_slope draws the loss-versus-ratio tradeoff),
    loss curves, gradient ratio vs scale, gate trajectories, gradient norms and, for an evaluated study,
    AUROC and AP."""
    from ablate.store import query as q
    from ablate.store.engine import open_storage, storage_url

    if compare is not None or storage_b is not None:
        written = plot_comparison(study, compare, storage, storage_b, out_dir, kind, x, y)
        if as_json:
            emit_json({"study": study, "compare": compare, "plots": [str(p) for p in written]})
        else:
            for p in written:
                sys.stdout.write(f"plot: {p}\n")
        return
    kinds = check_axes(kind, x, y)
    url = storage_url(storage)
    engine = open_read(open_storage, url)
    with lookup_errors():
        name = study or q.latest_study(engine)
        if x is not None or y is not None:  # the metrics of this study's own adapter groups
            check_metrics(x, y, q.trial_metrics(q.study_settings(engine, name)["groups"]))
    check_out_dir(out_dir, "--out")
    written = draw_plots(url, name, out_dir or f"plots/{name}", kinds, quiet=as_json, x=x, y=y)
    if as_json:
        emit_json({"study": name, "plots": [str(p) for p in written]})
    else:
        for p in written:
            sys.stdout.write(f"plot: {p}\n")  # plain: a long path must not wrap


def check_metrics(x: str | None, y: str | None, metrics: Sequence[str]) -> None:
    """--x / --y name metrics the study stores (``metrics``: ablate.store.query.trial_metrics of its groups)."""
    for option, metric in (("--x", x), ("--y", y)):
        if metric is not None and metric not in metrics:
            hint = did_you_mean(metric, metrics)
            raise AblateInputError(option, f"unknown metric {metric!r}{hint}; one of: {', '.join(metrics)}")


def check_axes(kinds: list[str] | None, x: str | None, y: str | None) -> list[str] | None:
    """--x / --y go with the tradeoff; the kinds to draw (None: all)."""
    if x is None and y is None:
        return kinds
    if kinds is None:
        return ["tradeoff"]
    if "tradeoff" not in kinds:
        raise AblateInputError("--x" if x is not None else "--y", "sets the tradeoff's axes; add --kind tradeoff")
    return kinds


def draw_plots(
    url: str, name: str, out_dir: str, kinds: list[str] | None, quiet: bool, x: str | None = None, y: str | None = None
) -> list:
    from ablate.plot.draw import draw_study
    from ablate.plot.extract import PLOT_KINDS
    from ablate.store.engine import open_storage

    bad = [k for k in kinds or () if k not in PLOT_KINDS]
    if bad:  # before any read: a typo should not cost a pass over the database
        raise AblateInputError("--kind", f"unknown plot kind(s) {', '.join(bad)}; choose from {', '.join(PLOT_KINDS)}")
    engine = open_storage(url, create=False)
    with lookup_errors():
        return draw_study(
            engine,
            name,
            out_dir,
            kinds,
            x=x,
            y=y,
            on_skip=(lambda k, why: None) if quiet else (lambda k, why: err.print(f"plot {k} skipped: {why}")),
        )


def plot_comparison(
    study: str | None,
    other: str | None,
    storage: str | None,
    storage_b: str | None,
    out_dir: str | None,
    kind: list[str] | None,
    x: str | None,
    y: str | None,
) -> list:
    """``plot --compare B``: the comparison figure of --study (A) and B."""
    from ablate.compare import compare_studies
    from ablate.plot.compare import draw_comparison
    from ablate.store.engine import open_storage, storage_url

    if other is None:
        raise AblateInputError("--storage-b", "goes with --compare B")
    for option, value in (("--kind", kind), ("--x", x), ("--y", y)):
        if value:
            raise AblateInputError(option, "does not go with --compare (it draws one figure: the comparison)")
    engine_a = open_read(open_storage, storage_url(storage))
    engine_b = open_read(open_storage, storage_url(storage_b or storage))
    with lookup_errors():
        comparison = compare_studies(engine_a, study, engine_b, other)
    target = out_dir or f"plots/{comparison.a.study}"
    check_out_dir(target, "--out")
    return draw_comparison(comparison, target)
