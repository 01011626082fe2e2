"""How a running study reports itself: on a terminal, rich progress bars and a live best-so-far
table; anywhere else (a log file, a pipe, CI), one plain line per finished run, because a live
display only reaches a file as its last frame (a 27-minute study printed nothing until the end)."""

from __future__ import annotations

import time
from typing import Any

import optuna
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ablate.engine.result import TrainResult
from ablate.study.runner import StudyReporter
from ablate.study.space import arm_of
from ablate.textfmt import column_decimals, fixed, fmt


class RichStudyReporter(StudyReporter):
    """Draws to stderr so stdout stays clean for tables and JSON."""

    def __init__(self, console: Console, objectives: list[str]) -> None:
        self.console = console
        self.objectives = objectives
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.trials_task = self.progress.add_task("trials", total=1)
        self.steps_task = self.progress.add_task("run", total=1, visible=False)
        self.best: list[optuna.trial.FrozenTrial] = []
        # transient: the display goes when the study ends, so the summary line, the per-fix table or
        # an error message that follows starts on a clean line of its own
        self.live = Live(self._view(), console=console, refresh_per_second=4, transient=True)

    def __enter__(self) -> RichStudyReporter:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def _best_table(self) -> Table:
        table = Table(title="best so far", title_justify="left")
        for col in ("trial", "fix", "scale", *self.objectives):
            table.add_column(col, justify="right" if col not in ("fix",) else "left")
        shown = self.best[:8]
        # the tables' one rule: per-column decimals, '-' for missing
        decimals = [column_decimals((t.values or [None] * len(self.objectives))[i] for t in shown)
                    for i in range(len(self.objectives))]  # fmt: skip
        for t in shown:
            fix, scale = arm_of(t.params)
            values = [fixed(v, d) for v, d in zip(t.values or [], decimals, strict=False)]
            table.add_row(str(t.number), fix, fmt(scale, 3), *values)
        return table

    def _view(self) -> Group:
        return Group(self.progress, self._best_table()) if self.best else Group(self.progress)

    def study_start(self, name: str, done: int, total: int) -> None:
        self.progress.update(self.trials_task, description=f"study {name}", total=total, completed=done)
        self.live.update(self._view())

    def run_start(self, label: str, steps: int) -> None:
        self.progress.reset(self.steps_task, total=steps, description=label, visible=True)

    def step(self, step: int) -> None:
        self.progress.update(self.steps_task, completed=step + 1)

    def run_end(self, label: str, result: TrainResult | None, status: str, error: str | None = None) -> None:
        if status != "complete":
            self.console.print(f"{label}: {status}" + (f" ({error})" if error else ""), style="yellow", markup=False)

    def waiting(self, what: str) -> None:
        self.progress.update(self.steps_task, description=f"waiting for {what}", visible=True)

    def trial_end(self, trial: optuna.trial.FrozenTrial, best: list[optuna.trial.FrozenTrial]) -> None:
        skipped = trial.user_attrs.get("skipped")  # ablate/study/distinct.py: never ran, never counts
        if skipped:
            self.console.print(f"trial {trial.number} skipped: {skipped}", style="dim", markup=False)
        elif trial.state.is_finished() and trial.state != optuna.trial.TrialState.FAIL:
            self.progress.advance(self.trials_task)
        self.best = best
        self.live.update(self._view())


