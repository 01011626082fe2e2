"""``ablate query``: the results database as tables, CSV or JSON."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ablate.cli.app import FormatOpt, JsonOpt, StorageOpt, StudyOpt, WideOpt, app
from ablate.cli.common import lookup_errors, open_read, output_format, print_table, print_view
from ablate.errors import AblateInputError
from ablate.store.sql_limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT_S


@app.command(
    short_help="Read the results database: trials, --group-by fix (ranked, against the baseline), --runs, "
    "--classes, --studies, --sql; table, csv or json."
)
def query(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by",
            help="'fix': the references, then each fix's best ranked trial with 95% intervals, ranked by the first "
            "objective, with its verdict against the baseline and the recommended fix named under the table.",
        ),
    ] = None,
    runs: Annotated[bool, typer.Option("--runs", help="One row per run (trial x seed, baselines, controls).")] = False,
    classes: Annotated[
        bool,
        typer.Option("--classes", help="One row per evaluated run and class: image/pixel AUROC and AP, counts."),
    ] = False,
    studies: Annotated[bool, typer.Option("--studies", help="List the studies in the database.")] = False,
    sql: Annotated[
        str | None,
        typer.Option("--sql", help="One read-only SELECT/WITH query over the study tables (pure functions only)."),
    ] = None,
    sql_timeout: Annotated[
        float, typer.Option("--sql-timeout", metavar="SECONDS", help="Stop a --sql query after this long.")
    ] = DEFAULT_TIMEOUT_S,
    sql_max_rows: Annotated[
        int,
        typer.Option(
            "--sql-max-rows",
            metavar="ROWS",
            help="--sql reads at most this many rows (streamed, never the whole result); past it, prints "
            "them and a note on stderr that the result was cut (exit 0), or with --strict exits 2.",
        ),
    ] = DEFAULT_MAX_ROWS,
    sql_max_bytes: Annotated[
        int,
        typer.Option(
            "--sql-max-bytes",
            metavar="BYTES",
            help="--sql holds at most this much memory in rows (default 64 MiB); past it the result is cut "
            "like --sql-max-rows. One row may not exceed it (on SQLite: no value may exceed it divided by "
            "the number of columns).",
        ),
    ] = DEFAULT_MAX_BYTES,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="A --sql result cut by --sql-max-rows or --sql-max-bytes is an error (exit 2)."),
    ] = False,
    fmt_: FormatOpt = None,
    wide: WideOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Query the results database: one row per trial (default), --group-by fix, --runs, --classes,
    --studies, --sql."""
    from ablate.store.engine import open_storage

    fmt_ = output_format(fmt_, as_json, ("table", "csv", "json"))
    if group_by not in (None, "fix"):
        raise AblateInputError("--group-by", f"only 'fix' is supported, got {group_by!r}")
    if not sql_timeout > 0 or sql_timeout == float("inf"):
        raise AblateInputError("--sql-timeout", f"must be a positive number of seconds, got {sql_timeout:g}")
    if sql_max_rows <= 0:
        raise AblateInputError("--sql-max-rows", f"must be a positive number of rows, got {sql_max_rows}")
    if sql_max_bytes <= 0:
        raise AblateInputError("--sql-max-bytes", f"must be a positive number of bytes, got {sql_max_bytes}")
    engine = open_read(open_storage, storage)
    if studies and sql is None and fmt_ != "csv":
        print_studies(engine, fmt_, wide)  # plain SQLAlchemy: no pandas import for the quick look
        return
    from ablate.store import query as q

    with lookup_errors():
        if sql is not None:
            frame, title = q.run_sql(engine, sql, sql_timeout, sql_max_rows, sql_max_bytes), "sql"
        elif studies:
            frame, title = q.list_studies(engine), "studies"
        elif group_by == "fix":
            frame, title = q.group_by_fix(engine, study), "per fix"
        elif runs:
            frame, title = q.runs_frame(engine, study), "runs"
        elif classes:
            frame, title = q.class_metrics_frame(engine, study), "classes"
        else:
            frame, title = q.trials_frame(engine, study), "trials"
    cut = frame.attrs.get("cut") if sql is not None else None
    if cut is not None and strict:
        raise AblateInputError(cut.option, f"{cut.reason} (--strict)")
    if fmt_ == "json":
        from ablate.jsonout import dumps_records

        sys.stdout.write(dumps_records(q.json_records(frame)) + "\n")
    elif fmt_ == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    else:  # the terminal view keeps the columns a reader compares; csv/json carry them all
        print_view(engine, study, frame, title, wide)
    if cut is not None:  # after the rows, on stderr: CSV and JSON on stdout stay whole
        print(f"note: --sql: {cut.note()}", file=sys.stderr)


def print_studies(engine, fmt_: str, wide: bool = False) -> None:
    """``query --studies`` as a table or JSON, from the catalog's rows (the same text as the frame gave)."""
    from ablate import views
    from ablate.jsonout import dumps_records
    from ablate.store.catalog import study_rows

    rows = study_rows(engine)
    if fmt_ == "json":
        docs = [r._asdict() | {"created_at": r.created_at.isoformat()} for r in rows or []]
        sys.stdout.write(dumps_records(docs) + "\n")
        return
    # no ablate tables (rows is None): the headers alone say what would be listed
    print_table("studies", views.studies_view(rows or [], wide), wide)
