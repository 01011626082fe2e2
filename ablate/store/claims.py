"""The life of a run row: claimed ('running', with a lease for reference runs), kept alive by a
heartbeat while its worker trains, closed complete, failed or pruned; a killed worker's rows failed
or adopted by the retry of its trial.

Every function takes an Engine and does its own short transaction, so a worker never holds a write
lock while it trains (SQLite allows one writer at a time).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ablate.store.encode import decode_float, decode_float_list, encode_fields, encode_float_list, utcnow
from ablate.store.groups import run_group_rows
from ablate.store.metric_writes import class_metric_rows, write_metrics, write_probes
from ablate.store.schema import (
    REFERENCE_KEYS,
    ROLES,
    RUN_FLOAT_FIELDS,
    WORKER_FIELDS,
    BlobModel,
    ClassMetricModel,
    ProbeGroupMetricModel,
    ProbePointModel,
    RunGroupMetricModel,
    RunModel,
    StepMetricModel,
    StudyModel,
)
from ablate.timers import timed

if TYPE_CHECKING:
    from ablate.engine.result import TrainResult

FINAL_STATUSES = ("complete", "failed", "pruned")

# Run summary columns filled from the run's first probe point when the summary does not give them.
INIT_FROM_PROBE = {
    "grad_ratio_init": "grad_ratio",
    "grad_ratio_init_lo": "grad_ratio_lo",
    "grad_ratio_init_hi": "grad_ratio_hi",
    "grad_share_init": "grad_share",
    "norm_inflation_init": "norm_inflation",
    "loss0_with": "loss_with",
    "loss0_without": "loss_without",
    "feature_cosine_init": "feature_cosine",
}


def run_trial_key(role: str, trial_number: int | None) -> int:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if role in REFERENCE_KEYS:
        if trial_number is not None:
            raise ValueError(f"a {role} run has no trial number (got {trial_number})")
        return REFERENCE_KEYS[role]
    if trial_number is None or trial_number < 0:
        raise ValueError(f"a trial run needs a trial number >= 0 (got {trial_number})")
    return int(trial_number)


def _describe(role: str, trial_number: int | None, seed: int) -> str:
    return f"{role} run (seed {seed})" if role in REFERENCE_KEYS else f"trial {trial_number} seed {seed}"


def fresh_run_fields(
    fix: str, scale: float | None, device: str | None, worker: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The columns of a run row as :func:`start_run` leaves it: running, no summary yet, and the
    worker that claimed it (``provenance.worker_record``; None: not recorded)."""
    return {
        "fix": fix,
        "scale": None if scale is None else float(scale),
        "device": device,
        "status": "running",
        "error": None,
        "started_at": utcnow(),
        "finished_at": None,
        "heartbeat_at": utcnow(),
        "steps": None,
        "packed_arms": None,
        "verdict": None,
        "nonfinite": None,
        "judged_group": None,
        "frozen": None,
        "adapter_gain_batches": None,
        **dict.fromkeys(RUN_FLOAT_FIELDS),
        **{f: (worker or {}).get(f) for f in WORKER_FIELDS},
    }


class RunBusy(RuntimeError):
    """Another worker holds this run (see ``start_run``'s ``lease_s``)."""


class RunComplete(ValueError):
    """The run is already complete; finished work is not re-run."""


