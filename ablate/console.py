"""Rich rendering of a running study: progress over trials and steps, a live best-so-far table."""

from __future__ import annotations

from typing import Any

import optuna
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ablate.study.runner import StudyReporter
from ablate.study.space import arm_of
from ablate.textfmt import fmt
from ablate.train.result import TrainResult


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
        self.live = Live(self._view(), console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> RichStudyReporter:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def _best_table(self) -> Table:
        table = Table(title="best so far", title_justify="left")
        for col in ("trial", "fix", "scale", *self.objectives):
            table.add_column(col, justify="right" if col not in ("fix",) else "left")
        for t in self.best[:8]:
            fix, scale = arm_of(t.params)
            table.add_row(str(t.number), fix, fmt(scale, 3), *(fmt(v) for v in (t.values or [])))
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
