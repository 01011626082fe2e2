"""The ``ablate`` command: thin layer that parses, calls the library, prints (rich) or emits JSON.

Exit codes: 0 success, 2 bad input (one line naming the argument), 1 a run that failed.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ablate.errors import AblateInputError
from ablate.textfmt import fmt

app = typer.Typer(
    help="Measure and search how a new branch should join a frozen model's residual stream.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err = Console(stderr=True)


def _out() -> Console:
    # Made per call so redirected stdout (pipes, tests) gets a wide console instead of 80 columns.
    console = Console()
    return console if console.is_terminal else Console(width=200)


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
    float | None, typer.Option("--scale", help="The fix's scale s (> 0); default: the fix's own default.")
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
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


def _arm_config(
    fix: str,
    scale: float | None,
    seed: int,
    batches: int,
    device: str,
    backbone: str,
    pretrained: str | None,
    batch_size: int,
    context_norm: bool,
    inject_at: int,
    threshold: float,
    steps: int = 1,
    probe_every: int = 50,
):
    from ablate.model.aaclip import AAClipConfig
    from ablate.train.arm import ArmConfig, DataConfig, validate
    from ablate.train.run import RunConfig

    cfg = ArmConfig(
        model=AAClipConfig(
            backbone=backbone,
            pretrained=pretrained,
            fix=fix,
            scale=scale,
            inject_at=inject_at,
            context_norm=context_norm,
        ),
        data=DataConfig(batch_size=batch_size),
        run=RunConfig(steps=steps, probe_every=probe_every, threshold=threshold),
        probe_batches=batches,
        seed=seed,
        device=device,
    )
    validate(cfg)
    return cfg


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf become null (JSON has no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def _emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(_clean(doc), indent=2) + "\n")


@app.command()
def probe(
    fix: FixOpt = None,
    scale: ScaleOpt = None,
    seed: SeedOpt = 0,
    batches: BatchesOpt = 8,
    device: DeviceOpt = "auto",
    backbone: BackboneOpt = "tiny",
    pretrained: PretrainedOpt = None,
    batch_size: BatchSizeOpt = 4,
    context_norm: ContextNormOpt = False,
    inject_at: InjectOpt = 0,
    threshold: ThresholdOpt = 0.8,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Paired gradient probe at initialisation: adapter gradient with / without the branch.

    Same weights, same cached batches, dropout off. Prints one row per fix with the median ratio
    over batches, its bootstrap 95% CI, the gradient share, norm inflation, the step-0 loss with
    and without the branch, and the final-feature cosine. --json with one --fix prints one object,
    otherwise a list.
    """
    from ablate.model.fixes import fix_names
    from ablate.train.arm import probe_arm

    names = fix or fix_names()
    if scale is not None and len(names) > 1:
        raise AblateInputError("--scale", "give exactly one --fix when setting --scale")
    cfgs = [
        _arm_config(
            f, scale, seed, batches, device, backbone, pretrained, batch_size, context_norm, inject_at, threshold
        )
        for f in names
    ]
    results = []
    with _progress(quiet or as_json) as prog:
        task = prog.add_task("probe", total=len(cfgs))
        for cfg in cfgs:
            prog.update(task, description=f"probe {cfg.model.fix}")
            results.append(probe_arm(cfg))
            prog.advance(task)
    if as_json:
        docs = [r.to_dict() for r in results]
        _emit_json(docs[0] if len(docs) == 1 else docs)
        return
    table = Table(title=f"Gradient probe at init ({backbone}, seed {seed}, {batches} batches x {batch_size})")
    for col in (
        "fix",
        "scale",
        "ratio",
        "95% CI",
        "layers",
        "share",
        "inflation",
        "loss w/",
        "loss w/o",
        "cos",
        "verdict",
    ):
        table.add_column(col, justify="left" if col in ("fix", "verdict") else "right")
    for r in results:
        table.add_row(
            r.fix,
            fmt(r.scale),
            fmt(r.grad_ratio),
            f"[{fmt(r.grad_ratio_ci[0], 3)}, {fmt(r.grad_ratio_ci[1], 3)}]",
            fmt(r.grad_ratio_layers),
            fmt(r.grad_share, 3),
            fmt(r.norm_inflation),
            fmt(r.loss_with),
            fmt(r.loss_without),
            fmt(r.feature_cosine),
            r.verdict,
        )
    _out().print(table)


