"""The Typer application and the options several commands share."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

# `ablate --help` lists the commands in the order a study uses them (Typer's is the order of definition).
COMMAND_ORDER = (
    "study", "query", "plot", "report", "compare", "export", "probe", "train", "subject", "launch", "db",
)  # fmt: skip


class _OrderedGroup(TyperGroup):
    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER))


app = typer.Typer(
    cls=_OrderedGroup,
    help="Measure and search how a new branch should join a frozen model's residual stream. "
    "Run a study (ablate study run SPEC), read it (ablate query, ablate plot) and write it up "
    "(ablate report STUDY: Markdown with figures and one self-contained HTML file, in reports/STUDY). "
    "Your own model: ablate subject check SPEC, then the same commands (docs/subjects.md).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err = Console(stderr=True)


def out_console(wide: bool = False) -> Console:
    # Made per call: the width is the terminal's, else $COLUMNS, else 80 (rich's rule), so a piped
    # table fits what the reader will view it in; --wide lifts the limit.
    return Console(width=100_000) if wide else Console()


FixOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--fix",
        help="Fix type (repeat for several; probe default: every fix). "
        "One of: none, fixed-scale, learnable-alpha, zero-init, tanh-gate, layerscale, norm-match, "
        "no-branch; a join may add '+zero-init'.",
    ),
]
ScaleOpt = Annotated[
    float | None,
    typer.Option(
        "--scale",
        help="The fix's scale s (> 0; tanh-gate's alpha init may be 0, its default); default: the fix's own default.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for initialisation and batch order.")]
# Options a spec also sets take None as "not given": ``--spec``'s value (else the built-in default) stands.
SpecOpt = Annotated[
    str | None,
    typer.Option(
        "--spec",
        help="Take the subject, data, training and probe settings from this study spec (an AA-CLIP spec or "
        "one with [subject]: your own model); the options below override it. Without it: AA-CLIP, tiny.",
    ),
]
BatchesOpt = Annotated[
    int | None, typer.Option("--batches", help="Held-out batches the gradient probe averages over.", show_default=False)
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="auto | cpu | cuda (auto picks cuda when present). Default: auto.")
]
BackboneOpt = Annotated[
    str | None, typer.Option("--backbone", help="AA-CLIP: tiny (CPU default) | vit-l-14-336@518 (real scale).")
]
PretrainedOpt = Annotated[
    str | None,
    typer.Option(
        "--pretrained", help="AA-CLIP: a local checkpoint file or an open_clip tag already in the local cache."
    ),
]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", help="Samples per batch. Default: 4 (AA-CLIP).")]
ContextNormOpt = Annotated[
    bool | None,
    typer.Option("--context-norm/--no-context-norm", help="AA-CLIP: L2-normalise each text-context token."),
]
InjectOpt = Annotated[
    int | None, typer.Option("--inject-at", help="AA-CLIP: block after which the branch joins (0-based). Default: 0.")
]
ThresholdOpt = Annotated[
    float | None, typer.Option("--threshold", help="Ratio at or above which the verdict is OK. Default: 0.8.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="table | csv | json (default: table); not with --json.")
]
WideOpt = Annotated[
    bool,
    typer.Option(
        "--wide",
        help="Table: every column, whatever the width (default: the columns that fit the terminal, "
        "$COLUMNS or 80; the table names those left out).",
    ),
]
GroupOpt = Annotated[
    str | None,
    typer.Option(
        "--group",
        help="Adapter group the verdict, adapter_gain and the frozen control judge: one of the subject's "
        "groups or all (their union). AA-CLIP: layers (block adapters, default), proj (per-level + "
        "detection projections), all (both: the seed's 'image adapter'). Default: the subject's first.",
    ),
]
FreezeOpt = Annotated[
    bool,
    typer.Option(
        "--freeze-adapters",
        help="The frozen control: the judged group gets gradients but is never updated. "
        "At step 0 (probe) the weights are the same either way, so only training differs.",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="torch CPU threads for this process (default: $ABLATE_THREADS, else $OMP_NUM_THREADS, else "
        "the cores divided by the ablate processes training on this machine).",
    ),
]

study_app = typer.Typer(
    help="Optuna studies over fix types and scales: ablate study run SPEC.",
    short_help="Optuna studies over fix types and scales: ablate study run SPEC runs or resumes one.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")

StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="SQLAlchemy URL; default $ABLATE_STORAGE or sqlite:///results.db."),
]
StudyOpt = Annotated[str | None, typer.Option("--study", help="Study name (default: the latest study).")]
