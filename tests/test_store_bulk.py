"""The batch path stores exactly the rows the streaming writers store (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from ablate.store import (
    FinishedRun,
    MetricBuffer,
    ProbePointModel,
    RunModel,
    StepMetricModel,
    dispose_engines,
    finish_run,
    open_storage,
    register_study,
    start_run,
    write_finished_runs,
    write_probes,
)

NAN, INF = float("nan"), float("inf")


def _probe(step: int, ratio: float) -> dict:
    return {
        "step": step,
        "group": "layers",
        "verdict": "OK" if ratio >= 0.8 else "CAUTION",
        "grad_ratio": ratio,
        "grad_ratio_ci": (ratio * 0.9, ratio * 1.1),
        "grad_ratio_layers": ratio,
        "grad_share_layers": 0.4,
        "norm_inflation": INF if step else 1.2,  # a non-finite probe value goes through the encoding
        "loss_with": 3.0,
        "loss_without": 2.9,
        "feature_cosine": 0.95,
        "per_batch_ratios": {"layers": [ratio, NAN, 1.0], "all": [1.0, 1.1]},
    }


RUNS = [
    FinishedRun("baseline", None, 0, "no-branch", None, "cpu", "complete",
                {"loss_slope": -2.0, "steps": 3, "group": "layers", "adapter_gain_batches": [0.1, NAN]},
                {"loss": [3.0, 2.5, 2.0], "grad_norm_layers": [1.0, 0.9, 0.8]}, [_probe(0, 1.0)]),
    FinishedRun("control", None, 0, "no-branch", None, "cpu", "complete",
                {"loss_slope": -1.0, "frozen": "layers", "group": "layers"},
                {"loss": [3.0, 2.9, 2.8]}),
    FinishedRun("trial", 0, 0, "tanh-gate", 0.0, "cpu", "complete",
                {"loss_slope": NAN, "train_grad_ratio": INF, "steps": 3, "grad_ratio_init_ci": (0.5, 0.7)},
                {"loss": [3.0, NAN, INF], "gate/tanh_alpha": [0.0, 0.01, 0.02]},
                [_probe(2, 0.9), _probe(0, 0.6)]),  # out of order: the run's first probe is step 0
    FinishedRun("trial", 1, 0, "none", None, "cpu", "failed", None, {"loss": [3.0]}, error="RuntimeError: boom"),
    FinishedRun("trial", 2, 0, "fixed-scale", 0.1, "cpu", "pruned", None, {}, [_probe(0, 0.7)]),
]  # fmt: skip


def _stream(engine: Engine, study_id: int, run: FinishedRun) -> None:
    """The way a study worker stores a run."""
    rid = start_run(engine, study_id, run.role, run.trial_number, run.seed, run.fix, run.scale, run.device)
    with MetricBuffer(engine, rid) as buf:
        n = max((len(v) for v in run.metrics.values()), default=0)
        for step in range(n):
            buf.add_step(step, {k: v[step] for k, v in run.metrics.items() if step < len(v)})
    write_probes(engine, rid, run.probes)
    finish_run(engine, rid, run.status, run.summary, error=run.error)


def _stored(engine: Engine, study_id: int) -> dict:
    """Everything stored for the study, keyed by run identity (ids and timestamps left out)."""
    skip = {"id", "study_id", "started_at", "finished_at", "heartbeat_at"}  # wall-clock times
    out = {}
    with engine.connect() as conn:
        runs = conn.execute(select(RunModel.__table__).where(RunModel.study_id == study_id)).mappings().all()
        for run in runs:
            key = (run["role"], run["trial_number"], run["seed"])
            steps = conn.execute(
                select(StepMetricModel.step, StepMetricModel.name, StepMetricModel.value, StepMetricModel.flag)
                .where(StepMetricModel.run_id == run["id"])
                .order_by(StepMetricModel.step, StepMetricModel.name)
            ).all()
            probes = conn.execute(
                select(ProbePointModel.__table__).where(ProbePointModel.run_id == run["id"]).order_by("step")
            ).mappings()
            out[key] = {
                "run": {k: v for k, v in run.items() if k not in skip},
                "steps": [tuple(r) for r in steps],
                "probes": [{k: v for k, v in p.items() if k not in ("id", "run_id")} for p in probes],
            }
    return out


def _compare(url: str) -> None:
    engine = open_storage(url)
    streamed = register_study(engine, "streamed", "streamed", "", "0" * 64, [])
    batched = register_study(engine, "batched", "batched", "", "1" * 64, [])
    for run in RUNS:
        _stream(engine, streamed, run)
    ids = write_finished_runs(engine, batched, RUNS)
    assert len(ids) == len(RUNS) and len(set(ids)) == len(RUNS)
    a, b = _stored(engine, streamed), _stored(engine, batched)
    assert a.keys() == b.keys() and len(a) == len(RUNS)
    for key in a:
        assert a[key] == b[key], key
    tanh = b[("trial", 0, 0)]
    assert tanh["run"]["loss0_with"] == 3.0  # filled from the step-0 probe, as finish_run does
    assert tanh["run"]["grad_ratio_init_lo"] == 0.5
    assert ("1", "loss", None, "nan") in [(str(s), n, v, f) for s, n, v, f in tanh["steps"]]
    assert b[("trial", 1, 0)]["run"]["error"] == "RuntimeError: boom"
    assert b[("trial", 2, 0)]["run"]["verdict"] == "CAUTION"  # a pruned run keeps its probe's verdict


def test_batch_rows_equal_streamed_rows_sqlite(tmp_path: Path) -> None:
    _compare(f"sqlite:///{tmp_path / 'r.db'}")


def test_batch_rows_equal_streamed_rows_postgres(fresh_pg_url: str) -> None:
    try:
        _compare(fresh_pg_url)
    finally:
        dispose_engines()


def test_batch_is_one_transaction(tmp_path: Path) -> None:
    engine = open_storage(f"sqlite:///{tmp_path / 'r.db'}")
    sid = register_study(engine, "s", "s", "", "0" * 64, [])
    write_finished_runs(engine, sid, RUNS[:1])
    with pytest.raises(Exception, match="UNIQUE"):  # the baseline again: the whole batch is refused
        write_finished_runs(engine, sid, [RUNS[2], RUNS[0]])
    with engine.connect() as conn:
        assert conn.execute(select(RunModel.role).where(RunModel.study_id == sid)).scalars().all() == ["baseline"]
    with pytest.raises(ValueError, match="status"):
        write_finished_runs(engine, sid, [FinishedRun("trial", 5, 0, "none", None, None, "running", None)])
