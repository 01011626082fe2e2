"""The ``ablate`` command: thin layer that parses, calls the library, prints (rich) or emits JSON.

Exit codes: 0 success, 2 bad input (one line naming the argument), 1 a run that failed.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import replace
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ablate.errors import AblateInputError, SQLInputError
from ablate.textfmt import fmt

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


def _out(wide: bool = False) -> Console:
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


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise AblateInputError("--threads", f"must be >= 1, got {threads}")


class _worker_threads:
    """Register this process as a local worker and take its share of the cores for the command."""

    def __init__(self, threads: int | None) -> None:
        from ablate.threads import LocalWorkers

        _check_threads(threads)
        self.threads = threads
        self.workers = LocalWorkers()

    def __enter__(self) -> None:
        from ablate.threads import apply_threads, choose_threads

        self.workers.__enter__()
        apply_threads(choose_threads(self.threads, self.workers.live())[0])

    def __exit__(self, *exc: Any) -> None:
        self.workers.__exit__(*exc)


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
    group: str = "layers",
    freeze_adapters: bool = False,
    eval_batches: int = 0,
):
    from ablate.model.aaclip import AAClipConfig
    from ablate.train.arm import ArmConfig, DataConfig, EvalConfig, validate
    from ablate.train.run import RunConfig

    if group not in ("layers", "proj", "all"):
        raise AblateInputError("--group", f"must be layers, proj or all, got {group!r}")
    if batches < 2:
        raise AblateInputError("--batches", "must be >= 2 (one batch gives no interval)")
    if not 0 <= eval_batches <= 100_000:
        raise AblateInputError("--eval-batches", f"must be in [0, 100000] (0: no evaluation), got {eval_batches}")
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
        run=RunConfig(steps=steps, probe_every=probe_every, threshold=threshold, group=group),
        probe_batches=batches,
        seed=seed,
        device=device,
        freeze_adapters=freeze_adapters,
        eval=EvalConfig(enabled=eval_batches > 0, batches=max(eval_batches, 1)),
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
    group: GroupOpt = "layers",
    freeze_adapters: FreezeOpt = False,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Paired gradient probe at initialisation: adapter gradient with / without the branch.

    Same weights, same held-out batches, dropout off. One row per fix: the ratio R for the block
    adapters (layers), the projections (proj) and both (all), each the geometric mean over batches;
    the 95% interval of the judged group's R (t on log ratios, within this seed); the judged group's
    gradient share |g|^2/(|g|^2+|g_branch|^2); the final-feature cosine with vs without the branch;
    the verdict (R of the judged group >= --threshold). --json adds every group's numbers, the norm
    inflation and the step-0 losses; with one --fix it prints one object, otherwise a list.
    """
    from ablate.model.fixes import fix_names
    from ablate.train.arm import probe_arm

    names = fix or fix_names()
    if scale is not None and len(names) > 1:
        raise AblateInputError("--scale", "give exactly one --fix when setting --scale")
    cfgs = [
        _arm_config(
            f,
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
            group=group,
            freeze_adapters=freeze_adapters,
        )
        for f in names
    ]
    results = []
    with _worker_threads(threads), _progress(quiet or as_json) as prog:
        task = prog.add_task("probe", total=len(cfgs))
        for cfg in cfgs:
            prog.update(task, description=f"probe {cfg.model.fix}")
            results.append(probe_arm(cfg))
            prog.advance(task)
            _plain_line(quiet or as_json, f"probe {cfg.model.fix}: R {fmt(results[-1].grad_ratio, 3)}")
    if as_json:
        docs = [r.flat() for r in results]
        _emit_json(docs[0] if len(docs) == 1 else docs)
        return
    _print_probe_table(
        results, f"Gradient probe at init ({backbone}, seed {seed}, {batches} batches x {batch_size})", first="fix"
    )


def _print_probe_table(results: list, title: str, first: str) -> None:
    from ablate import views
    from ablate.store.schema import GROUPS

    _print_table(title, views.probe_view(results, first, GROUPS))


