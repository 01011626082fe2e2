"""``ablate report``: a study written up from the database."""

from __future__ import annotations

from typing import Annotated

import typer

from ablate.cli.app import JsonOpt, StorageOpt, app, out_console
from ablate.cli.common import check_out_dir, emit_json, open_read, program
from ablate.errors import AblateInputError


@app.command(
    short_help="Write a study up from the database: report.md with its figures, one self-contained "
    "report.html, report.json."
)
def report(
    study: Annotated[str, typer.Argument(metavar="STUDY", help="Name of the study to write up.")],
    out_dir: Annotated[
        str | None,
        typer.Option(
            "--out", help="Folder for report.md, report.html, report.json and the PNGs (default: reports/STUDY)."
        ),
    ] = None,
    storage: StorageOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a study up from the database alone: the question, the setting, the evidence per fix with
    intervals, the fixes ranked on the Pareto front, paired comparisons with the baseline across seeds,
    the caveats and a recommendation. Markdown with the figures beside it (report.md + PNGs), one
    self-contained HTML file (report.html) and the numbers as JSON (report.json)."""
    from ablate.report import write_report
    from ablate.store.engine import display_url, open_storage, storage_url

    url = storage_url(storage)
    engine = open_read(open_storage, url)
    out_dir = out_dir or f"reports/{study}"
    check_out_dir(out_dir, "--out", "the report")
    try:
        files = write_report(engine, study, out_dir, display_url(url), program())
    except LookupError as exc:
        raise AblateInputError("STUDY", str(exc).strip("'\"")) from None
    if as_json:
        emit_json(
            {
                "study": files.study,
                "markdown": str(files.markdown),
                "html": str(files.html),
                "json": str(files.json),
                "figures": [str(p) for p in files.figures],
            }
        )
        return
    for p in (files.markdown, files.html, files.json, *files.figures):
        out_console().print(f"report: {p}")
