"""Writing studies, runs, per-step metrics and probe points (docs/results-database.md).

Every function takes an Engine and does its own short transaction, so a worker never holds a write
lock while it trains (SQLite allows one writer at a time). Per-step metrics go through
:class:`MetricBuffer`: one transaction and one executemany INSERT per flush, never a commit per value
and never Optuna's ``trial.report`` per step.
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ablate.store.encode import (
    decode_float,
    decode_float_list,
    encode_fields,
    encode_float,
    encode_float_list,
    encode_float_lists,
)
from ablate.store.schema import (
    PROBE_FLOAT_FIELDS,
    REFERENCE_KEYS,
    ROLES,
    RUN_FLOAT_FIELDS,
    ClassMetricModel,
    ProbePointModel,
    RunModel,
    StepMetricModel,
    StudyModel,
)

if TYPE_CHECKING:
    from ablate.engine.result import ProbeResult, TrainResult

META_FIELDS = (
    "ablate_version",
    "torch_version",
    "open_clip_version",
    "optuna_version",
    "python_version",
    "git_revision",
    "host",
)
FINAL_STATUSES = ("complete", "failed", "pruned")

# Run summary columns filled from the run's first probe point when the summary does not give them.
_INIT_FROM_PROBE = {
    "grad_ratio_init": "grad_ratio",
    "grad_ratio_init_lo": "grad_ratio_lo",
    "grad_ratio_init_hi": "grad_ratio_hi",
    "grad_share_init": "grad_share",
    "norm_inflation_init": "norm_inflation",
    "loss0_with": "loss_with",
    "loss0_without": "loss_without",
    "feature_cosine_init": "feature_cosine",
}


def utcnow() -> datetime:
    """Naive UTC timestamp (the schema stores naive UTC on every backend)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _git_revision(cwd: Path) -> str | None:
    """HEAD's hash, with "-dirty" when tracked files have uncommitted changes; None outside git."""
    rev = _git(cwd, "rev-parse", "HEAD")
    if not rev:
        return None
    return rev + ("-dirty" if _git(cwd, "status", "--porcelain", "--untracked-files=no") else "")


def runtime_meta(git_dir: str | Path | None = None) -> dict[str, str | None]:
    """The software versions, git revision and host for :func:`register_study` (docs/results-database.md).

    Reads installed package metadata instead of importing torch/optuna/open_clip, so it is cheap.
    ``git_dir`` defaults to the directory of this source file (the ablate checkout).
    """
    return {
        "ablate_version": _version("ablate-branch"),
        "torch_version": _version("torch"),
        "open_clip_version": _version("open_clip_torch"),
        "optuna_version": _version("optuna"),
        "python_version": platform.python_version(),
        "git_revision": _git_revision(Path(git_dir) if git_dir else Path(__file__).resolve().parent),
        "host": socket.gethostname(),
    }


def _objectives_json(objectives: Sequence[Mapping[str, str]]) -> str:
    out = []
    for obj in objectives:
        if "metric" not in obj or "direction" not in obj:
            raise ValueError(f"objective {dict(obj)!r} needs 'metric' and 'direction'")
        out.append({"metric": str(obj["metric"]), "direction": str(obj["direction"])})
    return json.dumps(out)


def register_study(
    engine: Engine,
    name: str,
    optuna_study_name: str,
    spec_text: str,
    spec_hash: str,
    objectives: Sequence[Mapping[str, str]],
    meta: Mapping[str, Any] | None = None,
) -> int:
    """Create the study row, or return the existing id when ``name`` exists with the same spec hash.

    Idempotent so that resuming a study, or several workers starting it, all land on one row. A name
    reused for a different spec is refused: its results would otherwise mix two experiments.
    ``meta`` keys are those of :func:`runtime_meta`; missing keys are stored as NULL, others ignored.
    """
    meta = meta or {}

    def existing(session: Session) -> int | None:
        row = StudyModel.find_by_name(name, session)
        if row is None:
            return None
        if row.spec_hash != spec_hash:
            raise ValueError(
                f"study {name!r} already exists with a different spec (hash {row.spec_hash[:12]}, "
                f"this spec {spec_hash[:12]}); use another --name"
            )
        return row.id

    with Session(engine) as session:
        found = existing(session)
        if found is not None:
            return found
        row = StudyModel(
            name=name,
            optuna_study_name=optuna_study_name,
            spec_text=spec_text,
            spec_hash=spec_hash,
            objectives=_objectives_json(objectives),
            created_at=utcnow(),
            **{k: (None if meta.get(k) is None else str(meta[k])) for k in META_FIELDS},
        )
        session.add(row)
        try:
            session.commit()
            return row.id
        except IntegrityError:  # another worker registered the same name between our read and write
            session.rollback()
            found = existing(session)
            if found is None:
                raise
            return found


def _trial_key(role: str, trial_number: int | None) -> int:
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


def _fresh_run_fields(fix: str, scale: float | None, device: str | None) -> dict[str, Any]:
    """The columns of a run row as :func:`start_run` leaves it: running, no summary yet."""
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
    }