@app.command()
def train(
    fix: Annotated[str, typer.Option("--fix", help="Fix type (see `ablate probe --help`).")] = "none",
    scale: ScaleOpt = None,
    seed: SeedOpt = 0,
    steps: Annotated[int, typer.Option("--steps", help="Adam steps.")] = 100,
    batches: BatchesOpt = 6,
    probe_every: Annotated[int, typer.Option("--probe-every", help="Probe every K steps (0: start and end).")] = 50,
    device: DeviceOpt = "auto",
    backbone: BackboneOpt = "tiny",
    pretrained: PretrainedOpt = None,
    batch_size: BatchSizeOpt = 4,
    context_norm: ContextNormOpt = False,
    inject_at: InjectOpt = 0,
    threshold: ThresholdOpt = 0.8,
    group: GroupOpt = "layers",
    freeze_adapters: FreezeOpt = False,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline/--no-baseline",
            help="Also train the no-branch baseline with the same seed and batches and compare step by "
            "step (train_grad_ratio, train_update_ratio, adapter_gain_rel); doubles the time.",
        ),
    ] = True,
    eval_batches: Annotated[
        int,
        typer.Option(
            "--eval-batches",
            help="After training, evaluate on N test batches (a fixed synthetic set): image- and "
            "pixel-level AUROC and AP per class and their mean (image_auroc, image_ap, pixel_auroc, "
            "pixel_ap). 0 (default): no evaluation.",
        ),
    ] = 0,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Short training run of one arm: loss slope, adapter gain, and the comparison with the baseline.

    adapter_gain: held-out loss with the judged adapter group reset to its initial weights minus the
    loss as trained (> 0: what it learned helps; exactly 0 when frozen). With --baseline (default) the
    no-branch run of the same seed is trained too, and the run's adapter gradient and update-to-weight
    ratio are compared with it step by step (geometric mean after warm-up, 95% interval from blocks of
    steps). The bypass probe R at probe points is shown too: after step 0 it also measures how much the
    trained model relies on its branch (co-adaptation), not only dilution.
    """
    from ablate.model.fixes import NO_BRANCH
    from ablate.store.schema import GROUPS
    from ablate.train.arm import ArmSetup, train_arm
    from ablate.train.compare import compare_to_baseline

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
        group=group,
        freeze_adapters=freeze_adapters,
        eval_batches=eval_batches,
    )
    setup = ArmSetup(cfg)
    arms = [(f"train {setup.fix_name}", cfg, setup)]
    with_base = baseline and not (setup.fix_name == NO_BRANCH and not freeze_adapters)
    if with_base:
        base_cfg = replace(cfg.with_fix(NO_BRANCH, None), freeze_adapters=False)
        arms.insert(0, ("baseline no-branch", base_cfg, None))
    results = []
    with _worker_threads(threads), _progress(quiet or as_json) as prog:
        for label, arm_cfg, arm_setup in arms:
            task = prog.add_task(label, total=steps)
            results.append(
                train_arm(arm_cfg, on_step=lambda s, t=task: prog.update(t, completed=s + 1), setup=arm_setup)
            )
            done = results[-1]
            _plain_line(
                quiet or as_json,
                f"{label}: {steps} steps in {done.wall_s:.1f} s, loss slope {fmt(done.loss_slope, 3)}",
            )
    result = results[-1]
    summary = result.summary()
    summary["adapter_gain_batches"] = result.adapter_gain_batches
    if with_base:
        base = results[0]
        summary.update(
            compare_to_baseline(
                result.metrics,
                base.metrics,
                result.adapter_gain_batches,
                base.adapter_gain_batches,
                GROUPS,
                result.group,
            )
        )
        summary["loss_slope_rel"] = result.loss_slope - base.loss_slope
        summary["baseline"] = base.summary()
    summary["probes"] = [p.flat() for p in result.probes]
    if as_json:
        _emit_json(summary)
        return
    _print_train_summary(summary, result, with_base, seed, steps)


def _print_train_summary(summary: dict, result, with_base: bool, seed: int, steps: int) -> None:
    from rich import box

    from ablate.textfmt import fmt_ci

    title = f"Training run: {result.fix} (scale {fmt(result.scale)}), seed {seed}, {steps} steps"
    if result.frozen:
        title += f", frozen: {', '.join(result.frozen)}"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("meaning")
    g = result.group
    rows = [
        ("adapter_gain", fmt_ci(summary["adapter_gain"], summary["adapter_gain_lo"], summary["adapter_gain_hi"]),
         f"loss with {g} reset - trained"),
    ]  # fmt: skip
    if with_base:
        rows += [
            ("adapter_gain_rel", fmt(summary["adapter_gain_rel"], 3), "gain / baseline's gain"),
            ("train_grad_ratio",
             fmt_ci(summary["train_grad_ratio"], summary["train_grad_ratio_lo"], summary["train_grad_ratio_hi"]),
             f"|grad {g}| vs baseline run"),
            ("train_update_ratio",
             fmt_ci(summary["train_update_ratio"], summary["train_update_ratio_lo"], summary["train_update_ratio_hi"]),
             f"|dθ|/|θ| {g} vs baseline"),
            ("loss_slope_rel", fmt(summary["loss_slope_rel"], 3), "slope - baseline's slope"),
        ]  # fmt: skip
    rows += [
        ("loss_slope", fmt(summary["loss_slope"], 3), "loss per 100 steps"),
        ("loss_first/last", f"{fmt(summary['loss_first'], 4)} / {fmt(summary['loss_last'], 4)}", ""),
        ("steps_per_s", fmt(summary["steps_per_s"], 3), f"{summary['device']}, probes excluded"),
        ("mfu", fmt(summary["mfu"], 3) if summary["mfu"] == summary["mfu"] else "-", _mfu_note(summary)),
        ("wall_s", fmt(summary["wall_s"], 3), ""),
    ]
    ev = summary.get("evaluation")
    if ev is not None:
        base = summary.get("baseline", {}).get("evaluation") if with_base else None
        for m in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap"):
            extra = f"; baseline {fmt(base['metrics'][m], 3)}" if base else ""
            # the mean is over the classes that have a value (a one-label class has none)
            n = sum(1 for v in ev["per_class"].values() if isinstance(v[m], float) and math.isfinite(v[m]))
            rows.append((m, fmt(ev["metrics"][m], 3), f"mean of {n}/{len(ev['per_class'])} classes{extra}"))
        for key, why in ev["reasons"].items():
            rows.append(("", "-", f"{key}: {why}"))
    for row in rows:
        table.add_row(*row)
    _out().print(table)
    _print_probe_table(result.probes, "Bypass probe points (R after step 0 includes co-adaptation)", first="step")


def _mfu_note(summary: dict) -> str:
    flops = summary.get("step_flops")
    head = f"{flops / 1e9:.3g} GFLOP/step" if isinstance(flops, float) and flops == flops else "FLOPs not counted"
    if summary.get("mfu") != summary.get("mfu"):  # NaN: no peak rate known (ABLATE_PEAK_TFLOPS sets one)
        return f"{head}; peak unknown"
    return f"{head} / peak bf16"


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
    data: Annotated[
        str | None,
        typer.Option("--data", help="Train on this data set on disk (a folder, or a manifest file); overrides [data]."),
    ] = None,
    data_kind: Annotated[
        str | None, typer.Option("--data-kind", help="Its layout: mvtec, visa or manifest (default: detected).")
    ] = None,
    eval_data: Annotated[
        str | None, typer.Option("--eval-data", help="Evaluate on this data set (default: the test split of --data).")
    ] = None,
    eval_data_kind: Annotated[
        str | None, typer.Option("--eval-data-kind", help="Its layout: mvtec, visa or manifest (default: detected).")
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option("--pretrained", help="Backbone weights: a local checkpoint or a cached open_clip tag."),
    ] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run an Optuna study of the spec's fixes and scales; resume it if it exists.

    Each trial trains every seed of the spec and stores every run, compared step by step with
    the no-branch baseline of the same seed; the baseline and the frozen-adapter control run once
    per seed. At the end it prints each fix's best ranked trial (every seed complete) with 95%
    intervals and draws the plots. Running the same command again continues up to --trials
    finished trials without repeating finished work. Ctrl-C stops cleanly; the same command resumes.
    """
    from ablate.spec import load_spec, override_option, with_overrides
    from ablate.store.engine import storage_url
    from ablate.study import run_study
    from ablate.study.runner import StudySpecConflict, preflight

    spec, text = load_spec(spec_path)
    spec, text = with_overrides(spec, text, data, data_kind, eval_data, eval_data_kind, pretrained)
    overridden = {"--data": data, "--eval-data": eval_data, "--pretrained": pretrained}
    if trials is not None and trials < 1:
        raise AblateInputError("--trials", "must be >= 1")
    if trials is not None and spec.max_distinct_trials is not None and trials > spec.max_distinct_trials:
        raise AblateInputError("--trials", spec.distinct_limit_message(trials))
    if name is not None and not name.strip():
        raise AblateInputError("--name", "must not be empty")
    _check_threads(threads)
    url = storage_url(storage)
    from ablate.store.engine import is_memory_sqlite, open_storage

    if is_memory_sqlite(url):
        raise AblateInputError(
            "--storage", "an in-memory SQLite database ends with the process; use sqlite:///results.db"
        )
    if not no_plots:
        _check_out_dir(plots, "--plots")
    try:
        preflight(spec)
    except AblateInputError as exc:
        # A path given on the command line is named as the option that gave it.
        option = override_option(exc.field)
        if option is not None and overridden.get(option) is not None:
            raise AblateInputError(option, exc.message) from None
        raise
    try:
        open_storage(url)
    except ValueError as exc:
        raise AblateInputError("--storage", str(exc)) from None
    import optuna

    # Our progress display and failure lines replace Optuna's per-trial log (and its tracebacks).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        if quiet or as_json:
            outcome = run_study(spec, text, url, trials, name, threads=threads)
        else:
            from ablate.console import study_reporter

            with study_reporter(err, spec.study.objectives) as reporter:
                outcome = run_study(spec, text, url, trials, name, reporter, threads=threads)
    except StudySpecConflict as exc:
        raise AblateInputError("--name", str(exc)) from None
    if not (quiet or as_json):
        err.file.write(
            f"study {outcome.name}: {outcome.n_trials} finished trials ({outcome.ran} run now, "
            f"{outcome.failed} failed)\n"
        )
    written: list[str] = []
    if not no_plots:
        written = [str(p) for p in _draw(url, outcome.name, plots or f"plots/{outcome.name}", None, quiet=True)]
    if as_json:
        _emit_json({**outcome.__dict__, "plots": written})
        return
    if not quiet:
        from ablate.store import query as q
        from ablate.store.engine import open_storage

        engine = open_storage(url)
        _print_view(engine, outcome.name, q.group_by_fix(engine, outcome.name), "per fix")
        if outcome.failed:
            err.print(f"{outcome.failed} trial(s) failed this time; run the same command to retry them.")
        for p in written:
            sys.stdout.write(f"plot: {p}\n")  # plain: a long path must not wrap