@app.command()
def train(
    fix: Annotated[str, typer.Option("--fix", help="Fix type (see `ablate probe --help`).")] = "none",
    scale: ScaleOpt = None,
    seed: SeedOpt = 0,
    steps: Annotated[int, typer.Option("--steps", help="Adam steps.")] = 100,
    batches: BatchesOpt = 4,
    probe_every: Annotated[int, typer.Option("--probe-every", help="Probe every K steps (0: start and end).")] = 50,
    device: DeviceOpt = "auto",
    backbone: BackboneOpt = "tiny",
    pretrained: PretrainedOpt = None,
    batch_size: BatchSizeOpt = 4,
    context_norm: ContextNormOpt = False,
    inject_at: InjectOpt = 0,
    threshold: ThresholdOpt = 0.8,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Short training run of one fix: loss slope, first/last loss, gradient ratio at probe points."""
    from ablate.train.arm import ArmSetup, train_arm

    cfg = _arm_config(
        fix,
        scale,
        seed,
        batches,
        device,
        backbone,
        pretrained,
        batch_size,
        context_norm,
        inject_at,
        threshold,
        steps=steps,
        probe_every=probe_every,
    )
    setup = ArmSetup(cfg)
    with _progress(quiet or as_json) as prog:
        task = prog.add_task(f"train {setup.fix_name}", total=steps)
        result = train_arm(cfg, on_step=lambda s: prog.update(task, completed=s + 1), setup=setup)
    summary = result.summary()
    summary["probes"] = [p.to_dict() for p in result.probes]
    if as_json:
        _emit_json(summary)
        return
    table = Table(title=f"Training run: {result.fix} (scale {fmt(result.scale)}), seed {seed}, {steps} steps")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "loss_first",
        "loss_last",
        "loss_slope",
        "grad_ratio_init",
        "grad_ratio_final",
        "grad_ratio_mean",
        "wall_s",
        "steps_per_s",
        "peak_mem_mb",
        "device",
    ):
        table.add_row(key, fmt(summary[key]))
    _out().print(table)
    probes = Table(title="Probe points")
    for col in ("step", "ratio", "95% CI", "share", "verdict"):
        probes.add_column(col, justify="right")
    for p in result.probes:
        probes.add_row(
            str(p.step),
            fmt(p.grad_ratio),
            f"[{fmt(p.grad_ratio_ci[0], 3)}, {fmt(p.grad_ratio_ci[1], 3)}]",
            fmt(p.grad_share, 3),
            p.verdict,
        )
    _out().print(probes)


study_app = typer.Typer(help="Optuna studies over fix types and scales.", no_args_is_help=True)
app.add_typer(study_app, name="study")

StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="SQLAlchemy URL; default $ABLATE_STORAGE or sqlite:///results.db."),
]
StudyOpt = Annotated[str | None, typer.Option("--study", help="Study name (default: the latest study).")]


@study_app.command("run")
def study_run(
    spec_path: Annotated[str, typer.Argument(metavar="SPEC", help="Study spec, e.g. studies/quick.toml.")],
    trials: Annotated[
        int | None, typer.Option("--trials", help="Finished trials wanted in total (default: the spec's).")
    ] = None,
    storage: StorageOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Study name (default: the spec's name).")] = None,
    plots: Annotated[
        str | None, typer.Option("--plots", help="Directory for the plots (default: plots/<study>).")
    ] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Do not draw plots at the end.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run an Optuna study of the spec's fixes and scales; resume it if it exists.

    Each trial trains every seed of the spec and stores every run; the no-branch baseline runs
    once per seed. Running the same command again continues up to --trials finished trials
    without repeating finished work. Ctrl-C stops cleanly; the same command resumes.
    """
    from ablate.spec import load_spec
    from ablate.store.engine import storage_url
    from ablate.study import run_study
    from ablate.study.runner import StudySpecConflict, preflight

    spec, text = load_spec(spec_path)
    if trials is not None and trials < 1:
        raise AblateInputError("--trials", "must be >= 1")
    if name is not None and not name.strip():
        raise AblateInputError("--name", "must not be empty")
    url = storage_url(storage)
    from ablate.store.engine import open_storage

    preflight(spec)
    try:
        open_storage(url)
    except ValueError as exc:
        raise AblateInputError("--storage", str(exc)) from None
    import optuna

    # Our progress display and failure lines replace Optuna's per-trial log (and its tracebacks).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        if quiet or as_json:
            outcome = run_study(spec, text, url, trials, name)
        else:
            from ablate.console import RichStudyReporter

            with RichStudyReporter(err, spec.study.objectives) as reporter:
                outcome = run_study(spec, text, url, trials, name, reporter)
    except StudySpecConflict as exc:
        raise AblateInputError("--name", str(exc)) from None
    written: list[str] = []
    if not no_plots:
        written = [str(p) for p in _draw(url, outcome.name, plots or f"plots/{outcome.name}", None, quiet=True)]
    if as_json:
        _emit_json({**outcome.__dict__, "plots": written})
        return
    if not quiet:
        _print_frame(_trials(url, outcome.name), f"study {outcome.name}: {outcome.n_trials} finished trials")
        if outcome.failed:
            err.print(f"{outcome.failed} trial(s) failed this time; run the same command to retry them.")
        for p in written:
            _out().print(f"plot: {p}")


@app.command()
def query(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    group_by: Annotated[str | None, typer.Option("--group-by", help="'fix': mean and 95% CI per fix.")] = None,
    runs: Annotated[bool, typer.Option("--runs", help="One row per run (trial x seed, baselines).")] = False,
    studies: Annotated[bool, typer.Option("--studies", help="List the studies in the database.")] = False,
    sql: Annotated[str | None, typer.Option("--sql", help="A read-only SELECT against the database.")] = None,
    fmt_: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    as_json: JsonOpt = False,
) -> None:
    """Query the results database: one row per trial (default), --group-by fix, --runs, --studies, --sql."""
    from ablate.store import query as q
    from ablate.store.engine import open_storage

    if fmt_ not in ("table", "csv", "json"):
        raise AblateInputError("--format", f"must be table, csv or json, got {fmt_!r}")
    if group_by not in (None, "fix"):
        raise AblateInputError("--group-by", f"only 'fix' is supported, got {group_by!r}")
    fmt_ = "json" if as_json else fmt_
    engine = _open_read(open_storage, storage)
    with _lookup_errors():
        if sql is not None:
            frame, title = q.run_sql(engine, sql), "sql"
        elif studies:
            frame, title = q.list_studies(engine), "studies"
        elif group_by == "fix":
            frame, title = q.group_by_fix(engine, study), "per fix"
        elif runs:
            frame, title = q.runs_frame(engine, study), "runs"
        else:
            frame, title = q.trials_frame(engine, study), "trials"
    if fmt_ == "json":
        _emit_json(q.json_records(frame))
    elif fmt_ == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    else:  # the terminal view keeps the columns a reader compares; csv/json carry them all
        keep = TABLE_COLUMNS.get(title)
        _print_frame(frame[[c for c in keep if c in frame.columns]] if keep else frame, title)


@app.command()
def plot(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    out_dir: Annotated[str | None, typer.Option("--out", help="Output directory (default: plots/<study>).")] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", help="tradeoff | loss | ratio-scale | gates | grad-norms (repeat; default: all)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw a study's plots as PNG and SVG: the loss-vs-ratio tradeoff, loss curves, ratio vs scale,
    gate trajectories and gradient norms."""
    from ablate.store import query as q
    from ablate.store.engine import open_storage, storage_url

    url = storage_url(storage)
    engine = _open_read(open_storage, url)
    with _lookup_errors():
        name = study or q.latest_study(engine)
    written = _draw(url, name, out_dir or f"plots/{name}", kind, quiet=as_json)
    if as_json:
        _emit_json({"study": name, "plots": [str(p) for p in written]})
    else:
        for p in written:
            _out().print(f"plot: {p}")


def _open_read(open_storage, url):
    try:
        return open_storage(url, create=False)
    except ValueError as exc:
        raise AblateInputError("--storage", str(exc)) from None


class _lookup_errors:
    """A study that does not exist, or a bad --sql, is the user's input: exit 2."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is LookupError:
            raise AblateInputError("--study", str(exc).strip("'\"")) from None
        if exc_type is ValueError and not isinstance(exc, AblateInputError):
            raise AblateInputError(
                "--sql" if "sql" in str(exc).lower() or "statement" in str(exc).lower() else "query", str(exc)
            ) from None
        return False


TABLE_COLUMNS = {
    "trials": (
        "trial_number",
        "fix",
        "scale",
        "status",
        "n_seeds",
        "loss_slope",
        "loss_slope_rel",
        "grad_ratio_init",
        "grad_ratio_init_lo",
        "grad_ratio_init_hi",
        "grad_ratio_mean",
        "verdict",
    ),
    "per fix": (
        "fix",
        "n_runs",
        "n_trials",
        "loss_slope_mean",
        "loss_slope_lo",
        "loss_slope_hi",
        "loss_slope_rel_mean",
        "grad_ratio_init_mean",
        "grad_ratio_mean_mean",
        "grad_ratio_mean_lo",
        "grad_ratio_mean_hi",
        "best_scale",
    ),
    "runs": (
        "run_id",
        "role",
        "trial_number",
        "seed",
        "fix",
        "scale",
        "status",
        "loss_slope",
        "grad_ratio_init",
        "grad_ratio_mean",
        "wall_s",
        "error",
    ),
}


def _trials(url: str, name: str):
    from ablate.store import query as q
    from ablate.store.engine import open_storage

    frame = q.trials_frame(open_storage(url), name)
    return frame[[c for c in TABLE_COLUMNS["trials"] if c in frame.columns]]


def _draw(url: str, name: str, out_dir: str, kinds: list[str] | None, quiet: bool) -> list:
    from ablate.plot import render_all
    from ablate.store import query as q
    from ablate.store.engine import open_storage

    engine = open_storage(url, create=False)
    settings = q.study_settings(engine, name)
    with _lookup_errors():
        runs = q.runs_frame(engine, name)
        steps = q.step_metrics_frame(engine, name)
    return render_all(
        runs,
        steps,
        out_dir,
        kinds=kinds,
        ratio_metric=settings["ratio_metric"],
        slope_metric=settings["slope_metric"],
        threshold=settings["threshold"],
        on_skip=(lambda k, why: None) if quiet else (lambda k, why: err.print(f"plot {k} skipped: {why}")),
    )


def _print_frame(frame, title: str) -> None:
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col), justify="right" if frame[col].dtype.kind in "if" else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(fmt(v) for v in row))
    _out().print(table)


