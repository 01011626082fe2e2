"""``ablate db upgrade``: bring a results database written by an older ablate to this release's layout."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ablate.cli.app import JsonOpt, StorageOpt, app
from ablate.cli.common import emit_json, open_read
from ablate.errors import AblateInputError

db_app = typer.Typer(
    help="The results database itself: upgrade one written by an older ablate, or export it as one "
    "self-contained SQLite file to share.",
    short_help="The results database itself: ablate db export writes one file to share, ablate db upgrade "
    "brings one an older ablate wrote to this layout.",
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


@db_app.command(
    "export",
    short_help="Write the results, or the chosen studies, into one new SQLite file to share (every read command, "
    "Optuna's tools and ablate report accept it).",
)
def export(
    out: Annotated[str, typer.Argument(metavar="OUT.db", help="The new SQLite file (never overwritten).")],
    study: Annotated[
        list[str] | None,
        typer.Option("--study", help="A study to export (repeat for several; default: every study)."),
    ] = None,
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the results into one new SQLite file that holds everything on its own: from SQLite a
    consistent copy through SQLite's backup API (safe while workers write), from PostgreSQL, or with
    --study, the chosen studies' rows (ablate's and Optuna's tables, ids kept). Share that file:
    a copy of results.db taken while a study runs may miss what its -wal file still holds."""
    from ablate.store.engine import display_url, open_storage, storage_url
    from ablate.store.export import export_database

    url = storage_url(storage)
    engine = open_read(open_storage, url)
    try:
        done = export_database(engine, out, study)
    except ValueError as exc:
        raise AblateInputError("OUT.db", str(exc)) from None
    except LookupError as exc:
        raise AblateInputError("--study", str(exc).strip("'\"")) from None
    size = done.path.stat().st_size
    doc = {"file": str(done.path), "storage": display_url(url), "studies": done.studies, "method": done.method,
           "bytes": size, "rows": done.rows}  # fmt: skip
    if as_json:
        emit_json(doc)
        return
    n = len(done.studies)
    how = "SQLite's backup API" if done.method == "backup" else "row by row, ids kept"
    sys.stdout.write(
        f"exported {n} stud{'ies' if n != 1 else 'y'} ({', '.join(done.studies)}) from {display_url(url)} to "
        f"{done.path} ({size / 1e6:.1f} MB, {how})\n"
        f"read it with: --storage sqlite:///{done.path}\n"
    )
