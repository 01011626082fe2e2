"""``ablate db upgrade``: bring a results database written by an older ablate to this release's layout."""

from __future__ import annotations

import sys

import typer

from ablate.cli.app import JsonOpt, StorageOpt, app
from ablate.cli.common import emit_json
from ablate.errors import AblateInputError

db_app = typer.Typer(
    help="The results database itself: upgrade one written by an older ablate.",
    short_help="The results database itself: ablate db upgrade brings one an older ablate wrote to this layout.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")


@db_app.command(
    "upgrade",
    short_help="Upgrade the database to this release's layout, keeping every number (ablate study run does it "
    "by itself).",
)
def upgrade(storage: StorageOpt = None, as_json: JsonOpt = False) -> None:
    """Upgrade the database to this release's layout, keeping every number (one transaction per step;
    safe to run twice). `ablate study run` does this by itself; read commands ask for it."""
    from ablate.store.engine import display_url, storage_url, upgrade_storage

    try:
        steps = upgrade_storage(storage)
    except ValueError as exc:
        raise AblateInputError("--storage", str(exc)) from None
    url = display_url(storage_url(storage))
    if as_json:
        emit_json({"storage": url, "steps": steps})
        return
    for line in steps or [f"{url} is up to date"]:
        sys.stdout.write(line + "\n")
