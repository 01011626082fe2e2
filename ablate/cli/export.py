"""``ablate export mlflow``: a study's runs into the experiment tracker a lab already uses."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ablate.cli.app import JsonOpt, StorageOpt, app
from ablate.cli.common import emit_json, lookup_errors, open_read, program
from ablate.errors import AblateInputError

MLFLOW_HINT = "needs mlflow: pip install 'ablate-branch[mlflow]'"

export_app = typer.Typer(
    help="Copy studies into an experiment tracker: ablate export mlflow --tracking-uri URI.",
    short_help="Copy studies into an experiment tracker: ablate export mlflow (one parent run per study, a "
    "nested run per ablate run).",
    no_args_is_help=True,
)
app.add_typer(export_app, name="export")


@export_app.command(
    "mlflow",
    short_help="Each study as an MLflow parent run with a nested run per ablate run: params, per-step metrics, "
    "summaries and intervals, the report as artifacts; a second export updates, never duplicates.",
)
def export_mlflow(
    tracking_uri: Annotated[
        str,
        typer.Option(
            "--tracking-uri",
            envvar="MLFLOW_TRACKING_URI",
            help="The MLflow tracking store: file:/path/mlruns, sqlite:///mlflow.db, http://host:5000 "
            "(default: $MLFLOW_TRACKING_URI).",
        ),
    ],
    study: Annotated[
        list[str] | None, typer.Option("--study", help="A study to export (repeat; default: every study).")
    ] = None,
    experiment: Annotated[str, typer.Option("--experiment", help="The MLflow experiment (created when missing).")] = (
        "ablate"
    ),
    no_report: Annotated[
        bool, typer.Option("--no-report", help="Leave the report and its figures out of the artifacts.")
    ] = False,
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy studies into MLflow: one parent run per study (the spec's keys as params, the per-fix
    table as metrics, the report and its figures as artifacts) and one run nested under it per ablate
    run (params fix, scale, seed, role, trial and the spec's keys; every per-step metric with its
    step; the run's summary numbers and intervals). Run it again after more trials: unchanged runs are
    left, changed ones replaced, nothing logged twice. Needs the mlflow extra."""
    from ablate.store.engine import display_url, open_storage, storage_url

    try:
        from ablate.export.mlflow import export
    except ImportError:
        raise AblateInputError("export mlflow", MLFLOW_HINT) from None
    url = storage_url(storage)
    engine = open_read(open_storage, url)

    def said(done) -> None:
        if not as_json:
            sys.stdout.write(
                f"study {done.study}: parent run {done.parent_run_id} ({done.parent}); nested runs: {done.created} "
                f"created, {done.replaced} replaced, {done.unchanged} unchanged"
                + (f"; {len(done.artifacts)} report files as artifacts" if done.artifacts else "")
                + "\n"
            )

    try:
        with lookup_errors():
            done = export(engine, tracking_uri, study, experiment, not no_report, display_url(url), program(), said)
    except ImportError:
        raise AblateInputError("export mlflow", MLFLOW_HINT) from None
    except ValueError as exc:
        if isinstance(exc, AblateInputError):
            raise
        raise AblateInputError("--tracking-uri", str(exc)) from None
    if as_json:
        emit_json({"tracking_uri": tracking_uri, "experiment": experiment, "studies": [d.__dict__ for d in done]})
    else:
        sys.stdout.write(f"in experiment {experiment} at {tracking_uri}\n")
