"""Workers as one SLURM job array, through submitit (the optional extra ``ablate-branch[slurm]``).

One array task per worker; each runs the worker command (worker.py) as a child process. On
preemption or at the time limit SLURM signals the task, submitit checkpoints it (the same worker,
same task) and requeues it; the worker child is killed outright first, exactly as a killed worker
is, so its trial goes stale and is retried (its finished seeds adopted) by the requeued task or any
other worker. ``cluster="local"`` runs the same tasks as local processes (submitit's LocalExecutor),
each with its own CUDA_VISIBLE_DEVICES (that executor would give every task the same GPUs).
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from ablate.launch.worker import worker_env

CLUSTERS = ("slurm", "local")


class LaunchFailed(RuntimeError):
    """The scheduler refused the submission (its own message says why)."""


class SlurmWorker(submitit.helpers.Checkpointable):
    """One array task: run the worker command until it exits; requeued as is when preempted."""

    def __init__(self, command: Sequence[str], cwd: str, launcher: str, devices: Sequence[str | None]) -> None:
        self.command, self.cwd, self.launcher, self.devices = list(command), cwd, launcher, list(devices)

    def __call__(self, index: int) -> int:
        job = submitit.JobEnvironment().job_id
        devices = self.devices[index] if index < len(self.devices) else None
        proc = subprocess.Popen(self.command, cwd=self.cwd, env=worker_env(self.launcher, job, devices))
        try:
            code = proc.wait()
        except BaseException:  # submitit's preemption/timeout handler exits here: stop the worker as a kill would
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            raise RuntimeError(f"worker exited with {code}")
        return code


@dataclass(frozen=True)
class Submitted:
    job_id: str  # the array's id (SLURM), or the first task's (local)
    task_ids: tuple[str, ...]
    folder: str  # submitit's folder: scripts, pickles and each task's log
    jobs: tuple  # submitit Job objects (wait on them with .result())


@dataclass(frozen=True)
class SlurmRequest:
    workers: int
    time_min: int
    gpus_per_worker: int
    cpus_per_worker: int | None
    mem_gb: float | None
    partition: str | None
    account: str | None


def local_devices(workers: int, gpus_per_worker: int, visible: int) -> list[str | None]:
    """Each local task's CUDA_VISIBLE_DEVICES: ``gpus_per_worker`` GPUs per task, round-robin over
    the ``visible`` ones (on a machine without any, the numbers are logical slots, one per task)."""
    if gpus_per_worker == 0:
        return [""] * workers
    out = []
    for i in range(workers):
        ids = [i * gpus_per_worker + k for k in range(gpus_per_worker)]
        out.append(",".join(str(g % visible if visible else g) for g in ids))
    return out


def executor_for(request: SlurmRequest, folder: str | Path, name: str, cluster: str = "slurm") -> Any:
    """submitit's executor with the request's resources; LaunchFailed on a host without SLURM."""
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    except RuntimeError as exc:  # submitit looks for srun first
        raise LaunchFailed(_first_line(exc)) from None
    params: dict = {"name": f"ablate-{name}", "timeout_min": request.time_min, "tasks_per_node": 1, "nodes": 1}
    if request.cpus_per_worker is not None:
        params["cpus_per_task"] = request.cpus_per_worker
    if request.mem_gb is not None:
        params["mem_gb"] = request.mem_gb
    if cluster == "slurm":
        params["slurm_array_parallelism"] = request.workers
        if request.gpus_per_worker:
            params["slurm_gpus_per_task"] = request.gpus_per_worker
        if request.partition:
            params["slurm_partition"] = request.partition
        if request.account:
            params["slurm_account"] = request.account
    executor.update_parameters(**params)
    return executor


def submit(
    executor: Any,
    command: Sequence[str],
    request: SlurmRequest,
    cluster: str = "slurm",
    visible_gpus: int = 0,
    shown_command: str | None = None,
) -> Submitted:
    """Submit one job array of ``request.workers`` tasks running ``command``; LaunchFailed with the
    scheduler's message when it refuses. ``shown_command`` (the command with the password masked)
    is written into the batch script as a comment, so the script says what its tasks run."""
    if cluster == "slurm":
        if shown_command:
            executor.update_parameters(slurm_setup=[f"# ablate worker (one per array task): {shown_command}"])
        devices: list[str | None] = []  # SLURM sets CUDA_VISIBLE_DEVICES for each task's GPUs
        launcher = "slurm"
    else:
        devices = local_devices(request.workers, request.gpus_per_worker, visible_gpus)
        launcher = "submitit-local"
    worker = SlurmWorker(command, os.getcwd(), launcher, devices)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr; LaunchFailed carries it
            jobs = executor.map_array(worker, list(range(request.workers)))
    except FileNotFoundError as exc:
        raise LaunchFailed(f"{exc.filename or 'sbatch'} not found: run this on a SLURM login node") from None
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as exc:
        raise LaunchFailed(_first_line(exc)) from None
    ids = tuple(str(j.job_id) for j in jobs)
    return Submitted(ids[0].split("_")[0], ids, str(executor.folder), tuple(jobs))


def wait_for(submitted: Submitted) -> list[str]:
    """Wait for every task; one line per task that failed (the others are waited for all the same).

    The job objects live in this frame only: once it returns and the caller drops ``submitted``,
    they can be collected before the interpreter's shutdown, where their ``__del__`` meets
    half-torn-down modules and prints an "Exception ignored ... TypeError" traceback.
    """
    failed = []
    for task, job in zip(submitted.task_ids, submitted.jobs):
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - each task's failure is reported, the others waited for
            failed.append(f"task {task}: {' '.join(str(exc).split())[-300:]}")
    return failed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # submitit's FailedJobError carries the command's stderr after its own preamble; keep the scheduler's words
    errors = [line for line in lines if "error" in line.lower()]
    return (errors[-1] if errors else lines[-1] if lines else type(exc).__name__)[:500]


def shown(command: Sequence[str], url: str, masked_url: str) -> str:
    return shlex.join(masked_url if arg == url else arg for arg in command)