class RunBusy(RuntimeError):
    """Another worker holds this run (see ``start_run``'s ``lease_s``)."""


class RunComplete(ValueError):
    """The run is already complete; finished work is not re-run."""


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
) -> int:
    """Mark a run 'running' and return its id; the row is unique per (study, role, trial, seed).

    A leftover row that is not 'complete' (a crashed, failed or pruned attempt) is reset and reused:
    its step metrics and probe points are deleted and its summary cleared, so a retry never mixes
    with a dead attempt's numbers. A 'complete' row raises ValueError: finished work is not re-run.
    With ``lease_s``, a 'running' row whose worker's heartbeat (see :class:`RunHeartbeat`) is less
    than ``lease_s`` seconds old raises RunBusy instead of being taken over (for runs no Optuna trial
    coordinates); a killed worker's row is taken over once its heartbeat is that old.
    """
    trial_key = _trial_key(role, trial_number)
    fields = _fresh_run_fields(fix, scale, device)
    for attempt in range(2):
        try:
            with Session(engine) as session, session.begin():
                if session.get(StudyModel, study_id) is None:
                    raise LookupError(f"no study with id {study_id}")
                run = RunModel.find(session, study_id, role, trial_key, seed)
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
                session.execute(delete(StepMetricModel).where(StepMetricModel.run_id == run.id))
                session.execute(delete(ProbePointModel).where(ProbePointModel.run_id == run.id))
                for key, value in fields.items():
                    setattr(run, key, value)
                return run.id
        except IntegrityError:  # another worker inserted the same run between our read and write
            if attempt:
                raise
    raise AssertionError("unreachable")


def _host_floats(values: list[Any]) -> list[Any]:
    """Move device tensors to the host in one transfer per device instead of one sync per value."""
    tensors: dict[Any, list[int]] = {}
    for i, v in enumerate(values):
        if type(v).__module__.startswith("torch") and hasattr(v, "device"):
            tensors.setdefault(v.device, []).append(i)
    if not tensors:
        return values
    import torch  # only reached when the caller handed us tensors, so torch is already imported

    out = list(values)
    for idx in tensors.values():
        stacked = torch.stack([values[i].reshape(()).to(torch.float64) for i in idx]).tolist()
        for i, v in zip(idx, stacked, strict=True):
            out[i] = v
    return out


def _metric_rows(run_id: int, values: Mapping[tuple[int, str], Any]) -> list[dict[str, Any]]:
    """ablate_step_metrics rows for ``{(step, name): value}``, non-finite values encoded."""
    keys = list(values)
    rows = []
    for (step, name), raw in zip(keys, _host_floats(list(values.values())), strict=True):
        value, flag = encode_float(raw)
        rows.append({"run_id": run_id, "step": step, "name": name, "value": value, "flag": flag})
    return rows


def _series_values(metrics: Mapping[str, Sequence[Any]]) -> dict[tuple[int, str], Any]:
    """A finished run's series (name -> value per step) keyed (step, name), in the order
    :func:`write_metrics` buffers them: step by step, names in the series' order."""
    n_steps = max((len(v) for v in metrics.values()), default=0)
    return {(step, name): vals[step] for step in range(n_steps) for name, vals in metrics.items() if step < len(vals)}


class MetricBuffer:
    """Buffers per-step metrics of one run and writes them in one transaction per flush.

    Flushes automatically once ``flush_every`` distinct steps are buffered, on :meth:`flush`, and on
    leaving a ``with`` block (also after an exception, so a failed run keeps the steps it reached).
    Values may be Python floats or 0-d tensors; tensors are detached when added and copied to the
    host only at flush time (docs/performance.md: no host sync per step). A (step, name) added twice before a
    flush keeps the last value; adding a step that was already flushed fails at the next flush.
    ``n_flushes`` counts the transactions written, ``n_rows`` the rows.
    """

    def __init__(self, engine: Engine, run_id: int, flush_every: int = 200) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.engine = engine
        self.run_id = run_id
        self.flush_every = flush_every
        self.n_flushes = 0
        self.n_rows = 0
        self._rows: dict[tuple[int, str], Any] = {}
        self._steps: set[int] = set()

    def __len__(self) -> int:
        """Rows buffered and not yet written."""
        return len(self._rows)

    def _put(self, step: int, name: str, value: Any) -> None:
        if hasattr(value, "detach"):
            value = value.detach()
        self._rows[(int(step), str(name))] = value
        self._steps.add(int(step))

    def add_step(self, step: int, values: Mapping[str, Any]) -> None:
        """Buffer the metrics of one step, e.g. ``{"loss": 3.1, "grad_norm": 0.4}``."""
        for name, value in values.items():
            self._put(step, name, value)
        self._maybe_flush()

    def add_rows(self, rows: Iterable[tuple[int, str, Any] | Mapping[str, Any]]) -> None:
        """Buffer rows given as ``(step, name, value)`` tuples or ``{"step", "name", "value"}`` dicts."""
        for row in rows:
            if isinstance(row, Mapping):
                self._put(row["step"], row["name"], row["value"])
            else:
                step, name, value = row
                self._put(step, name, value)
            self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self._steps) >= self.flush_every:
            self.flush()

    def flush(self) -> int:
        """Write everything buffered in one transaction (one executemany INSERT); return rows written.

        On error the buffer is kept, so a caller may retry after, e.g., a lock timeout.
        """
        if not self._rows:
            return 0
        rows = _metric_rows(self.run_id, self._rows)
        with self.engine.begin() as conn:
            conn.execute(insert(StepMetricModel.__table__), rows)
        self.n_flushes += 1
        self.n_rows += len(rows)
        self._rows.clear()
        self._steps.clear()
        return len(rows)

    def __enter__(self) -> MetricBuffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.flush()


