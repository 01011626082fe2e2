"""Where a process's time goes: named wall-clock spans, each counted once (exclusive of the spans inside it).

The study runner, the training loop and the store mark their phases (``span("probe")``,
``@timed("db")``); a span's time excludes the spans opened inside it, so the totals add up to the
time spent inside any span, and nothing is counted twice. Only the main thread is timed (the
heartbeat threads beat beside the work, not on its path). Cost: two clock reads per span.

``ABLATE_TIMINGS=FILE`` makes an ``ablate`` command write the totals as JSON when it exits
(bench/bench_study_overhead.py reads it). On a GPU, :func:`set_sync` makes every span boundary wait
for the device, so asynchronous work is charged to the span that queued it.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# The phases of a study, in the order a breakdown lists them.
PHASES = (
    "imports",  # the study command's imports (torch, open_clip, Optuna, SQLAlchemy)
    "build",  # backbone, data sets and models
    "stage1",  # the subject's Stage 1 training (AA-CLIP's text adapter), once per seed
    "train_steps",  # forward, backward, Adam step and the per-step diagnostics
    "data",  # drawing each step's training batch
    "flops",  # counting one step's FLOPs (once per configuration)
    "probe",  # the bypass probes (with / without the branch)
    "gain",  # the held-out adapter-gain forwards
    "evaluation",  # the end-of-run evaluation ([eval])
    "db",  # ablate's database writes and reads
    "optuna",  # Optuna's ask/tell and the trial bookkeeping around it
    "waiting",  # sleeping while another worker holds a run
)

_MAIN = threading.main_thread()
_totals: dict[str, float] = {}
_cpu: dict[str, float] = {}  # the main thread's CPU seconds per span: steadier than wall time under load
_counts: dict[str, int] = {}
_stack: list[span] = []
_sync: Callable[[], None] | None = None


class span:  # noqa: N801 - used like a function: ``with span("probe"):``
    """Time the block under ``name`` (exclusive of the spans opened inside it)."""

    __slots__ = ("name", "_start", "_inner", "_cpu_start", "_cpu_inner")

    def __init__(self, name: str) -> None:
        self.name = name
        self._start = -1.0
        self._inner = self._cpu_start = self._cpu_inner = 0.0

    def __enter__(self) -> span:
        if threading.current_thread() is not _MAIN:
            return self
        if _sync is not None:
            _sync()
        self._inner = self._cpu_inner = 0.0
        self._cpu_start = time.thread_time()
        self._start = time.perf_counter()
        _stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start < 0:
            return
        if _sync is not None:
            _sync()
        elapsed = time.perf_counter() - self._start
        cpu = time.thread_time() - self._cpu_start
        self._start = -1.0
        _stack.pop()
        _totals[self.name] = _totals.get(self.name, 0.0) + elapsed - self._inner
        _cpu[self.name] = _cpu.get(self.name, 0.0) + cpu - self._cpu_inner
        _counts[self.name] = _counts.get(self.name, 0) + 1
        if _stack:
            _stack[-1]._inner += elapsed
            _stack[-1]._cpu_inner += cpu


def timed(name: str) -> Callable[[F], F]:
    """Decorator: every call of the function is a span ``name``."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with span(name):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def set_sync(fn: Callable[[], None] | None) -> None:
    """Call ``fn`` (e.g. ``torch.cuda.synchronize``) at every span boundary; None turns it off."""
    global _sync
    _sync = fn


def reset() -> None:
    _totals.clear()
    _cpu.clear()
    _counts.clear()


def snapshot() -> dict[str, dict[str, float]]:
    """``{"seconds": {name: wall s}, "cpu_seconds": {name: s}, "calls": {name: n}}`` so far (CPU time is
    the main thread's: with several torch threads, the others' work is not in it)."""
    return {"seconds": dict(_totals), "cpu_seconds": dict(_cpu), "calls": {k: float(v) for k, v in _counts.items()}}


def write_on_exit(path: str | None = None) -> None:
    """At interpreter exit, write the totals and this process's start/end times to ``path``
    (default: ``$ABLATE_TIMINGS``; nothing when neither is set)."""
    path = path or os.environ.get("ABLATE_TIMINGS")
    if not path:
        return
    import atexit

    entered, entered_cpu = time.time(), time.process_time()

    def write() -> None:
        doc = {**snapshot(), "entered_unix": entered, "exited_unix": time.time()}
        doc.update(entered_process_cpu_s=entered_cpu, exited_process_cpu_s=time.process_time())
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)

    atexit.register(write)
