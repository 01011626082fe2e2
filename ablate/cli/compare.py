"""``ablate compare A B``: two studies side by side, in one storage or two."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ablate.cli.app import FormatOpt, JsonOpt, StorageOpt, WideOpt, app
from ablate.cli.common import emit_json, lookup_errors, open_read, output_format, print_table

StorageBOpt = Annotated[
    str | None, typer.Option("--storage-b", help="B's database, when it is another one (default: --storage).")
]


@app.command(
    short_help="Compare two studies (before and after a resume, two specs, two code versions), in one storage or "
    "two: each fix in A and B, and B - A with its interval."
)
def compare(
    study_a: Annotated[str, typer.Argument(metavar="A", help="The study compared against (in --storage).")],
    study_b: Annotated[
        str, typer.Argument(metavar="B", help="The study compared with it (in --storage-b, else --storage).")
    ],
    storage: StorageOpt = None,
    storage_b: StorageBOpt = None,
    fmt_: FormatOpt = None,
    wide: WideOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare two studies fix by fix: the references, then each fix's best ranked trial in A and in B
    with 95% intervals, and B - A per fix with its interval (paired by seed when both ran the same
    seeds, else Welch's), with which spec keys and code versions differ. --format csv gives one row
    per fix with every objective; json adds both studies, the spec keys and the versions. The figure:
    ablate plot --study A --compare B."""
    from ablate.compare import compare_studies, document, records
    from ablate.store.engine import open_storage, storage_url

    fmt_ = output_format(fmt_, as_json, ("table", "csv", "json"))
    engine_a = open_read(open_storage, storage_url(storage))
    engine_b = open_read(open_storage, storage_url(storage_b or storage))
    with lookup_errors():
        comparison = compare_studies(engine_a, study_a, engine_b, study_b)
    if fmt_ == "json":
        emit_json(document(comparison))
    elif fmt_ == "csv":
        import pandas as pd

        sys.stdout.write(pd.DataFrame.from_records(records(comparison)).to_csv(index=False))
    else:
        from ablate import views

        print_table(f"{comparison.b.study} (B) against {comparison.a.study} (A)", views.compare_view(comparison), wide)