def write_lock(session: Session) -> None:
    """Take the database's write lock now, at the start of a read-then-write transaction (SQLite).

    Python's sqlite3 runs a SELECT outside any transaction and opens one only at the first write, so
    two workers could both read a leftover run as free and both claim it (CI saw two workers train one
    Stage 1 run). BEGIN IMMEDIATE makes the second wait until the first has committed its claim, then
    read that claim. PostgreSQL locks the row instead (``RunModel.find(..., lock=True)``).
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("BEGIN IMMEDIATE"))


@timed("db")
def start_run(
    engine: Engine,
    study_id: int,
    role: str,
    trial_number: int | None,
    seed: int,
    fix: str,
    scale: float | None,
    device: str | None,
    lease_s: float | None = None,
    worker: Mapping[str, Any] | None = None,
) -> int:
    """Mark a run 'running' and return its id; the row is unique per (study, role, trial, seed).

    A leftover row that is not 'complete' (a crashed, failed or pruned attempt) is reset and reused:
    its step metrics and probe points are deleted and its summary cleared, so a retry never mixes
    with a dead attempt's numbers. A 'complete' row raises ValueError: finished work is not re-run.
    With ``lease_s``, a 'running' row whose worker's heartbeat (see :class:`RunHeartbeat`) is less
    than ``lease_s`` seconds old raises RunBusy instead of being taken over (for runs no Optuna trial
    coordinates); a killed worker's row is taken over once its heartbeat is that old. ``worker``:
    the claiming worker's record (``provenance.worker_record``), stored on the row.
    """
    trial_key = run_trial_key(role, trial_number)
    fields = fresh_run_fields(fix, scale, device, worker)
    for attempt in range(2):
        try:
            with Session(engine) as session, session.begin():
                write_lock(session)
                if session.get(StudyModel, study_id) is None:
                    raise LookupError(f"no study with id {study_id}")
                run = RunModel.find(session, study_id, role, trial_key, seed, lock=True)
                if run is None:
                    run = RunModel(
                        study_id=study_id,
                        role=role,
                        trial_number=trial_number,
                        trial_key=trial_key,
                        seed=seed,
                        **fields,
                    )
                    session.add(run)
                    session.flush()
                    return run.id
                last = run.heartbeat_at or run.started_at
                if run.status == "running" and lease_s is not None and last is not None:
                    age = (utcnow() - last).total_seconds()
                    if age < lease_s:
                        raise RunBusy(
                            f"{_describe(role, trial_number, seed)} is running elsewhere (heartbeat {age:.0f} s ago)"
                        )
                if run.status == "complete":
                    raise RunComplete(
                        f"{_describe(role, trial_number, seed)} of study {study_id} is already complete "
                        f"(run {run.id}); not re-running finished work"
                    )
                # a reused row starts clean: its series, probes, per-group numbers and artefacts go
                for model in (StepMetricModel, ProbePointModel, ProbeGroupMetricModel, RunGroupMetricModel, BlobModel):
                    session.execute(delete(model).where(model.run_id == run.id))
                for key, value in fields.items():
                    setattr(run, key, value)
                return run.id
        except IntegrityError:  # another worker inserted the same run between our read and write
            if attempt:
                raise
    raise AssertionError("unreachable")


@timed("db")
def finish_run(
    engine: Engine,
    run_id: int,
    status: str,
    summary: Mapping[str, Any] | None,
    error: str | None = None,
) -> None:
    """Close a run with its final status and summary (``TrainResult.summary()``; extra keys ignored).

    Non-finite summary values are encoded (see :mod:`ablate.store.encode`). The step-0 numbers that
    the summary does not carry (grad_share_init, norm_inflation_init, loss0_with/without,
    feature_cosine_init, verdict, and the ratio CI) are taken from the run's first stored probe point.
    """
    check_final_status(status)
    with Session(engine) as session, session.begin():
        run = session.get(RunModel, run_id)
        if run is None:
            raise LookupError(f"no run with id {run_id}")
        if run.status == "complete":
            raise ValueError(f"run {run_id} is already complete")
        probe = session.scalars(
            select(ProbePointModel).where(ProbePointModel.run_id == run_id).order_by(ProbePointModel.step)
        ).first()
        first = None if probe is None else {c: getattr(probe, c) for c in PROBE_INIT_COLUMNS}
        for key, value in finished_columns(status, summary, first, error).items():
            setattr(run, key, value)
        group_rows = run_group_rows(run_id, summary or {})
        if group_rows:
            session.execute(delete(RunGroupMetricModel).where(RunGroupMetricModel.run_id == run_id))
            session.execute(insert(RunGroupMetricModel), group_rows)
        rows = class_metric_rows(run_id, (summary or {}).get("evaluation"))
        if rows:
            session.execute(delete(ClassMetricModel).where(ClassMetricModel.run_id == run_id))
            session.execute(insert(ClassMetricModel), rows)


PROBE_INIT_COLUMNS = (*INIT_FROM_PROBE.values(), "verdict", "nonfinite")


def check_final_status(status: str) -> None:
    if status not in FINAL_STATUSES:
        raise ValueError(f"status must be one of {', '.join(FINAL_STATUSES)}, got {status!r}")


def finished_columns(
    status: str, summary: Mapping[str, Any] | None, first_probe: Mapping[str, Any] | None, error: str | None
) -> dict[str, Any]:
    """The run columns :func:`finish_run` sets, given the run's first stored probe row (or None)."""
    values: dict[str, Any] = dict(summary or {})
    ci = values.get("grad_ratio_init_ci")
    if ci is not None:
        values.setdefault("grad_ratio_init_lo", ci[0])
        values.setdefault("grad_ratio_init_hi", ci[1])
    out: dict[str, Any] = {}
    if first_probe is not None:
        flags = json.loads(first_probe["nonfinite"]) if first_probe["nonfinite"] else {}
        for col, src in INIT_FROM_PROBE.items():
            if values.get(col) is None:
                values[col] = decode_float(first_probe[src], flags.get(src))
        if values.get("verdict") is None:
            values["verdict"] = first_probe["verdict"]
    if summary is not None or first_probe is not None:
        columns, nonfinite = encode_fields(values, RUN_FLOAT_FIELDS)
        out.update(columns)
        out["nonfinite"] = nonfinite
        steps = values.get("steps")
        out["steps"] = None if steps is None else int(steps)
        packed = values.get("packed_arms")
        out["packed_arms"] = None if packed is None else int(packed)
        out["verdict"] = values.get("verdict")
        out["judged_group"] = values.get("group")
        out["frozen"] = values.get("frozen") or None
        if values.get("adapter_gain_batches") is not None:
            out["adapter_gain_batches"] = encode_float_list(values["adapter_gain_batches"])
    out.update(status=status, error=error, finished_at=utcnow())
    return out


