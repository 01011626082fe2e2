"""``ablate study run``: run or resume an Optuna study of the spec."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from ablate.cli.app import JsonOpt, QuietOpt, StorageOpt, ThreadsOpt, err, study_app
from ablate.cli.common import (
    check_out_dir,
    check_threads,
    check_trials_and_name,
    emit_json,
    next_report_line,
    print_study_summary,
)
from ablate.cli.plot import draw_plots
from ablate.errors import AblateInputError

if TYPE_CHECKING:
    from ablate.spec import StudySpec
    from ablate.study.runner import StudyOutcome


@study_app.command(
    "run",
    short_help="Run an Optuna study of the spec's fixes and scales (resumes it if it exists), then print the "
    "per-fix table and draw the figures.",
)
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
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Run N worker processes on this machine (each its own GPU, round-robin over --gpus; on a CPU "
            "machine they share the cores), with one progress view. Ctrl-C stops them all; rerun to resume.",
        ),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option("--gpus", help="With --workers: the GPUs to use, e.g. 0,1,2,3 (default: every visible GPU)."),
    ] = None,
    events: Annotated[
        bool, typer.Option("--events", hidden=True, help="Progress as JSON lines on stdout (for --workers).")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run an Optuna study of the spec's fixes and scales; resume it if it exists.

    Each trial trains every seed of the spec and stores every run, compared step by step with
    the no-branch baseline of the same seed; the subject's Stage 1 (AA-CLIP: the text adapter), the
    baseline and the frozen control run once per seed, before the trials. A database written by an
    older ablate is upgraded first (ablate db upgrade). At the end it prints each fix's best ranked
    trial (every seed complete) with 95% intervals and draws the plots. Running the same command
    again continues up to --trials finished trials without repeating finished work. Ctrl-C stops
    cleanly; the same command resumes.
    """
    from ablate.timers import span

    with span("imports"):
        from ablate.spec import load_spec, override_option, with_overrides
        from ablate.store.engine import storage_url
        from ablate.study import run_study
        from ablate.study.runner import StudySpecConflict, preflight

    spec, text = load_spec(spec_path)
    spec, text = with_overrides(spec, text, data, data_kind, eval_data, eval_data_kind, pretrained)
    overridden = {"--data": data, "--eval-data": eval_data, "--pretrained": pretrained}
    check_trials_and_name(spec, trials, name)
    check_threads(threads)
    plan = None if workers is None and gpus is None else _gpu_plan(workers, gpus)
    url = storage_url(storage)
    from ablate.store.engine import is_memory_sqlite, open_storage

    if is_memory_sqlite(url):
        raise AblateInputError(
            "--storage", "an in-memory SQLite database ends with the process; use sqlite:///results.db"
        )
    if not no_plots:
        check_out_dir(plots, "--plots")
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
        if plan is not None:
            # Each worker gets this command's spec overrides and thread count, as given.
            given = {"--data": data, "--data-kind": data_kind, "--eval-data": eval_data,
                     "--eval-data-kind": eval_data_kind, "--pretrained": pretrained, "--threads": threads}  # fmt: skip
            extra = [a for flag, value in given.items() if value is not None for a in (flag, str(value))]
            outcome = _run_workers(spec_path, spec, text, url, name, trials, plan, quiet or as_json, extra)
        elif events:
            from ablate.launch.events import EventWriter

            writer = EventWriter(sys.stdout)
            writer.outcome(run_study(spec, text, url, trials, name, writer, threads=threads))
            return
        elif quiet or as_json:
            outcome = run_study(spec, text, url, trials, name, threads=threads)
        else:
            from ablate.console import study_reporter

            with study_reporter(err, spec.study.objectives) as reporter:
                outcome = run_study(spec, text, url, trials, name, reporter, threads=threads)
    except StudySpecConflict as exc:
        raise AblateInputError("--name", str(exc)) from None
    from ablate.store.engine import checkpoint_sqlite

    checkpoint_sqlite(url)  # every worker's log in the file: results.db alone holds the study
    if not (quiet or as_json):
        err.file.write(_outcome_line(outcome, trials, spec.study.trials) + "\n")
    written: list[str] = []
    if not no_plots:
        written = [str(p) for p in draw_plots(url, outcome.name, plots or f"plots/{outcome.name}", None, quiet=True)]
    if as_json:
        emit_json({**outcome.__dict__, "plots": written})
        return
    if not quiet:
        print_study_summary(url, outcome.name)
        if outcome.failed:
            err.print(f"{outcome.failed} trial(s) failed this time; run the same command to retry them.")
        if written:
            sys.stdout.write(figures_line(written) + "\n")  # plain: a long path must not wrap
        sys.stdout.write(next_report_line(outcome.name, storage) + "\n")


def _outcome_line(outcome: StudyOutcome, trials: int | None, spec_trials: int) -> str:
    """The study's count after the run; when no trial ran because the study already held what was
    asked, that is said, with why and what would run more (exit 0: the same command run twice is a
    resume that finds the work done, not an error)."""
    if outcome.ran or outcome.failed:
        ran = f"{outcome.ran} run now, {outcome.failed} failed"
        return f"study {outcome.name}: {outcome.n_trials} finished trials ({ran})"
    asked = f"--trials {trials}" if trials is not None else f"the spec's study.trials = {spec_trials}"
    wanted = trials if trials is not None else spec_trials
    if outcome.n_trials < wanted:  # stopped early: no new parameter set, or the failures above
        return f"study {outcome.name}: {outcome.n_trials} finished trials; no new trial ran ({asked})"
    return (
        f"study {outcome.name}: no new trial ran: it already holds {outcome.n_trials} finished trials and {asked} "
        f"asks for {wanted} in all; give --trials {outcome.n_trials + 1} or more to run more"
    )


def figures_line(written: Sequence[str]) -> str:
    """Where the figures went, in one line: their folder and their names (each as PNG and SVG)."""
    import os

    folders = list(dict.fromkeys(os.path.dirname(p) or "." for p in written))
    names = list(dict.fromkeys(os.path.splitext(os.path.basename(p))[0] for p in written))
    kinds = sorted({os.path.splitext(p)[1].lstrip(".").upper() for p in written})
    return f"figures: {', '.join(f + os.sep for f in folders)} ({', '.join(names)}; {' and '.join(kinds)})"


def _gpu_plan(workers: int | None, gpus: str | None) -> list[str | None]:
    """Each worker's CUDA_VISIBLE_DEVICES (None: leave it), or the one-line refusal."""
    import os

    from ablate.launch.worker import gpu_plan, parse_gpus

    if workers is None:
        raise AblateInputError("--gpus", "give --workers N too")
    if workers < 1:
        raise AblateInputError("--workers", f"must be >= 1, got {workers}")
    import torch

    ids = parse_gpus(gpus) if gpus is not None else None
    return gpu_plan(workers, ids, torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def _run_workers(
    spec_path: str,
    spec: StudySpec,
    text: str,
    url: str,
    name: str | None,
    trials: int | None,
    plan: list[str | None],
    quiet: bool,
    extra: list[str],
) -> StudyOutcome:
    from ablate.launch.local import WorkersFailed, run_local_study

    view = None
    if not quiet:
        from ablate.console import workers_view

        view = workers_view(err, spec.study.objectives, len(plan))
    try:
        return run_local_study(spec, text, spec_path, url, name, trials, plan, extra, view)
    except WorkersFailed as exc:
        err.file.write(f"run failed: {exc}\n")
        raise typer.Exit(1) from None
