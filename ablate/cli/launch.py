"""``ablate launch slurm|ray``: create the study once, then start its workers on a cluster."""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from ablate.cli.app import JsonOpt, app, err
from ablate.cli.common import check_trials_and_name, emit_json, next_report_line, print_study_summary
from ablate.errors import AblateInputError

if TYPE_CHECKING:
    from ablate.launch.worker import PreparedStudy
    from ablate.spec import StudySpec

SUBMITIT_HINT = "needs submitit: pip install 'ablate-branch[slurm]'"
RAY_HINT = "needs ray: pip install 'ablate-branch[ray]'"

launch_app = typer.Typer(
    help="Start many workers on one study: a SLURM job array (submitit) or Ray tasks. "
    "On one machine, use `ablate study run SPEC --workers N` instead.",
    short_help="Start many workers on one study: ablate launch slurm (a job array) or ablate launch ray (Ray tasks).",
    no_args_is_help=True,
)
app.add_typer(launch_app, name="launch")

SpecArg = Annotated[str, typer.Argument(metavar="SPEC", help="Study spec, e.g. studies/quick.toml.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Worker processes to start (one study, one database).")]
LaunchStorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="SQLAlchemy URL every worker reaches: postgresql://user@host/db (required)."),
]
AllowSqliteOpt = Annotated[
    bool,
    typer.Option("--allow-sqlite", help="Accept a SQLite file (every worker on this one host, sharing the file)."),
]
GpusPerWorkerOpt = Annotated[int, typer.Option("--gpus-per-worker", help="GPUs each worker asks for (0: CPU).")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Study name (default: the spec's name).")]
TrialsOpt = Annotated[
    int | None, typer.Option("--trials", help="Finished trials wanted in total (default: the spec's).")
]


def _prepare_input(
    spec_path: str, storage: str | None, allow_sqlite: bool, workers: int, trials: int | None, name: str | None
) -> tuple[StudySpec, str, str]:
    """The checks every launch makes; nothing is written: (spec, its text, storage URL)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # as `study run`: this command says what happened
    from ablate.spec import load_spec
    from ablate.store.engine import normalize_url
    from ablate.study.runner import preflight

    if storage is None:
        raise AblateInputError(
            "--storage", "a launch needs the database every worker reaches, e.g. postgresql://user@host/db"
        )
    if workers < 1:
        raise AblateInputError("--workers", f"must be >= 1, got {workers}")
    spec, text = load_spec(spec_path)
    check_trials_and_name(spec, trials, name)
    try:
        backend = normalize_url(storage).get_backend_name()
    except ValueError as exc:
        raise AblateInputError("--storage", str(exc)) from None
    if backend == "sqlite" and not allow_sqlite:
        raise AblateInputError(
            "--storage",
            "SQLite is one file on one host: a cluster's workers need PostgreSQL (postgresql://user@host/db); "
            "pass --allow-sqlite if every worker runs on this host",
        )
    preflight(spec)
    return spec, text, storage


def _prepare_study(spec: StudySpec, text: str, url: str, name: str | None, trials: int | None) -> PreparedStudy:
    """Create the study once (the first write of a launch: every check is behind)."""
    from ablate.launch.worker import prepare_study
    from ablate.store.engine import open_storage
    from ablate.study.runner import StudySpecConflict

    try:
        open_storage(url)
    except ValueError as exc:
        raise AblateInputError("--storage", str(exc)) from None
    try:
        return prepare_study(spec, text, url, name or spec.name, trials)
    except StudySpecConflict as exc:
        raise AblateInputError("--name", str(exc)) from None


def _follow(prepared: PreparedStudy) -> str:
    from ablate.store.engine import display_url

    return f"ablate query --storage '{display_url(prepared.url)}' --study {prepared.name}"


@launch_app.command(
    "slurm",
    short_help="Create the study once, then submit one SLURM job array of --workers tasks, each running the worker.",
)
def launch_slurm(
    spec_path: SpecArg,
    workers: WorkersOpt,
    storage: LaunchStorageOpt = None,
    partition: Annotated[str | None, typer.Option("--partition", help="SLURM partition.")] = None,
    time: Annotated[int, typer.Option("--time", metavar="MIN", help="Time limit of each task, in minutes.")] = 60,
    gpus_per_worker: GpusPerWorkerOpt = 1,
    cpus_per_worker: Annotated[int | None, typer.Option("--cpus-per-worker", help="CPU cores per task.")] = None,
    mem: Annotated[float | None, typer.Option("--mem", metavar="GB", help="Memory per task, in GB.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="SLURM account to charge.")] = None,
    allow_sqlite: AllowSqliteOpt = False,
    name: NameOpt = None,
    trials: TrialsOpt = None,
    folder: Annotated[
        str | None, typer.Option("--folder", help="submitit's folder for scripts and logs (default: submitit/NAME).")
    ] = None,
    cluster: Annotated[
        str, typer.Option("--cluster", help="slurm, or local: the same tasks as local processes (submitit's).")
    ] = "slurm",
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every task has finished.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create the study once, then submit one SLURM job array of --workers tasks, each running the
    worker (`ablate study run SPEC --storage URL`) on its GPUs. A preempted or timed-out task is
    requeued, and its killed trial retried as a killed worker's is. Prints the job id and how to
    follow the study."""
    for option, value, low in (("--time", time, 1), ("--gpus-per-worker", gpus_per_worker, 0)):
        if value < low:
            raise AblateInputError(option, f"must be >= {low}, got {value}")
    if cpus_per_worker is not None and cpus_per_worker < 1:
        raise AblateInputError("--cpus-per-worker", f"must be >= 1, got {cpus_per_worker}")
    if mem is not None and not mem > 0:
        raise AblateInputError("--mem", f"must be > 0 GB, got {mem:g}")
    spec, text, url = _prepare_input(spec_path, storage, allow_sqlite, workers, trials, name)
    try:
        from ablate.launch import slurm_jobs
    except ImportError:
        raise AblateInputError("launch slurm", SUBMITIT_HINT) from None
    if cluster not in slurm_jobs.CLUSTERS:
        raise AblateInputError("--cluster", f"must be one of {', '.join(slurm_jobs.CLUSTERS)}, got {cluster!r}")
    from ablate.launch.worker import discard_study, worker_command
    from ablate.store.engine import display_url

    study = name or spec.name
    request = slurm_jobs.SlurmRequest(workers, time, gpus_per_worker, cpus_per_worker, mem, partition, account)
    try:
        executor = slurm_jobs.executor_for(request, folder or f"submitit/{study}", study, cluster)
    except slurm_jobs.LaunchFailed as exc:
        err.file.write(f"launch failed: {exc}\n")
        raise typer.Exit(1) from None
    prepared = _prepare_study(spec, text, url, name, trials)
    command = worker_command(spec_path, prepared.url, prepared.name, trials)
    shown = slurm_jobs.shown(command, prepared.url, display_url(prepared.url))
    try:
        submitted = slurm_jobs.submit(executor, command, request, cluster, _gpu_count(), shown)
    except slurm_jobs.LaunchFailed as exc:
        if prepared.created:  # nothing of this launch stays in the database
            discard_study(prepared.url, prepared.name)
        err.file.write(f"launch failed: {exc}\n")
        raise typer.Exit(1) from None
    doc = {"job_id": submitted.job_id, "tasks": list(submitted.task_ids), "folder": submitted.folder,
           "study": prepared.name, "follow": _follow(prepared)}  # fmt: skip
    if not as_json:
        sys.stdout.write(
            f"submitted job {submitted.job_id}: {workers} task(s) on {cluster} (logs in {submitted.folder})\n"
            f"follow the study: {doc['follow']}\n"
        )
    failed = slurm_jobs.wait_for(submitted) if wait else []
    # submitit's local jobs hold each other in a cycle; collected at interpreter exit, their __del__
    # fails on half-torn-down modules (a noisy traceback). Collect them now, while every module lives.
    del submitted
    gc.collect()
    if failed:
        err.file.write("run failed: " + "; ".join(failed) + "\n")
        raise typer.Exit(1)
    if as_json:
        emit_json(doc)
    elif wait:
        print_study_summary(prepared.url, prepared.name)
        sys.stdout.write(next_report_line(prepared.name, storage) + "\n")


@launch_app.command(
    "ray",
    short_help="Create the study once, then run the worker as --workers Ray tasks, each with its GPUs; waits for them.",
)
def launch_ray(
    spec_path: SpecArg,
    workers: WorkersOpt,
    storage: LaunchStorageOpt = None,
    address: Annotated[
        str | None, typer.Option("--address", help="An existing Ray cluster (default: start a local one).")
    ] = None,
    gpus_per_worker: GpusPerWorkerOpt = 1,
    allow_sqlite: AllowSqliteOpt = False,
    name: NameOpt = None,
    trials: TrialsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create the study once, then run the worker (`ablate study run SPEC --storage URL`) as
    --workers Ray tasks, each asking Ray for its GPUs; waits for them. Ray only places the workers:
    Optuna's sampler and the database coordinate the study (no Ray Tune)."""
    if gpus_per_worker < 0:
        raise AblateInputError("--gpus-per-worker", f"must be >= 0, got {gpus_per_worker}")
    spec, text, url = _prepare_input(spec_path, storage, allow_sqlite, workers, trials, name)
    try:
        from ablate.launch import ray_tasks
    except ImportError:
        raise AblateInputError("launch ray", RAY_HINT) from None
    import os

    from ablate.launch.worker import worker_command

    try:
        import ray  # noqa: F401 - the extra; ray_tasks imports it only when used
    except ImportError:
        raise AblateInputError("launch ray", RAY_HINT) from None
    resources = ray_tasks.connect(address)
    if resources.get("GPU", 0) < gpus_per_worker:
        raise AblateInputError(
            "--gpus-per-worker",
            f"the Ray cluster has {resources.get('GPU', 0):g} GPU(s), a worker asks for {gpus_per_worker}; "
            "use --gpus-per-worker 0 on a cluster without GPUs",
        )
    prepared = _prepare_study(spec, text, url, name, trials)
    command = worker_command(spec_path, prepared.url, prepared.name, trials)
    if not as_json:
        err.file.write(f"{workers} Ray task(s) running the study; follow it: {_follow(prepared)}\n")
    result = ray_tasks.run_workers(command, os.getcwd(), workers, gpus_per_worker)
    bad = [f"task {i + 1} exited {code}" for i, code in enumerate(result.codes) if code]
    if bad:
        err.file.write("run failed: " + "; ".join(bad) + "; run the same command again to finish the study\n")
        raise typer.Exit(1)
    doc = {"study": prepared.name, "workers": workers, "devices": list(result.devices), "follow": _follow(prepared)}
    if as_json:
        emit_json(doc)
    else:
        sys.stdout.write(f"study {prepared.name}: {workers} Ray task(s) finished (devices {result.devices})\n")
        print_study_summary(prepared.url, prepared.name)
        sys.stdout.write(next_report_line(prepared.name, storage) + "\n")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()