def write_metrics(engine: Engine, run_id: int, metrics: Mapping[str, Sequence[Any]], flush_every: int = 200) -> int:
    """Write a finished run's series (``TrainResult.metrics``: name -> value per step); return rows."""
    n_steps = max((len(v) for v in metrics.values()), default=0)
    with MetricBuffer(engine, run_id, flush_every) as buf:
        for step in range(n_steps):
            buf.add_step(step, {name: vals[step] for name, vals in metrics.items() if step < len(vals)})
    return buf.n_rows


def _probe_row(run_id: int, probe: Mapping[str, Any] | ProbeResult) -> dict[str, Any]:
    d = dict(probe.flat() if hasattr(probe, "flat") else probe)
    ci = d.get("grad_ratio_ci") or (None, None)
    d.setdefault("grad_ratio_lo", ci[0])
    d.setdefault("grad_ratio_hi", ci[1])
    columns, nonfinite = encode_fields(d, PROBE_FLOAT_FIELDS)
    return {
        "run_id": run_id,
        "step": int(d["step"]),
        "judged_group": d.get("group"),
        **columns,
        "verdict": d.get("verdict"),
        "per_batch_ratios": encode_float_lists(d.get("per_batch_ratios")),
        "nonfinite": nonfinite,
    }


def write_probes(engine: Engine, run_id: int, probes: Iterable[Mapping[str, Any] | ProbeResult]) -> int:
    """Write several probe points in one transaction; return how many."""
    rows = [_probe_row(run_id, p) for p in probes]
    if rows:
        with engine.begin() as conn:
            conn.execute(insert(ProbePointModel.__table__), rows)
    return len(rows)


def write_probe(engine: Engine, run_id: int, probe: Mapping[str, Any] | ProbeResult) -> None:
    """Write one probe point (``ProbeResult.to_dict()`` or the ProbeResult itself)."""
    write_probes(engine, run_id, [probe])


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
    _check_final_status(status)
    with Session(engine) as session, session.begin():
        run = session.get(RunModel, run_id)
        if run is None:
            raise LookupError(f"no run with id {run_id}")
        if run.status == "complete":
            raise ValueError(f"run {run_id} is already complete")
        probe = session.scalars(
            select(ProbePointModel).where(ProbePointModel.run_id == run_id).order_by(ProbePointModel.step)
        ).first()
        first = None if probe is None else {c: getattr(probe, c) for c in _PROBE_INIT_COLUMNS}
        for key, value in _finished_columns(status, summary, first, error).items():
            setattr(run, key, value)
        rows = class_metric_rows(run_id, (summary or {}).get("evaluation"))
        if rows:
            session.execute(delete(ClassMetricModel).where(ClassMetricModel.run_id == run_id))
            session.execute(insert(ClassMetricModel), rows)


def class_metric_rows(run_id: int, evaluation: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The ablate_class_metrics rows of a run's evaluation (``EvalResult.to_dict()``; None: none):
    per class its four metrics (NULL + flag and the reason when undefined) and its counts."""
    if not evaluation:
        return []
    reasons = evaluation.get("reasons", {})
    rows = []
    for name, values in evaluation.get("per_class", {}).items():
        for metric, v in values.items():
            value, flag = encode_float(v)
            note = reasons.get(f"{name}/{metric.split('_')[0]}") if flag is not None else None
            rows.append(
                {"run_id": run_id, "class_name": name, "metric": metric, "value": value, "flag": flag, "note": note}
            )
        for metric, n in evaluation.get("counts", {}).get(name, {}).items():
            rows.append(
                {"run_id": run_id, "class_name": name, "metric": metric, "value": float(n), "flag": None, "note": None}
            )
    return rows


_PROBE_INIT_COLUMNS = (*_INIT_FROM_PROBE.values(), "verdict", "nonfinite")


def _check_final_status(status: str) -> None:
    if status not in FINAL_STATUSES:
        raise ValueError(f"status must be one of {', '.join(FINAL_STATUSES)}, got {status!r}")


def _finished_columns(
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
        for col, src in _INIT_FROM_PROBE.items():
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

    def __enter__(self) -> RunHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


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
