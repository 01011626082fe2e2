"""``ablate export mlflow``: a study's runs into the experiment tracker a lab already uses."""

from __future__ import annotations

import typer

from ablate.cli.app import app

export_app = typer.Typer(
    help="Copy studies into an experiment tracker: ablate export mlflow --tracking-uri URI.",
    short_help="Copy studies into an experiment tracker: ablate export mlflow (one parent run per study, a "
    "nested run per ablate run).",
    no_args_is_help=True,
)
app.add_typer(export_app, name="export")