def write_result(
    engine: Engine, run_id: int, result: TrainResult, status: str = "complete", metrics: bool = True
) -> None:
    """Store a whole TrainResult after the fact: its series, probe points and summary.

    For callers that did not stream metrics through a MetricBuffer (pass ``metrics=False`` if they did).
    """
    if metrics:
        write_metrics(engine, run_id, result.metrics)
    write_probes(engine, run_id, result.probes)
    finish_run(engine, run_id, status, {**result.summary(), "adapter_gain_batches": result.adapter_gain_batches})


@timed("db")
def reference_run(engine: Engine, study_id: int, seed: int, role: str = "baseline") -> dict[str, Any] | None:
    """A seed's complete reference run as the comparison needs it, or None when it has not landed:
    ``{"run_id", "loss_slope", "metrics": {name: [value per step]}, "gain_batches": [...]}``."""
    key = REFERENCE_KEYS[role]
    with Session(engine) as session:
        run = RunModel.find(session, study_id, role, key, seed)
        if run is None or run.status != "complete":
            return None
        flags = json.loads(run.nonfinite) if run.nonfinite else {}
        rows = session.execute(
            select(StepMetricModel.name, StepMetricModel.step, StepMetricModel.value, StepMetricModel.flag)
            .where(StepMetricModel.run_id == run.id)
            .order_by(StepMetricModel.name, StepMetricModel.step)
        ).all()
        metrics: dict[str, list[float]] = {}
        for name, _step, value, flag in rows:
            metrics.setdefault(name, []).append(decode_float(value, flag))
        return {
            "run_id": run.id,
            "loss_slope": decode_float(run.loss_slope, flags.get("loss_slope")),
            "metrics": metrics,
            "gain_batches": decode_float_list(run.adapter_gain_batches),
        }


@timed("db")
def reference_status(engine: Engine, study_id: int, seed: int, role: str = "baseline") -> str | None:
    """The status of a seed's reference run ('running', 'complete', ...), None when there is none."""
    with Session(engine) as session:
        run = RunModel.find(session, study_id, role, REFERENCE_KEYS[role], seed)
        return None if run is None else run.status


class RunHeartbeat:
    """While a worker runs these runs, a background thread refreshes their ``heartbeat_at`` every
    ``interval_s`` seconds; a worker killed outright stops beating, and its rows become stale."""

    def __init__(self, engine: Engine, run_ids: list[int], interval_s: float) -> None:
        self.engine, self.run_ids, self.interval_s = engine, list(run_ids), interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ablate-run-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with Session(self.engine) as session, session.begin():
                    session.execute(
                        update(RunModel)
                        .where(RunModel.id.in_(self.run_ids), RunModel.status == "running")
                        .values(heartbeat_at=utcnow())
                    )
            except Exception:  # noqa: BLE001 - a missed beat only delays nothing; the run goes on
                continue

    @timed("db")
    def __enter__(self) -> RunHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@timed("db")
def fail_stale_runs(engine: Engine, study_id: int, live_trials: set[int]) -> int:
    """Mark trial runs left 'running' by a killed worker as failed; returns how many.

    ``live_trials`` are the Optuna trial numbers still RUNNING (other workers' runs stay untouched).
    """
    with Session(engine) as session, session.begin():
        stale = session.scalars(
            select(RunModel).where(
                RunModel.study_id == study_id, RunModel.role == "trial", RunModel.status == "running"
            )
        ).all()
        n = 0
        for run in stale:
            if run.trial_number not in live_trials:
                run.status, run.error, run.finished_at = "failed", "interrupted (worker stopped)", utcnow()
                n += 1
    return n


@timed("db")
def adopt_runs(
    engine: Engine, study_id: int, from_trials: Sequence[int], to_trial: int, fix: str, scale: float | None
) -> list[int]:
    """Move the complete runs of earlier attempts of a trial (Optuna's retries of a trial whose
    worker died after its runs finished) to the retry's number; returns the adopted run ids.

    One run per seed, the latest; the retry then trains only the seeds without one, so a worker
    killed at any point loses only the work it had not finished.
    """
    with Session(engine) as session, session.begin():
        runs = session.scalars(
            select(RunModel)
            .where(
                RunModel.study_id == study_id,
                RunModel.role == "trial",
                RunModel.status == "complete",
                RunModel.trial_number.in_(list(from_trials)),
                RunModel.fix == fix,
            )
            .order_by(RunModel.id.desc())
        ).all()
        by_seed: dict[int, RunModel] = {}
        for run in runs:
            if run.seed not in by_seed and (run.scale == scale or (run.scale is None and scale is None)):
                by_seed[run.seed] = run
        for run in by_seed.values():
            run.trial_number = run.trial_key = to_trial
        return [run.id for run in by_seed.values()]
