"""A worker's progress as JSON lines, so one process can draw the progress of many.

``ablate study run SPEC --events`` reports through :class:`EventWriter` (one JSON object per line
on stdout) instead of drawing; ``ablate study run SPEC --workers N`` reads every worker's lines and
draws them as one view (ablate/console.py ``workers_view``).
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import IO, Any

import optuna

from ablate.engine.result import TrainResult
from ablate.study.runner import StudyOutcome, StudyReporter

STEP_EVERY_S = 0.25  # a worker's step events, at most this often (and its last step)


def _trial(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name, "params": t.params, "values": t.values}


class EventWriter(StudyReporter):
    """A StudyReporter that writes each report as one JSON line to ``stream``."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._last_step = 0.0
        self._steps = 0

    def _emit(self, event: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()

    def study_start(self, name: str, done: int, total: int) -> None:
        self._emit("study_start", name=name, done=done, total=total)

    def run_start(self, label: str, steps: int) -> None:
        self._steps = steps
        self._emit("run_start", label=label, steps=steps)

    def step(self, step: int) -> None:
        now = time.monotonic()
        if now - self._last_step >= STEP_EVERY_S or step + 1 >= self._steps:
            self._last_step = now
            self._emit("step", step=step)

    def run_end(self, label: str, result: TrainResult | None, status: str, error: str | None = None) -> None:
        summary = None
        if result is not None:
            summary = {
                "seed": result.seed,
                "wall_s": result.wall_s,
                "adapter_gain": result.adapter_gain,
                "loss_slope": result.loss_slope,
            }
        self._emit("run_end", label=label, status=status, error=error, result=summary)

    def trial_end(self, trial: optuna.trial.FrozenTrial, best: list[optuna.trial.FrozenTrial]) -> None:
        self._emit("trial_end", trial={**_trial(trial), "skipped": trial.user_attrs.get("skipped")},
                   best=[_trial(t) for t in best[:8]])  # fmt: skip

    def waiting(self, what: str) -> None:
        self._emit("waiting", what=what)

    def outcome(self, outcome: StudyOutcome) -> None:
        self._emit("outcome", ran=outcome.ran, failed=outcome.failed, n_trials=outcome.n_trials)


def decode(line: str) -> dict[str, Any] | None:
    """One event line as a dict; None for anything else a worker printed."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def frozen_view(trial: dict[str, Any]) -> SimpleNamespace:
    """An event's trial with the attributes the progress views read from a FrozenTrial."""
    skipped = trial.get("skipped")
    return SimpleNamespace(
        number=trial["number"],
        state=optuna.trial.TrialState[trial["state"]],
        params=trial.get("params") or {},
        values=trial.get("values"),
        user_attrs={"skipped": skipped} if skipped else {},
    )


def result_view(result: dict[str, Any]) -> SimpleNamespace:
    """An event's run result with the attributes the progress views read from a TrainResult."""
    return SimpleNamespace(**result)
