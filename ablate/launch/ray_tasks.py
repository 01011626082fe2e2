"""Workers as Ray tasks (the optional extra ``ablate-branch[ray]``); not Ray Tune.

Each task asks Ray for its GPUs (Ray sets the task's CUDA_VISIBLE_DEVICES) and runs the worker
command (worker.py) as a child process; Optuna's sampler and the database stay the only
coordinator. The tasks belong to this process: it waits for them, and Ctrl-C cancels them (each
stops its worker as Ctrl-C stops a lone worker).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ablate.launch.worker import worker_env


@dataclass(frozen=True)
class RayResult:
    codes: tuple[int, ...]
    devices: tuple[str, ...]  # each task's CUDA_VISIBLE_DEVICES as Ray set it


def connect(address: str | None) -> dict[str, float]:
    """Join the Ray cluster at ``address`` (None: start a local one, unless this process already
    joined one) and return its resources ({"CPU": ..., "GPU": ...})."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return dict(ray.cluster_resources())


def _run_worker(command: Sequence[str], cwd: str, launcher: str) -> tuple[int, str]:
    """The task body: the worker command in a child process, with Ray's GPU assignment."""
    import ray

    task = ray.get_runtime_context().get_task_id()
    env = worker_env(launcher, task)  # this process's environment holds Ray's CUDA_VISIBLE_DEVICES
    proc = subprocess.Popen(list(command), cwd=cwd, env=env)
    try:
        return proc.wait(), env.get("CUDA_VISIBLE_DEVICES", "")
    except BaseException:  # ray.cancel: stop the worker as Ctrl-C would, then let Ray end the task
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def run_workers(command: Sequence[str], cwd: str, workers: int, gpus_per_worker: float) -> RayResult:
    """Run ``workers`` tasks of the worker command on the joined cluster and wait for all of them."""
    import ray

    task: Any = ray.remote(num_gpus=gpus_per_worker, num_cpus=1, max_retries=0)(_run_worker)
    refs = [task.remote(list(command), cwd, "ray") for _ in range(workers)]
    try:
        results = ray.get(refs)
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref)
        ray.wait(refs, num_returns=len(refs), timeout=180)
        raise
    return RayResult(tuple(code for code, _ in results), tuple(devices for _, devices in results))
