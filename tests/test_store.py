"""The SQL store on real databases: SQLite (a temp file) and PostgreSQL (when ABLATE_TEST_PG_URL is set)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine, event, func, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

from ablate.store import (
    DEFAULT_STORAGE,
    TABLE_NAMES,
    MetricBuffer,
    ProbePointModel,
    RunModel,
    StepMetricModel,
    StudyModel,
    baseline_slopes,
    create_schema,
    decode_float,
    decode_float_list,
    dispose_engines,
    encode_float,
    encode_float_list,
    finish_run,
    group_by_fix,
    json_records,
    list_studies,
    make_engine,
    open_storage,
    probe_frame,
    register_study,
    run_sql,
    runs_frame,
    start_run,
    step_metrics_frame,
    storage_url,
    trials_frame,
    write_probe,
    write_result,
)
from ablate.store.query import _execute_read_only
from ablate.train.metrics import bootstrap_ci
from ablate.train.result import ProbeResult, TrainResult

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")
OBJECTIVES = [{"metric": "loss_slope", "direction": "minimize"}]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
    else:
        yield request.getfixturevalue("fresh_pg_url")


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    eng = open_storage(url)
    yield eng
    dispose_engines()


def new_study(engine: Engine, name: str = "s", spec_hash: str = "a" * 64) -> int:
    return register_study(engine, name, f"optuna-{name}", "[study]\n", spec_hash, OBJECTIVES, {"host": "t"})


def same(a: float, b: float) -> bool:
    """Equality that treats NaN as equal to NaN (and inf to inf)."""
    return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


# ------------------------------------------------------------------------------------- engine, schema


def test_schema_creates_only_ablate_tables(engine: Engine) -> None:
    names = set(inspect(engine).get_table_names())
    assert names == {"ablate_studies", "ablate_runs", "ablate_step_metrics", "ablate_probe_points"}
    assert names == set(TABLE_NAMES)
    create_schema(engine)  # idempotent
    assert set(inspect(engine).get_table_names()) == names


def test_schema_leaves_optuna_tables_alone(tmp_path: Path) -> None:
    import optuna

    url = f"sqlite:///{tmp_path / 'results.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="o", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    before = {t: [c["name"] for c in inspect(make_engine(url)).get_columns(t)] for t in _tables(url)}
    engine = open_storage(url)
    after = set(inspect(engine).get_table_names())
    assert after == set(before) | set(TABLE_NAMES)
    assert not set(before) & set(TABLE_NAMES)
    for table, cols in before.items():
        assert [c["name"] for c in inspect(engine).get_columns(table)] == cols
    assert len(optuna.load_study(study_name="o", storage=url).trials) == 2
    dispose_engines()


def _tables(url: str) -> list[str]:
    return inspect(make_engine(url)).get_table_names()


def test_importing_store_does_not_import_optuna_or_torch() -> None:
    code = "import sys, ablate.store; print('optuna' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_sqlite_pragmas_wal_busy_timeout_foreign_keys(tmp_path: Path) -> None:
    engine = open_storage(f"sqlite:///{tmp_path / 'r.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    dispose_engines()


def test_storage_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    assert storage_url(None) == DEFAULT_STORAGE == "sqlite:///results.db"
    monkeypatch.setenv("ABLATE_STORAGE", "sqlite:///env.db")
    assert storage_url(None) == "sqlite:///env.db"
    assert storage_url("sqlite:///explicit.db") == "sqlite:///explicit.db"


def test_make_engine_urls(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert make_engine(url) is make_engine(url)  # cached per URL
    pg = make_engine("postgresql://u@127.0.0.1:1/db")  # nothing connects yet
    assert pg.url.drivername == "postgresql+psycopg"
    assert make_engine("postgres://u@127.0.0.1:1/db") is pg
    for bad, words in [
        ("not a url", "invalid storage URL"),
        ("mysql://u@h/db", "unsupported storage"),
        ("postgresql+psycopg2://u@h/db", "unsupported PostgreSQL driver"),
        (f"sqlite:///{tmp_path / 'missing' / 'r.db'}", "does not exist"),
    ]:
        with pytest.raises(ValueError, match=words) as info:
            make_engine(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        open_storage(f"sqlite:///{tmp_path / 'nope.db'}", create=False)
    assert not (tmp_path / "nope.db").exists()
    with pytest.raises(ValueError, match="cannot open storage"):
        open_storage("postgresql://u@127.0.0.1:1/db")  # port 1: refused at once
    dispose_engines()


# ----------------------------------------------------------------------------------------- encoding


def test_encode_float_roundtrip() -> None:
    for x, stored in [(1.5, (1.5, None)), (0.0, (0.0, None)), (-2, (-2.0, None))]:
        assert encode_float(x) == stored
        assert decode_float(*stored) == float(x)
    assert encode_float(NAN) == (None, "nan")
    assert encode_float(INF) == (None, "inf")
    assert encode_float(-INF) == (None, "-inf")
    assert encode_float(None) == (None, None)
    assert math.isnan(decode_float(None, "nan"))
    assert decode_float(None, "inf") == INF and decode_float(None, "-inf") == -INF
    assert math.isnan(decode_float(None, None))
    with pytest.raises(ValueError):
        decode_float(None, "bad")
    text_ = encode_float_list([0.5, NAN, INF, -INF])
    assert text_ == '[0.5, "nan", "inf", "-inf"]'
    back = decode_float_list(text_)
    assert back[0] == 0.5 and math.isnan(back[1]) and back[2:] == [INF, -INF]


def test_nonfinite_roundtrip_through_database(engine: Engine) -> None:
    sid = new_study(engine)
    rid = start_run(engine, sid, "trial", 0, 0, "none", None, "cpu")
    with MetricBuffer(engine, rid) as buf:
        buf.add_step(0, {"loss": 1.25, "a": NAN, "b": INF, "c": -INF})
    write_probe(
        engine,
        rid,
        {"step": 0, "grad_ratio": INF, "grad_ratio_ci": [NAN, -INF], "per_batch_ratios": [1.0, NAN, INF]},
    )
    finish_run(engine, rid, "complete", {"loss_slope": NAN, "loss_first": INF, "loss_last": -INF, "wall_s": 2.5})

    run = runs_frame(engine, "s").iloc[0]
    assert math.isnan(run["loss_slope"]) and run["loss_first"] == INF and run["loss_last"] == -INF
    assert run["wall_s"] == 2.5 and math.isnan(run["steps_per_s"])
    assert run["grad_ratio_init"] == INF and math.isnan(run["grad_ratio_init_lo"])  # from the probe
    assert run["grad_ratio_init_hi"] == -INF

    values = step_metrics_frame(engine, "s").set_index("name")["value"]
    assert values["loss"] == 1.25 and math.isnan(values["a"]) and values["b"] == INF and values["c"] == -INF

    records = json_records(runs_frame(engine, "s"))  # strict JSON for --json output
    assert json.loads(json.dumps(records, allow_nan=False))[0]["loss_first"] == "inf"
    assert records[0]["loss_slope"] is None and records[0]["trial_number"] == 0
    assert isinstance(records[0]["started_at"], str)

    probe = probe_frame(engine, "s").iloc[0]
    assert probe["grad_ratio"] == INF and probe["grad_ratio_hi"] == -INF
    assert probe["per_batch_ratios"][0] == 1.0 and math.isnan(probe["per_batch_ratios"][1])

    # The storage itself: NULL plus a flag, never a NaN in a Float column.
    with engine.connect() as conn:
        flags = dict(conn.execute(select(StepMetricModel.name, StepMetricModel.flag)).all())
        assert flags == {"loss": None, "a": "nan", "b": "inf", "c": "-inf"}
        assert conn.execute(select(func.count()).where(StepMetricModel.value.is_(None))).scalar() == 3
        row = conn.execute(select(RunModel.loss_slope, RunModel.nonfinite)).one()
        assert row.loss_slope is None and '"loss_slope": "nan"' in row.nonfinite


# ------------------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("flush_every", [200, 300, 1000])
def test_metric_buffer_one_transaction_per_flush(engine: Engine, flush_every: int) -> None:
    sid = new_study(engine)
    rid = start_run(engine, sid, "trial", 0, 0, "none", None, "cpu")
    commits: list[int] = []
    inserts: list[bool] = []

    def on_commit(_conn: object) -> None:
        commits.append(1)

    def on_execute(*args: object) -> None:
        statement, executemany = args[2], args[5]
        assert isinstance(statement, str)
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(executemany)

    event.listen(engine, "commit", on_commit)
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        with MetricBuffer(engine, rid, flush_every=flush_every) as buf:
            for step in range(1000):
                buf.add_step(step, {f"m{i}": step + i / 10 for i in range(5)})
    finally:
        event.remove(engine, "commit", on_commit)
        event.remove(engine, "before_cursor_execute", on_execute)

    expected = math.ceil(1000 / flush_every)
    assert len(commits) == expected
    assert buf.n_flushes == expected and buf.n_rows == 5000 and len(buf) == 0
    assert inserts and len(inserts) <= 2 * expected  # executemany batches, never one INSERT per row
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(StepMetricModel)).scalar() == 5000
        assert conn.execute(
            select(StepMetricModel.value).where(StepMetricModel.step == 999, StepMetricModel.name == "m3")
        ).scalar() == pytest.approx(999.3)


def test_metric_buffer_rows_tensors_and_exceptions(engine: Engine) -> None:
    import torch

    sid = new_study(engine)
    rid = start_run(engine, sid, "trial", 0, 0, "none", None, "cpu")
    with pytest.raises(RuntimeError, match="boom"), MetricBuffer(engine, rid, flush_every=10) as buf:
        buf.add_rows([(0, "loss", 2.0), {"step": 1, "name": "loss", "value": torch.tensor(1.5)}])
        buf.add_step(2, {"loss": torch.tensor(float("nan"), requires_grad=True) * 1})
        buf.add_step(2, {"loss": torch.tensor(1.0)})  # same (step, name) before a flush: last wins
        raise RuntimeError("boom")
    assert buf.n_flushes == 1  # the steps reached before the failure are kept
    frame = step_metrics_frame(engine, "s", names=["loss"])
    assert frame["step"].tolist() == [0, 1, 2]
    assert frame["value"].tolist() == [2.0, 1.5, 1.0]
    assert MetricBuffer(engine, rid).flush() == 0  # an empty flush opens no transaction


def test_concurrent_writers(engine: Engine) -> None:
    """Several workers writing at once: SQLite WAL + busy timeout must not fail with 'locked'."""
    sid = new_study(engine)
    runs = [start_run(engine, sid, "trial", t, 0, "none", None, "cpu") for t in range(4)]
    errors: list[Exception] = []

    def work(run_id: int) -> None:
        try:
            with MetricBuffer(engine, run_id, flush_every=25) as buf:
                for step in range(500):
                    buf.add_step(step, {"loss": 1.0, "g": 2.0})
            finish_run(engine, run_id, "complete", {"loss_slope": -1.0})
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(StepMetricModel)).scalar() == 4 * 500 * 2
    assert (runs_frame(engine, "s")["status"] == "complete").all()


def test_start_run_resets_unfinished_and_refuses_complete(engine: Engine) -> None:
    sid = new_study(engine)
    rid = start_run(engine, sid, "trial", 3, 7, "tanh-gate", 0.0, "cpu")
    with MetricBuffer(engine, rid) as buf:
        buf.add_step(0, {"loss": 3.0})
    write_probe(engine, rid, {"step": 0, "grad_ratio": 0.5, "per_batch_ratios": [0.5]})
    finish_run(engine, rid, "failed", {"loss_slope": -1.0, "steps": 5}, error="CUDA OOM")
    failed = runs_frame(engine).iloc[0]
    assert failed["status"] == "failed" and failed["error"] == "CUDA OOM" and failed["loss_slope"] == -1.0

    again = start_run(engine, sid, "trial", 3, 7, "tanh-gate", 0.0, "cuda:0")
    assert again == rid
    run = runs_frame(engine).iloc[0]
    assert run["status"] == "running" and run["device"] == "cuda:0" and pd.isna(run["error"])
    assert math.isnan(run["loss_slope"]) and math.isnan(run["grad_ratio_init"]) and pd.isna(run["steps"])
    assert step_metrics_frame(engine).empty and probe_frame(engine).empty
    assert len(runs_frame(engine)) == 1

    finish_run(engine, rid, "complete", {"loss_slope": -2.0})
    with pytest.raises(ValueError, match="already complete"):
        start_run(engine, sid, "trial", 3, 7, "tanh-gate", 0.0, "cpu")
    with pytest.raises(ValueError, match="already complete"):
        finish_run(engine, rid, "failed", None)

    # Baselines (trial_number NULL) are unique per seed too.
    b = start_run(engine, sid, "baseline", None, 7, "no-branch", None, "cpu")
    assert start_run(engine, sid, "baseline", None, 7, "no-branch", None, "cpu") == b
    assert start_run(engine, sid, "baseline", None, 8, "no-branch", None, "cpu") != b
    duplicate = {
        "study_id": sid,
        "role": "baseline",
        "trial_number": None,
        "trial_key": -1,
        "seed": 7,
        "fix": "no-branch",
        "status": "running",
        "started_at": run["started_at"],
    }
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(RunModel.__table__), duplicate)
    for role, trial in [("baseline", 1), ("trial", None), ("other", 1)]:
        with pytest.raises(ValueError):
            start_run(engine, sid, role, trial, 0, "none", None, "cpu")
    with pytest.raises(LookupError):
        start_run(engine, 999, "trial", 0, 0, "none", None, "cpu")


def test_register_study_idempotent_and_hash_conflict(engine: Engine) -> None:
    sid = new_study(engine, "quick", "a" * 64)
    assert new_study(engine, "quick", "a" * 64) == sid
    with pytest.raises(ValueError, match=r"study 'quick' already exists with a different spec .*--name"):
        new_study(engine, "quick", "b" * 64)
    assert new_study(engine, "other", "b" * 64) != sid
    studies = list_studies(engine)
    assert studies["name"].tolist() == ["quick", "other"]
    assert studies["spec_hash"].tolist() == ["a" * 64, "b" * 64]


def test_write_result_from_result_objects(engine: Engine) -> None:
    sid = new_study(engine)
    probe = ProbeResult(
        fix="norm-match", scale=0.5, step=0, grad_norm_without=1.4675, grad_norm_with=0.55, grad_ratio=0.3748,
        grad_ratio_ci=(0.3, 0.45), grad_ratio_layers=0.36, grad_share=0.2, grad_norm_branch=3.0,
        norm_inflation=1.7, loss_with=3.16, loss_without=3.12, feature_cosine=0.9,
        per_batch_ratios=[0.3, 0.37, 0.45], threshold=0.8, verdict="CAUTION",
    )  # fmt: skip
    result = TrainResult(
        fix="norm-match", scale=0.5, seed=0, steps=3, device="cpu", loss_first=3.16, loss_last=3.13,
        loss_slope=-1.5, grad_ratio_init=0.3748, grad_ratio_final=0.9, grad_ratio_mean=0.6, wall_s=1.0,
        steps_per_s=3.0, peak_mem_mb=100.0, metrics={"loss": [3.16, 3.15, 3.13]}, probes=[probe],
    )  # fmt: skip
    rid = start_run(engine, sid, "trial", 0, 0, "norm-match", 0.5, "cpu")
    write_result(engine, rid, result)
    run = runs_frame(engine).iloc[0]
    assert run["status"] == "complete" and run["steps"] == 3 and run["loss_slope"] == -1.5
    assert (run["grad_ratio_init_lo"], run["grad_ratio_init_hi"]) == (0.3, 0.45)
    assert run["grad_share_init"] == 0.2 and run["norm_inflation_init"] == 1.7
    assert (run["loss0_with"], run["loss0_without"], run["feature_cosine_init"]) == (3.16, 3.12, 0.9)
    assert run["verdict"] == "CAUTION"
    assert step_metrics_frame(engine)["value"].tolist() == [3.16, 3.15, 3.13]
    assert probe_frame(engine).iloc[0]["per_batch_ratios"] == [0.3, 0.37, 0.45]


# ------------------------------------------------------------------------------------------- queries


def _run(engine: Engine, sid: int, role: str, trial: int | None, seed: int, fix: str, scale: float | None,
         status: str, probe_ratios: list[float] | None = None, **summary: float) -> int:  # fmt: skip
    rid = start_run(engine, sid, role, trial, seed, fix, scale, "cpu")
    if probe_ratios is not None:
        lo, hi = min(probe_ratios), max(probe_ratios)
        first = {"step": 0, "grad_ratio": summary["grad_ratio_init"], "grad_ratio_ci": [lo, hi]}
        write_probe(engine, rid, {**first, "per_batch_ratios": probe_ratios, "threshold": 0.8})
        write_probe(engine, rid, {"step": 50, "grad_ratio": 5.0, "per_batch_ratios": [5.0, 6.0], "threshold": 0.8})
    if status != "running":
        finish_run(engine, rid, status, summary)
    return rid


@pytest.fixture
def populated(engine: Engine) -> Engine:
    """Hand-built study 'abl' (plus an older study 'old'), numbers chosen to check every aggregate."""
    old = new_study(engine, "old")
    _run(engine, old, "trial", 0, 0, "none", None, "complete", loss_slope=99.0)
    sid = new_study(engine, "abl", "c" * 64)
    _run(engine, sid, "baseline", None, 0, "no-branch", None, "complete", loss_slope=-10.0)
    _run(engine, sid, "baseline", None, 1, "no-branch", None, "complete", loss_slope=-12.0)
    _run(engine, sid, "baseline", None, 2, "no-branch", None, "failed", loss_slope=-50.0)
    common = {"grad_ratio_final": 0.0, "loss_first": 3.0, "loss_last": 2.0}
    _run(engine, sid, "trial", 0, 0, "fixed-scale", 0.1, "complete", [0.3, 0.4, 0.5], loss_slope=-5.0,
         grad_ratio_init=0.4, grad_ratio_mean=0.5, wall_s=10.0, **common)  # fmt: skip
    _run(engine, sid, "trial", 0, 1, "fixed-scale", 0.1, "complete", [0.5, 0.6, 0.7], loss_slope=-7.0,
         grad_ratio_init=0.6, grad_ratio_mean=0.7, wall_s=12.0, grad_ratio_final=1.0, loss_first=3.2,
         loss_last=2.4)  # fmt: skip
    _run(engine, sid, "trial", 1, 0, "fixed-scale", 1.0, "complete", [0.85, 0.9, 0.95], loss_slope=-9.0,
         grad_ratio_init=0.9, grad_ratio_mean=1.0, wall_s=1.0, **common)  # fmt: skip
    _run(engine, sid, "trial", 1, 1, "fixed-scale", 1.0, "complete", [1.0, 1.1, 1.2], loss_slope=-11.0,
         grad_ratio_init=1.1, grad_ratio_mean=1.0, wall_s=1.0, **common)  # fmt: skip
    _run(engine, sid, "trial", 2, 0, "zero-init", None, "complete", [0.0, 0.1], loss_slope=-8.0,
         grad_ratio_init=0.05, grad_ratio_mean=0.5, wall_s=4.0, **common)  # fmt: skip
    _run(engine, sid, "trial", 2, 1, "zero-init", None, "failed", loss_slope=-100.0, wall_s=2.0)
    _run(engine, sid, "trial", 3, 0, "norm-match", 0.5, "running")
    _run(engine, sid, "trial", 4, 0, "layerscale", 1e-4, "complete", loss_slope=-1.0, grad_ratio_init=0.8)
    _run(engine, sid, "trial", 4, 1, "layerscale", 1e-4, "pruned", loss_slope=-1.0)
    return engine


def test_runs_frame_loss_slope_rel(populated: Engine) -> None:
    runs = runs_frame(populated)  # None = the latest study
    assert set(runs["study"]) == {"abl"}
    assert len(runs) == 12
    rel = {(r.role, r.trial_number if r.role == "trial" else -1, r.seed): r.loss_slope_rel for r in runs.itertuples()}
    assert rel[("trial", 0, 0)] == 5.0 and rel[("trial", 0, 1)] == 5.0
    assert rel[("trial", 1, 0)] == 1.0 and rel[("trial", 1, 1)] == 1.0
    assert rel[("trial", 2, 0)] == 2.0
    assert rel[("baseline", -1, 0)] == 0.0
    assert math.isnan(rel[("baseline", -1, 2)])  # seed 2 has no complete baseline
    with populated.connect() as conn:
        sid = conn.execute(select(StudyModel.id).where(StudyModel.name == "abl")).scalar_one()
    assert baseline_slopes(populated, sid) == {0: -10.0, 1: -12.0}  # the failed seed-2 baseline is left out


def test_trials_frame_aggregates(populated: Engine) -> None:
    trials = trials_frame(populated, "abl").set_index("trial_number")
    assert trials.index.tolist() == [0, 1, 2, 3, 4]
    assert trials["status"].tolist() == ["complete", "complete", "failed", "running", "pruned"]
    assert trials["n_seeds"].tolist() == [2, 2, 2, 1, 2]
    assert trials["n_complete"].tolist() == [2, 2, 1, 0, 1]

    t0 = trials.loc[0]
    assert (t0["fix"], t0["scale"]) == ("fixed-scale", 0.1)
    assert t0["loss_slope"] == -6.0 and t0["loss_slope_std"] == pytest.approx(math.sqrt(2))
    assert t0["loss_slope_rel"] == 5.0
    assert t0["grad_ratio_init"] == pytest.approx(0.5) and t0["grad_ratio_init_std"] == pytest.approx(math.sqrt(0.02))
    pooled = bootstrap_ci(sorted([0.3, 0.4, 0.5, 0.5, 0.6, 0.7]), stat="median")  # step-0 probes only
    assert (t0["grad_ratio_init_lo"], t0["grad_ratio_init_hi"]) == pytest.approx(pooled)
    assert t0["grad_ratio_mean"] == pytest.approx(0.6) and t0["grad_ratio_mean_std"] == pytest.approx(math.sqrt(0.02))
    assert t0["grad_ratio_final"] == 0.5 and t0["loss_first"] == pytest.approx(3.1)
    assert t0["loss_last"] == pytest.approx(2.2) and t0["wall_s"] == 22.0
    assert t0["threshold"] == 0.8 and t0["verdict"] == "CAUTION"

    t1 = trials.loc[1]
    assert t1["loss_slope"] == -10.0 and t1["grad_ratio_init"] == pytest.approx(1.0) and t1["verdict"] == "OK"
    assert t1["grad_ratio_mean_std"] == 0.0

    t2 = trials.loc[2]  # one complete seed: that run's own CI; the failed seed is left out of the means
    assert t2["loss_slope"] == -8.0 and math.isnan(t2["loss_slope_std"])
    assert (t2["grad_ratio_init_lo"], t2["grad_ratio_init_hi"]) == (0.0, 0.1)
    assert t2["wall_s"] == 6.0 and t2["verdict"] == "CAUTION"

    t3 = trials.loc[3]
    assert math.isnan(t3["loss_slope"]) and math.isnan(t3["grad_ratio_init_lo"]) and pd.isna(t3["verdict"])
    assert math.isnan(t3["wall_s"])


def test_group_by_fix(populated: Engine) -> None:
    groups = group_by_fix(populated, "abl").set_index("fix")
    assert groups.index.tolist() == [
        "no-branch",
        "fixed-scale",
        "layerscale",
        "zero-init",
    ]  # no complete norm-match

    base = groups.loc["no-branch"]
    assert (base["n_runs"], base["n_trials"]) == (2, 0) and base["loss_slope_mean"] == -11.0
    assert (base["loss_slope_lo"], base["loss_slope_hi"]) == pytest.approx(bootstrap_ci([-12.0, -10.0], "mean"))
    assert math.isnan(base["best_scale"]) and pd.isna(base["best_trial"])

    fs = groups.loc["fixed-scale"]
    assert (fs["n_runs"], fs["n_trials"]) == (4, 2)
    assert fs["loss_slope_mean"] == -8.0
    assert (fs["loss_slope_lo"], fs["loss_slope_hi"]) == pytest.approx(bootstrap_ci([-11.0, -9.0, -7.0, -5.0], "mean"))
    assert fs["grad_ratio_init_mean"] == pytest.approx(0.75)
    ci = bootstrap_ci(sorted([0.4, 0.6, 0.9, 1.1]), "mean")
    assert (fs["grad_ratio_init_lo"], fs["grad_ratio_init_hi"]) == pytest.approx(ci)
    assert fs["grad_ratio_mean_mean"] == pytest.approx(0.8)
    assert fs["loss_slope_rel_mean"] == 3.0
    assert (fs["best_scale"], fs["best_trial"]) == (1.0, 1)  # trial 1's mean slope -10 beats trial 0's -6

    zi = groups.loc["zero-init"]
    assert (zi["n_runs"], zi["n_trials"], zi["loss_slope_mean"]) == (1, 1, -8.0) and math.isnan(zi["best_scale"])
    assert groups.loc["layerscale", "n_runs"] == 1


def test_list_studies_and_lookup_errors(populated: Engine) -> None:
    studies = list_studies(populated).set_index("name")
    assert studies.loc["abl", "n_trials"] == 2  # only trials whose runs are all complete
    assert studies.loc["abl", "n_runs"] == 12
    assert studies.loc["old", "n_trials"] == 1 and studies.loc["abl", "optuna_study_name"] == "optuna-abl"
    assert runs_frame(populated, "old")["loss_slope"].tolist() == [99.0]
    with pytest.raises(LookupError, match=r"no study named 'nope' in .*; studies: old, abl$"):
        trials_frame(populated, "nope")


def test_step_metrics_and_probe_frames(populated: Engine) -> None:
    rid = int(runs_frame(populated, "abl").query("trial_number == 0 and seed == 1")["run_id"].iloc[0])
    with MetricBuffer(populated, rid) as buf:
        for step in range(3):
            buf.add_step(step, {"loss": 3.0 - step, "grad_norm": 1.0})
    frame = step_metrics_frame(populated, "abl", names=["loss"])
    assert frame.columns.tolist() == [
        "run_id",
        "role",
        "trial_number",
        "seed",
        "fix",
        "scale",
        "step",
        "name",
        "value",
    ]
    assert frame["value"].tolist() == [3.0, 2.0, 1.0] and set(frame["name"]) == {"loss"}
    assert (frame["fix"].iloc[0], frame["seed"].iloc[0], frame["trial_number"].iloc[0]) == (
        "fixed-scale",
        1,
        0,
    )
    assert len(step_metrics_frame(populated, "abl")) == 6
    probes = probe_frame(populated, "abl")
    assert len(probes) == 10 and set(probes["step"]) == {0, 50}
    assert probes.query("run_id == @rid and step == 0")["per_batch_ratios"].iloc[0] == [0.5, 0.6, 0.7]


def test_empty_study_frames(engine: Engine) -> None:
    with pytest.raises(LookupError, match="no studies"):
        runs_frame(engine)
    new_study(engine, "empty")
    assert runs_frame(engine).empty and trials_frame(engine).empty and group_by_fix(engine).empty
    assert step_metrics_frame(engine).empty and probe_frame(engine).empty
    assert list_studies(engine)["n_runs"].tolist() == [0]


# ------------------------------------------------------------------------------------------- run_sql


NOT_QUERIES = [
    "INSERT INTO ablate_studies (name) VALUES ('x')",
    "DELETE FROM ablate_runs",
    "delete from ablate_runs where 1 = 1",
    "UPDATE ablate_runs SET seed = 1",
    "DROP TABLE ablate_runs",
    "SELECT 1; SELECT 2",
    "SELECT 1; DROP TABLE ablate_runs",
    "PRAGMA query_only = OFF",
    "WITH d AS (DELETE FROM ablate_runs RETURNING id) SELECT * FROM d",
    "SELECT * INTO copy_of_runs FROM ablate_runs",
    "EXPLAIN ANALYZE DELETE FROM ablate_runs",
    "ATTACH DATABASE 'x.db' AS x",
    "CREATE TABLE t (x int)",
    "",
    "  ;  ",
    "SELECT 'unterminated",
    "SELECT 1 /* unterminated",
]


def test_run_sql_rejects_non_queries(populated: Engine) -> None:
    for sql in NOT_QUERIES:
        with pytest.raises(ValueError):
            run_sql(populated, sql)
            pytest.fail(f"accepted {sql!r}")
    assert len(runs_frame(populated, "abl")) == 12
    assert set(inspect(populated).get_table_names()) == set(TABLE_NAMES)


def test_run_sql_reads(populated: Engine) -> None:
    df = run_sql(populated, "SELECT name FROM ablate_studies ORDER BY id;")
    assert df["name"].tolist() == ["old", "abl"]
    assert run_sql(populated, "SELECT 'a;b -- not a comment' AS s")["s"].tolist() == ["a;b -- not a comment"]
    n = run_sql(populated, "-- count\nWITH r AS (SELECT * FROM ablate_runs) SELECT count(*) AS n FROM r; -- end")
    assert n["n"].tolist() == [13]
    assert not run_sql(populated, "EXPLAIN SELECT * FROM ablate_runs").empty
    with pytest.raises(ValueError, match="SQL error"):
        run_sql(populated, "SELECT * FROM no_such_table")


def test_run_sql_is_read_only_in_the_database(populated: Engine) -> None:
    """Past the text check, the database itself refuses writes, and the connection is reset after."""
    with pytest.raises(ValueError, match="(?i)read-?only"):
        _execute_read_only(populated, "DELETE FROM ablate_step_metrics")
    with pytest.raises(ValueError, match="(?i)read-?only"):
        _execute_read_only(populated, "UPDATE ablate_studies SET name = 'x'")
    assert list_studies(populated)["name"].tolist() == ["old", "abl"]
    new_study(populated, "after")  # pooled connections can write again
    with populated.connect() as conn:
        if populated.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 0
        else:
            assert conn.execute(text("SHOW transaction_read_only")).scalar() == "off"


def test_probe_point_unique_per_step(engine: Engine) -> None:
    sid = new_study(engine)
    rid = start_run(engine, sid, "trial", 0, 0, "none", None, "cpu")
    write_probe(engine, rid, {"step": 0, "grad_ratio": 1.0})
    with pytest.raises(IntegrityError):
        write_probe(engine, rid, {"step": 0, "grad_ratio": 2.0})
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ProbePointModel)).scalar() == 1


def test_run_sql_keeps_a_trailing_string_literal(tmp_path):
    from ablate.store import open_storage, run_sql

    engine = open_storage(f"sqlite:///{tmp_path / 'lit.db'}")
    frame = run_sql(engine, "select 'trial' as role")
    assert frame.to_dict("records") == [{"role": "trial"}]


def test_start_run_lease_keeps_a_second_worker_off(tmp_path):
    from ablate.store import RunBusy, open_storage, register_study, start_run

    engine = open_storage(f"sqlite:///{tmp_path / 'lease.db'}")
    sid = register_study(engine, "s", "s", "x", "h" * 64, [{"metric": "loss_slope", "direction": "minimize"}])
    first = start_run(engine, sid, "baseline", None, 0, "no-branch", None, "cpu", lease_s=3600)
    with pytest.raises(RunBusy):
        start_run(engine, sid, "baseline", None, 0, "no-branch", None, "cpu", lease_s=3600)
    # An expired lease (or no lease) takes the row over, as after a killed worker.
    assert start_run(engine, sid, "baseline", None, 0, "no-branch", None, "cpu", lease_s=0) == first