class PlainStudyReporter(StudyReporter):
    """One line per finished run and per finished trial, written as it happens (no frames)."""

    def __init__(self, console: Console, objectives: list[str]) -> None:
        self.console = console
        self.objectives = objectives
        self.done = 0
        self.total = 0
        self.started = time.monotonic()
        self._last_wait: str | None = None

    def __enter__(self) -> PlainStudyReporter:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def _line(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        self.console.file.write(f"[{elapsed // 60}:{elapsed % 60:02d}] {text}\n")
        self.console.file.flush()

    def study_start(self, name: str, done: int, total: int) -> None:
        self.done, self.total = done, total
        if done >= total:  # e.g. --trials below what the study holds: say so before anything else runs
            self._line(f"study {name}: {done} trials finished before this run, {total} asked for: no new trial to run")
        else:
            self._line(f"study {name}: {done}/{total} trials finished before this run")

    def run_end(self, label: str, result: TrainResult | None, status: str, error: str | None = None) -> None:
        if result is None:
            self._line(f"{label}: {status}" + (f" ({error})" if error else ""))
            return
        head = label.split(" seed")[0]  # a packed label names every seed; this line is one run's
        self._line(
            f"{head} seed {result.seed}: {status} in {result.wall_s:.1f} s, "
            f"gain {fmt(result.adapter_gain, 3)}, loss slope {fmt(result.loss_slope, 3)}"
        )

    def waiting(self, what: str) -> None:
        if what != self._last_wait:  # a worker polls while it waits: say it once
            self._line(f"waiting for {what}")
        self._last_wait = what

    def trial_end(self, trial: optuna.trial.FrozenTrial, best: list[optuna.trial.FrozenTrial]) -> None:
        self._last_wait = None
        skipped = trial.user_attrs.get("skipped")  # ablate/study/distinct.py: never ran, never counts
        if skipped:
            self._line(f"trial {trial.number} skipped: {skipped}")
            return
        if trial.state.is_finished() and trial.state != optuna.trial.TrialState.FAIL:
            self.done += 1
        values = ", ".join(f"{m} {fmt(v, 3)}" for m, v in zip(self.objectives, trial.values or []))
        state = trial.state.name.lower()
        self._line(f"trial {trial.number} {state} ({self.done}/{self.total})" + (f": {values}" if values else ""))


def study_reporter(console: Console, objectives: list[str]) -> RichStudyReporter | PlainStudyReporter:
    """Live bars on a terminal, plain lines anywhere else."""
    cls = RichStudyReporter if console.is_terminal else PlainStudyReporter
    return cls(console, objectives)


class RichWorkersView(RichStudyReporter):
    """Several local workers (``ablate study run --workers N``) on a terminal: the study's trial bar,
    one step bar per worker, the best-so-far table."""

    def __init__(self, console: Console, objectives: list[str], workers: int) -> None:
        super().__init__(console, objectives)
        self.worker_tasks = [self.progress.add_task(f"w{i + 1} starting", total=1) for i in range(workers)]

    def event(self, worker: int, event: dict[str, Any]) -> None:
        """One event line of a worker (ablate/launch/events.py)."""
        from ablate.launch.events import frozen_view

        tag, kind, task = f"w{worker + 1}", event["event"], self.worker_tasks[worker]
        if kind == "run_start":
            self.progress.reset(task, total=event["steps"], description=f"{tag} {event['label']}")
        elif kind == "step":
            self.progress.update(task, completed=event["step"] + 1)
        elif kind == "run_end":
            self.run_end(f"{tag} {event['label']}", None, event["status"], event.get("error"))
        elif kind == "trial_end":
            self.trial_end(frozen_view(event["trial"]), [frozen_view(t) for t in event["best"]])
        elif kind == "waiting":
            self.progress.update(task, description=f"{tag} waiting for {event['what']}")

    def line(self, worker: int, text: str) -> None:
        """A line a worker wrote on stderr (an error, a warning)."""
        self.console.print(f"w{worker + 1}: {text}", style="yellow", markup=False)

    def exited(self, worker: int, code: int) -> None:
        word = "done" if code == 0 else f"stopped (exit {code})"
        self.progress.update(self.worker_tasks[worker], description=f"w{worker + 1} {word}")


class PlainWorkersView(PlainStudyReporter):
    """Several local workers anywhere else: one plain line per finished run, trial or worker,
    each naming its worker (w1, w2, ...)."""

    def __init__(self, console: Console, objectives: list[str], workers: int) -> None:
        super().__init__(console, objectives)
        self._waits: dict[int, str] = {}

    def event(self, worker: int, event: dict[str, Any]) -> None:
        """One event line of a worker (ablate/launch/events.py)."""
        from ablate.launch.events import frozen_view, result_view

        tag, kind = f"w{worker + 1}", event["event"]
        if kind == "run_end":
            result = event.get("result")
            self.run_end(f"{tag} {event['label']}", result and result_view(result), event["status"], event.get("error"))
        elif kind == "trial_end":
            self._waits.pop(worker, None)
            self.trial_end(frozen_view(event["trial"]), [])
        elif kind == "waiting" and self._waits.get(worker) != event["what"]:
            self._waits[worker] = event["what"]
            self._line(f"{tag} waiting for {event['what']}")

    def line(self, worker: int, text: str) -> None:
        self._line(f"w{worker + 1}: {text}")

    def exited(self, worker: int, code: int) -> None:
        self._line(f"w{worker + 1} " + ("done" if code == 0 else f"stopped (exit {code})"))


def workers_view(console: Console, objectives: list[str], workers: int) -> RichWorkersView | PlainWorkersView:
    """Live bars on a terminal, plain lines anywhere else (as study_reporter)."""
    cls = RichWorkersView if console.is_terminal else PlainWorkersView
    return cls(console, objectives, workers)
