"""The Typer application and the options several commands share."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Measure and search how a new branch should join a frozen model's residual stream. "
    "Run a study (ablate study run SPEC), read it (ablate query, ablate plot) and write it up "
    "(ablate report STUDY --out DIR: Markdown with figures, one self-contained HTML file).",
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
BatchesOpt = Annotated[int, typer.Option("--batches", help="Cached batches the gradient probe averages over.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda (auto picks cuda when present).")]
BackboneOpt = Annotated[str, typer.Option("--backbone", help="tiny (CPU default) | vit-l-14-336@518 (real scale).")]
PretrainedOpt = Annotated[
    str | None,
    typer.Option("--pretrained", help="Local checkpoint file or an open_clip tag already in the local cache."),
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Images per batch.")]
ContextNormOpt = Annotated[
    bool, typer.Option("--context-norm/--no-context-norm", help="L2-normalise each text-context token.")
]
InjectOpt = Annotated[int, typer.Option("--inject-at", help="Block after which the branch joins (0-based).")]
ThresholdOpt = Annotated[float, typer.Option("--threshold", help="Ratio at or above which the verdict is OK.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
GroupOpt = Annotated[
    str,
    typer.Option(
        "--group",
        help="Adapter group the verdict and adapter_gain judge: layers (block adapters, default), "
        "proj (per-level + detection projections) or all (both: the seed's 'image adapter').",
    ),
]
FreezeOpt = Annotated[
    bool,
    typer.Option(
        "--freeze-adapters",
        help="The frozen control: the block adapters get gradients but are never updated. "
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
