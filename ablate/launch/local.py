"""N worker processes on this machine, one progress view, one Ctrl-C for all.

Each worker is ``ablate study run SPEC ... --events`` (worker.py) in a session of its own, so a
terminal's Ctrl-C reaches this process only; this process forwards it to every worker once, and
each stops as a lone worker does (its running runs marked failed, its trials told FAIL), so the
same command resumes. Workers die with this process (PR_SET_PDEATHSIG) if it is killed outright.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from ablate.launch.events import decode
from ablate.launch.worker import prepare_study, worker_command, worker_env
from ablate.spec import StudySpec
from ablate.study.runner import StudyOutcome


class WorkersFailed(RuntimeError):
    """A worker exited with an error (or was killed); the study may miss trials until it is rerun."""


class WorkerSink(Protocol):
    def event(self, worker: int, event: dict[str, Any]) -> None: ...

    def line(self, worker: int, text: str) -> None: ...

    def exited(self, worker: int, code: int) -> None: ...


@dataclass
class WorkersResult:
    codes: list[int]
    outcomes: list[dict[str, Any]] = field(default_factory=list)  # each worker's last "outcome" event


def _parent_death_signal() -> Any:
    """A preexec_fn that has the kernel send SIGTERM to the worker when this process dies (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return preexec


def _read(worker: int, kind: str, stream: IO[str], out: queue.Queue) -> None:
    for line in stream:
        out.put((worker, kind, line.rstrip("\n")))
    out.put((worker, kind, None))


def supervise(
    command: Sequence[str], envs: Sequence[dict[str, str]], sink: WorkerSink, cwd: str | None = None
) -> WorkersResult:
    """Start one worker per environment, stream their events and stderr lines to ``sink`` until all
    have exited; return their exit codes. A KeyboardInterrupt here (Ctrl-C, or SIGTERM through the
    CLI, whose ``signum`` says which) is forwarded to every live worker once; this waits for them all
    and then raises it again."""
    preexec = _parent_death_signal()
    procs = [
        subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
            preexec_fn=preexec,
        )  # fmt: skip
        for env in envs
    ]
    lines: queue.Queue = queue.Queue()
    for i, p in enumerate(procs):
        for kind, stream in (("out", p.stdout), ("err", p.stderr)):
            threading.Thread(target=_read, args=(i, kind, stream, lines), daemon=True).start()
    open_streams = 2 * len(procs)
    outcomes: dict[int, dict[str, Any]] = {}
    stop: KeyboardInterrupt | None = None
    while open_streams:
        try:
            try:
                worker, kind, text = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if text is None:
                open_streams -= 1
                continue
            event = decode(text) if kind == "out" else None
            if event is None:
                if text.strip():
                    sink.line(worker, text)
            elif event["event"] == "outcome":
                outcomes[worker] = event
            else:
                sink.event(worker, event)
        except KeyboardInterrupt as exc:
            if stop is None:  # the CLI ignores later signals until the database is consistent
                stop = exc
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(getattr(exc, "signum", signal.SIGINT))
    codes = [p.wait() for p in procs]
    for i, code in enumerate(codes):
        sink.exited(i, code)
    if stop is not None:
        raise stop
    return WorkersResult(codes, [outcomes[i] for i in sorted(outcomes)])


def failure_message(codes: Sequence[int]) -> str | None:
    """One line naming the workers that did not exit 0, or None when all did."""
    bad = []
    for i, code in enumerate(codes):
        if code < 0:
            bad.append(f"w{i + 1} killed by {signal.Signals(-code).name}")
        elif code:
            bad.append(f"w{i + 1} exited {code}")
    return f"{', '.join(bad)}; run the same command again to finish the study" if bad else None


class _Silent:
    def event(self, worker: int, event: dict[str, Any]) -> None: ...

    def line(self, worker: int, text: str) -> None: ...

    def exited(self, worker: int, code: int) -> None: ...


def run_local_study(
    spec: StudySpec,
    spec_text: str,
    spec_path: str,
    storage: str,
    name: str | None,
    n_trials: int | None,
    gpu_plan: Sequence[str | None],
    extra_args: Sequence[str] = (),
    view: Any = None,
) -> StudyOutcome:
    """Create the study once, run one local worker per ``gpu_plan`` entry (its CUDA_VISIBLE_DEVICES,
    None: unchanged) until the study holds its trials, and return what it holds. ``view``: a
    ``workers_view`` from ablate/console.py (None: silent). WorkersFailed when a worker did not exit 0."""
    import optuna

    from ablate.study.runner import study_outcome

    prepared = prepare_study(spec, spec_text, storage, name or spec.name, n_trials)
    n = len(gpu_plan)
    command = worker_command(spec_path, prepared.url, prepared.name, n_trials, [*extra_args, "--events"])
    envs = [worker_env("local", f"{i + 1}/{n}", gpu_plan[i]) for i in range(n)]
    with view if view is not None else contextlib.nullcontext():
        if view is not None:
            view.study_start(prepared.name, prepared.done, prepared.total)
        result = supervise(command, envs, view if view is not None else _Silent())
    message = failure_message(result.codes)
    if message is not None:
        raise WorkersFailed(message)
    study = optuna.load_study(study_name=prepared.name, storage=prepared.url)
    ran = sum(int(o.get("ran", 0)) for o in result.outcomes)
    failed = sum(int(o.get("failed", 0)) for o in result.outcomes)
    return study_outcome(study, prepared.name, prepared.url, ran, failed)
