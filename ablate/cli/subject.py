"""``ablate subject check SPEC``: what a spec's subject is, before anything trains."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ablate.cli.app import JsonOpt, app
from ablate.cli.common import emit_json, print_table

subject_app = typer.Typer(
    help="The model a spec studies: check its groups and branch point.",
    short_help="The model a spec studies: ablate subject check SPEC shows its groups and branch point, nothing trains.",
    no_args_is_help=True,
)
app.add_typer(subject_app, name="subject")


@subject_app.command(
    "check",
    short_help="Build the spec's model once and print its groups, the branch point and the branch's size; every "
    "refusal a study would meet shows here first.",
)
def check(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="Study spec ([subject] or AA-CLIP's [model]).")],
    as_json: JsonOpt = False,
) -> None:
    """Build the spec's model once (on the meta device where possible: no weights, no memory) and print
    each watched group (parameter names, count of tensors, size), the branch point, the branch's size
    and how many times the branch point runs in one forward (it must be 1). Every refusal a study
    would meet (a group matching nothing, overlapping groups, a missing module; docs/subjects.md
    lists them) shows here first."""
    from ablate.subjects.check import check_spec

    report = check_spec(spec_path)
    if as_json:
        emit_json(report)
        return
    print_table("subject check", _groups_view(report))
    branch = report["branch"]
    line = f"branch: joins the output of {branch['at']!r}, {branch['params']:,} parameters, runs {branch['calls']}x"
    sys.stdout.write(line + " per forward\n")  # plain: a long module path must not wrap
    for name, entry in report.get("extra", {}).items():
        sys.stdout.write(f"{name}: {entry['params']:,} parameters in {entry['tensors']} tensors (not watched)\n")


def _groups_view(report: dict):  # noqa: ANN202 - a views.TableView
    from ablate.tablefit import Col
    from ablate.views import TableView

    rows = []
    for name, g in report["groups"].items():
        names = g.get("names", [])
        shown = ", ".join(names[:1])
        hidden = len(names[1:]) + g.get("more", 0)
        more = f" (+{hidden} more)" if hidden else ""
        rows.append([name, f"{g['params']:,}", str(g["tensors"]), (shown + more) or "(union of the groups)"])
    cols = (Col("group"), Col("params", "right"), Col("tensors", "right", 1), Col("parameters", "left", 2))
    note = f"{report.get('device', 'meta')} build of {report.get('factory') or report.get('backbone')}"
    return TableView(cols, rows, (note,))