def _progress(disabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=disabled,
        transient=True,
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _fail(message: str, code: int) -> None:
    # Plain stderr, one line: rich would wrap long messages at the terminal width.
    sys.stderr.write(message + "\n")
    sys.exit(code)


def _input_error_line(exc: AblateInputError) -> str:
    # Top-level fields are CLI options here ("scale" -> "--scale"); dotted ones are spec fields.
    # Positional arguments (SPEC) stay upper case.
    keep = "." in exc.field or exc.field.startswith("-") or exc.field.isupper()
    field = exc.field if keep else "--" + exc.field.replace("_", "-")
    return f"error: {field}: {' '.join(exc.message.split())}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input exits 2 with one line, a failed run exits 1, Ctrl-C exits 130."""
    from ablate.train.run import NonFiniteLossError

    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="ablate", standalone_mode=False)
    except AblateInputError as exc:
        _fail(_input_error_line(exc), 2)
    except KeyboardInterrupt:
        _fail("interrupted; run the same command again to resume", 130)
    except NonFiniteLossError as exc:
        _fail(f"run failed: {exc}", 1)
    except Exception as exc:
        # Typer vendors click; its parse errors carry exit_code 2 and a formatted message.
        if getattr(exc, "exit_code", None) == 2 and hasattr(exc, "format_message"):
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
                sys.stdout.write(ctx.get_help() + "\n")
                sys.exit(0)
            _fail("error: " + " ".join(exc.format_message().split()), 2)
        if type(exc).__name__ == "Abort":
            _fail("interrupted; run the same command again to resume", 130)
        if os.environ.get("ABLATE_DEBUG"):
            raise
        _fail(f"run failed: {type(exc).__name__}: {_one_line(exc)} (ABLATE_DEBUG=1 for a traceback)", 1)
    if rv == 130:  # Typer turns Ctrl-C inside a command into exit code 130
        _fail("interrupted; run the same command again to resume", 130)
    sys.exit(rv if isinstance(rv, int) else 0)