@app.command()
def query(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    group_by: Annotated[
        str | None,
        typer.Option("--group-by", help="'fix': each fix's best ranked trial with 95% intervals, and the references."),
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
    ] = 10.0,
    fmt_: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    wide: Annotated[
        bool,
        typer.Option(
            "--wide",
            help="Table: every column, whatever the width (default: the columns that fit the terminal, "
            "$COLUMNS or 80; the table names those left out).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Query the results database: one row per trial (default), --group-by fix, --runs, --classes,
    --studies, --sql."""
    from ablate.store.engine import open_storage

    if fmt_ not in ("table", "csv", "json"):
        raise AblateInputError("--format", f"must be table, csv or json, got {fmt_!r}")
    if group_by not in (None, "fix"):
        raise AblateInputError("--group-by", f"only 'fix' is supported, got {group_by!r}")
    if not sql_timeout > 0 or sql_timeout == float("inf"):
        raise AblateInputError("--sql-timeout", f"must be a positive number of seconds, got {sql_timeout:g}")
    fmt_ = "json" if as_json else fmt_
    engine = _open_read(open_storage, storage)
    if studies and sql is None and fmt_ != "csv":
        _print_studies(engine, fmt_, wide)  # plain SQLAlchemy: no pandas import for the quick look
        return
    from ablate.store import query as q

    with _lookup_errors():
        if sql is not None:
            frame, title = q.run_sql(engine, sql, sql_timeout), "sql"
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
    if fmt_ == "json":
        from ablate.jsonout import dumps_records

        sys.stdout.write(dumps_records(q.json_records(frame)) + "\n")
    elif fmt_ == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    else:  # the terminal view keeps the columns a reader compares; csv/json carry them all
        _print_view(engine, study, frame, title, wide)


@app.command()
def plot(
    study: StudyOpt = None,
    storage: StorageOpt = None,
    out_dir: Annotated[str | None, typer.Option("--out", help="Output directory (default: plots/<study>).")] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind",
            help="tradeoff | loss | ratio-scale | gates | grad-norms | eval (repeat; default: all, eval when "
            "the study was evaluated).",
        ),
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
    _check_out_dir(out_dir, "--out")
    written = _draw(url, name, out_dir or f"plots/{name}", kind, quiet=as_json)
    if as_json:
        _emit_json({"study": name, "plots": [str(p) for p in written]})
    else:
        for p in written:
            sys.stdout.write(f"plot: {p}\n")  # plain: a long path must not wrap


@app.command()
def report(
    study: Annotated[str, typer.Argument(metavar="STUDY", help="Name of the study to write up.")],
    out_dir: Annotated[str, typer.Option("--out", help="Folder for report.md, report.html, report.json and the PNGs.")],
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
    engine = _open_read(open_storage, url)
    _check_out_dir(out_dir, "--out", "the report")
    try:
        files = write_report(engine, study, out_dir, display_url(url))
    except LookupError as exc:
        raise AblateInputError("STUDY", str(exc).strip("'\"")) from None
    if as_json:
        _emit_json(
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
        _out().print(f"report: {p}")


def _print_studies(engine, fmt_: str, wide: bool = False) -> None:
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
    _print_table("studies", views.studies_view(rows or [], wide), wide)


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
        if exc_type is not None and issubclass(exc_type, SQLInputError):
            raise AblateInputError("--sql", str(exc)) from None
        if exc_type is ValueError and not isinstance(exc, AblateInputError):
            raise AblateInputError("query", str(exc)) from None
        return False


def _print_view(engine, study: str | None, frame, title: str, wide: bool = False) -> None:
    from ablate import views
    from ablate.objectives import OBJECTIVES
    from ablate.store import query as q

    if title in ("trials", "per fix") and not frame.empty:
        objectives = [m for m in q.study_settings(engine, study)["objectives"] if m in OBJECTIVES]
        view = views.trials_view(frame, objectives) if title == "trials" else views.fixes_view(frame, objectives)
    elif title == "runs" and not frame.empty:
        view = views.runs_view(frame)
    elif title == "classes" and not frame.empty:
        view = views.classes_view(frame)
    else:
        view = views.frame_view(frame)
    _print_table(title, view, wide)


def _draw(url: str, name: str, out_dir: str, kinds: list[str] | None, quiet: bool) -> list:
    from ablate.objectives import DEFAULT_OBJECTIVES, OBJECTIVES
    from ablate.plot import render_all, source
    from ablate.plot.extract import PLOT_KINDS
    from ablate.store.engine import open_storage

    bad = [k for k in kinds or () if k not in PLOT_KINDS]
    if bad:  # before any read: a typo should not cost a pass over the database
        raise AblateInputError("--kind", f"unknown plot kind(s) {', '.join(bad)}; choose from {', '.join(PLOT_KINDS)}")
    engine = open_storage(url, create=False)
    with _lookup_errors():
        inputs = source.load(engine, name, kinds)
    settings = inputs.settings
    objectives = [m for m in settings["objectives"] if m in OBJECTIVES]
    y, x = (objectives + [m for m in DEFAULT_OBJECTIVES if m not in objectives])[:2]
    return render_all(
        inputs.runs,
        inputs.steps,
        out_dir,
        kinds=kinds,
        trials=inputs.trials,
        references=inputs.references,
        axes=(x, y, OBJECTIVES[x].direction, OBJECTIVES[y].direction),
        threshold=settings["threshold"],
        on_skip=(lambda k, why: None) if quiet else (lambda k, why: err.print(f"plot {k} skipped: {why}")),
        gates_selection=inputs.gates_selection,
    )


def _print_table(title: str, view, wide: bool = False) -> None:
    """A view as a table that fits the console: ``tablefit`` drops low-ranked columns and says so."""
    from rich import box
    from rich.markup import escape

    from ablate import plaintable, tablefit

    console = _out(wide)
    kept = tablefit.fit(view.columns, view.rows, None if wide else console.width)
    columns = [(view.columns[i].header, view.columns[i].justify) for i in kept]
    rows = [[row[i] for i in kept] for row in view.rows]
    caption = escape(view.caption(kept)) or None
    text = plaintable.render(console, title, columns, rows, caption)
    if text is not None:  # the same text, without rich's per-cell layout (0.3 ms a row)
        console.file.write(text)
        return
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption_justify="left",
        caption=caption,
    )
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _plain_line(quiet: bool, text: str) -> None:
    """Where stderr is no terminal (a log file, CI), a finished arm is one plain line instead of
    bar frames; a terminal has the bar."""
    if not quiet and not err.is_terminal:
        err.file.write(text + "\n")
        err.file.flush()


def _progress(disabled: bool) -> Progress:
    # bars on a terminal only: elsewhere rich would leave a stray frame or blank line in the log
    disabled = disabled or not err.is_terminal
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


def _check_out_dir(path: str | None, option: str, what: str = "the plots") -> None:
    """Plots and reports go into a folder: refuse an existing file before any work is done."""
    if path is not None and os.path.exists(path) and not os.path.isdir(path):
        raise AblateInputError(option, f"{path} is a file; give a folder for {what}")


def _fail(message: str, code: int) -> None:
    # Plain stderr, one line: rich would wrap long messages at the terminal width.
    sys.stderr.write(message + "\n")
    sys.exit(code)


def _input_error_line(exc: AblateInputError) -> str:
    # Top-level fields are CLI options here ("scale" -> "--scale"); dotted ones are spec fields.
    # Positional arguments (SPEC) stay upper case.
    from ablate.errors import SpecInputError

    keep = isinstance(exc, SpecInputError) or "." in exc.field or exc.field.startswith("-") or exc.field.isupper()
    field = exc.field if keep else "--" + exc.field.replace("_", "-")
    return f"error: {field}: {' '.join(exc.message.split())}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (the running run is marked failed, Optuna's trial FAIL), exit 143."""


_terminated = False  # click turns any KeyboardInterrupt into Abort; this says which signal it was
_stopping = False


def _on_stop_signal(signum: int, _frame: object) -> None:
    """The first SIGINT or SIGTERM stops the work; later ones are ignored until the database is
    consistent. (A second Ctrl-C inside Optuna's own clean-up left a trial RUNNING and crashed it
    with UnboundLocalError; SIGKILL still stops at once, and the next worker repairs after it.)"""
    import signal

    global _terminated, _stopping
    if _stopping:
        return
    _stopping = True
    _terminated = signum == signal.SIGTERM
    raise Terminated() if _terminated else KeyboardInterrupt()


_own_process = False  # main() runs as the `ablate` process (not called in-process by tests)


def _fail_interrupted() -> None:
    code, word = (143, "terminated") if _terminated else (130, "interrupted")
    if _own_process:
        # The database is consistent now. Python's shutdown (torch's teardown takes seconds) restores
        # the default SIGINT handler, so a second Ctrl-C in that window killed the process with
        # signal 2 instead of exit 130; nothing is left to flush but the streams, so leave at once.
        sys.stderr.write(f"{word}; run the same command again to resume\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _fail(f"{word}; run the same command again to resume", code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input exits 2 with one line, a failed run exits 1, Ctrl-C exits 130, SIGTERM 143."""
    import signal

    from ablate.errors import NonFiniteLossError

    global _own_process
    _own_process = argv is None

    signal.signal(signal.SIGTERM, _on_stop_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the shell ignores it
        signal.signal(signal.SIGINT, _on_stop_signal)
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="ablate", standalone_mode=False)
    except AblateInputError as exc:
        _fail(_input_error_line(exc), 2)
    except KeyboardInterrupt:
        _fail_interrupted()
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
            _fail_interrupted()
        if os.environ.get("ABLATE_DEBUG"):
            raise
        _fail(f"run failed: {type(exc).__name__}: {_one_line(exc)} (ABLATE_DEBUG=1 for a traceback)", 1)
    if rv == 130:  # Typer turns Ctrl-C inside a command into exit code 130
        _fail_interrupted()
    sys.exit(rv if isinstance(rv, int) else 0)
