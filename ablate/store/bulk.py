"""Storing many finished runs in one transaction (imports, and the read benchmark's large databases).

A worker streams a run through :func:`~ablate.store.claims.start_run`, a
:class:`~ablate.store.metric_writes.MetricBuffer`, :func:`~ablate.store.metric_writes.write_probes` and
:func:`~ablate.store.claims.finish_run`: four transactions per run, each a commit (an fsync on
SQLite). Writing thousands of runs that way is bound by commits, not by rows. This path builds
every row with the same helpers those functions use, so a run stored here has exactly the columns
it would have had through them (``tests/test_store_bulk.py`` compares the two), only without the
intermediate ``running`` state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, insert

from ablate.store.claims import (
    PROBE_INIT_COLUMNS,
    check_final_status,
    finished_columns,
    fresh_run_fields,
    run_trial_key,
)
from ablate.store.groups import run_group_rows
from ablate.store.metric_writes import class_metric_rows, metric_rows, probe_group_rows_of, probe_row, series_values
from ablate.store.schema import (
    ClassMetricModel,
    ProbeGroupMetricModel,
    ProbePointModel,
    RunGroupMetricModel,
    RunModel,
    StepMetricModel,
)

if TYPE_CHECKING:
    from ablate.engine.result import ProbeResult


@dataclass(frozen=True)
class FinishedRun:
    """One run as a worker would have stored it: identity, final status, summary, series, probes."""

    role: str
    trial_number: int | None
    seed: int
    fix: str
    scale: float | None
    device: str | None
    status: str  # complete | failed | pruned
    summary: Mapping[str, Any] | None  # TrainResult.summary() plus the comparison, as for finish_run
    metrics: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # name -> value per step
    probes: Sequence[Mapping[str, Any] | ProbeResult] = ()
    error: str | None = None


def write_finished_runs(engine: Engine, study_id: int, runs: Sequence[FinishedRun]) -> list[int]:
    """Insert new finished runs with their step metrics and probe points in one transaction.

    Returns the run ids in the order given. A run that already exists (same study, role, trial and
    seed) violates the unique constraint and nothing is written.
    """
    if not runs:
        return []
    run_rows, probe_rows = [], []
    for run in runs:
        check_final_status(run.status)
        probes = [probe_row(0, p) for p in run.probes]  # run_id filled in once the run has one
        first = min(probes, key=lambda p: p["step"], default=None)
        first_cols = None if first is None else {c: first[c] for c in PROBE_INIT_COLUMNS}
        run_rows.append(
            {
                "study_id": study_id,
                "role": run.role,
                "trial_number": run.trial_number,
                "trial_key": run_trial_key(run.role, run.trial_number),
                "seed": run.seed,
                **fresh_run_fields(run.fix, run.scale, run.device),
                **finished_columns(run.status, run.summary, first_cols, run.error),
            }
        )
        probe_rows.append(probes)
    runs_table = RunModel.__table__
    with engine.begin() as conn:
        ids = [
            int(r[0])
            for r in conn.execute(insert(runs_table).returning(runs_table.c.id, sort_by_parameter_order=True), run_rows)
        ]
        steps: list[dict[str, Any]] = []
        for run_id, run in zip(ids, runs, strict=True):
            steps += metric_rows(run_id, series_values(run.metrics))
        if steps:
            conn.execute(insert(StepMetricModel.__table__), steps)
        points = [{**p, "run_id": run_id} for run_id, probes in zip(ids, probe_rows, strict=True) for p in probes]
        if points:
            conn.execute(insert(ProbePointModel.__table__), points)
        classes = [
            row
            for run_id, run in zip(ids, runs, strict=True)
            for row in class_metric_rows(run_id, (run.summary or {}).get("evaluation"))
        ]
        if classes:
            conn.execute(insert(ClassMetricModel.__table__), classes)
        groups = [
            row for run_id, run in zip(ids, runs, strict=True) for row in run_group_rows(run_id, run.summary or {})
        ]
        groups += [
            row
            for run_id, run in zip(ids, runs, strict=True)
            for p in run.probes
            for row in probe_group_rows_of(run_id, p)
        ]
        for table, rows in ((RunGroupMetricModel, [r for r in groups if "step" not in r]),
                            (ProbeGroupMetricModel, [r for r in groups if "step" in r])):  # fmt: skip
            if rows:
                conn.execute(insert(table.__table__), rows)
    return ids
