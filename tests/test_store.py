"""The SQL store on real databases: SQLite (a temp file) and PostgreSQL (when ABLATE_TEST_PG_URL is set)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, event, func, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

from ablate.engine.result import GroupProbe, ProbeResult, TrainResult
from ablate.objectives import OBJECTIVES as OBJECTIVE_TABLE
from ablate.objectives import trial_interval, trial_value
from ablate.stats import SCOPE_SEEDS, SCOPE_WITHIN, dilution, mean_ci, ratio_ci
from ablate.store import (
    DEFAULT_STORAGE,
    TABLE_NAMES,
    MetricBuffer,
    ProbePointModel,
    RunBusy,
    RunModel,
    StepMetricModel,
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
    reference_run,
    reference_status,
    register_study,
    run_sql,
    runs_frame,
    start_run,
    step_metrics_frame,
    storage_url,
    study_settings,
    trials_frame,
    write_probe,
    write_result,
)
from ablate.store.encode import decode_float_lists, encode_float_lists
from ablate.store.query import METRIC_COLUMNS
from ablate.store.readonly_sql import execute_read_only

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")
OBJECTIVES = [{"metric": "loss_slope", "direction": "minimize"}]
T975_DF2 = 4.302652729911275  # Student t 97.5% quantile, 2 degrees of freedom (tables), for a hand check


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


def new_study(
    engine: Engine,
    name: str = "s",
    spec_hash: str = "a" * 64,
    spec_text: str = "[study]\n",
    objectives: Sequence[Mapping[str, str]] = OBJECTIVES,
    optuna_name: str | None = None,
) -> int:
    optuna_name = optuna_name or f"optuna-{name}"
    return register_study(engine, name, optuna_name, spec_text, spec_hash, objectives, {"host": "t"})


def objectives_of(*names: str) -> list[dict[str, str]]:
    return [{"metric": n, "direction": OBJECTIVE_TABLE[n].direction} for n in names]


def same(a: float, b: float) -> bool:
    """Equality that treats NaN as equal to NaN (and inf to inf)."""
    return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def same_list(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------- engine, schema


def test_schema_creates_only_ablate_tables(engine: Engine) -> None:
    names = set(inspect(engine).get_table_names())
    assert names == {
        "ablate_studies",
        "ablate_runs",
        "ablate_step_metrics",
        "ablate_probe_points",
        "ablate_class_metrics",
        "ablate_run_groups",
        "ablate_probe_groups",
        "ablate_schema",
        "ablate_blobs",
    }
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


def test_importing_store_does_not_import_optuna_or_torch(tmp_path: Path) -> None:
    code = "import sys, ablate.store; print('optuna' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    # The trial and fix tables need no torch either (intervals come from ablate.stats, not a bootstrap).
    code = (
        "import sys, ablate.store as s\n"
        f"e = s.open_storage('sqlite:///{tmp_path / 'q.db'}')\n"
        "sid = s.register_study(e, 'q', 'q', '[study]\\n', 'a' * 64, [{'metric': 'adapter_gain', 'direction': 'x'}])\n"
        "r = s.start_run(e, sid, 'trial', 0, 0, 'zero-init', None, 'cpu')\n"
        "s.finish_run(e, r, 'complete', {'adapter_gain': 0.5})\n"
        "t, g = s.trials_frame(e), s.group_by_fix(e)\n"
        "print(t['adapter_gain'].tolist(), g['best_trial'].tolist(), 'optuna' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[0.5]", "[0]", "False", "False"]


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


def test_encode_float_lists_per_group() -> None:
    text_ = encode_float_lists({"layers": [0.5, NAN], "proj": [INF, -INF, 2.0], "all": []})
    assert json.loads(text_) == {"layers": [0.5, "nan"], "proj": ["inf", "-inf", 2.0], "all": []}
    back = decode_float_lists(text_)
    assert list(back) == ["layers", "proj", "all"]
    assert same_list(back["layers"], [0.5, NAN]) and back["proj"] == [INF, -INF, 2.0] and back["all"] == []
    # A bare list (what older databases hold) is one unnamed group; NULL is no groups.
    assert encode_float_lists([1.0, NAN]) == '[1.0, "nan"]'
    legacy = decode_float_lists('[0.25, "inf"]')
    assert legacy == {"": [0.25, INF]}
    assert encode_float_lists(None) is None and decode_float_lists(None) == {} and decode_float_lists("") == {}


def test_json_records_of_probe_frame_is_strict_json(tmp_path: Path) -> None:
    engine = open_storage(f"sqlite:///{tmp_path / 'r.db'}")
    rid = start_run(engine, new_study(engine), "trial", 0, 0, "none", None, "cpu")
    write_probe(engine, rid, {"step": 0, "grad_ratio": 1.0, "per_batch_ratios": {"layers": [1.0, NAN, INF]}})
    records = json_records(probe_frame(engine))
    dispose_engines()
    assert json.loads(json.dumps(records, allow_nan=False))[0]["per_batch_ratios"] == {"layers": [1.0, None, "inf"]}


def test_nonfinite_roundtrip_through_database(engine: Engine) -> None:
    sid = new_study(engine)
    rid = start_run(engine, sid, "trial", 0, 0, "none", None, "cpu")
    with MetricBuffer(engine, rid) as buf:
        buf.add_step(0, {"loss": 1.25, "a": NAN, "b": INF, "c": -INF})
    write_probe(
        engine,
        rid,
        {
            "step": 0,
            "group": "layers",
            "grad_ratio": INF,
            "grad_ratio_ci": [NAN, -INF],
            "grad_ratio_proj": NAN,
            "per_batch_ratios": {"layers": [1.0, NAN, INF], "proj": [-INF]},
        },
    )
    summary = {
        "loss_slope": NAN,
        "loss_first": INF,
        "loss_last": -INF,
        "loss_slope_rel": -INF,
        "adapter_gain": NAN,
        "train_grad_ratio_layers": INF,
        "wall_s": 2.5,
        "adapter_gain_batches": [0.5, NAN, -INF],
    }
    finish_run(engine, rid, "complete", summary)

    run = runs_frame(engine, "s").iloc[0]
    assert math.isnan(run["loss_slope"]) and run["loss_first"] == INF and run["loss_last"] == -INF
    assert run["loss_slope_rel"] == -INF and math.isnan(run["adapter_gain"]) and run["train_grad_ratio_layers"] == INF
    assert run["wall_s"] == 2.5 and math.isnan(run["steps_per_s"])
    assert run["grad_ratio_init"] == INF and math.isnan(run["grad_ratio_init_lo"])  # from the probe
    assert run["grad_ratio_init_hi"] == -INF

    values = step_metrics_frame(engine, "s").set_index("name")["value"]
    assert values["loss"] == 1.25 and math.isnan(values["a"]) and values["b"] == INF and values["c"] == -INF

    records = json_records(runs_frame(engine, "s"))  # strict JSON for --json output
    assert json.loads(json.dumps(records, allow_nan=False))[0]["loss_first"] == "inf"
    assert records[0]["loss_slope"] is None and records[0]["trial_number"] == 0
    assert records[0]["loss_slope_rel"] == "-inf" and isinstance(records[0]["started_at"], str)

    probe = probe_frame(engine, "s").iloc[0]
    assert probe["grad_ratio"] == INF and probe["grad_ratio_hi"] == -INF and math.isnan(probe["grad_ratio_lo"])
    assert math.isnan(probe["grad_ratio_proj"]) and probe["judged_group"] == "layers"
    ratios = probe["per_batch_ratios"]
    assert list(ratios) == ["layers", "proj"] and same_list(ratios["layers"], [1.0, NAN, INF])
    assert ratios["proj"] == [-INF]
    assert json_records(probe_frame(engine, "s"))[0]["grad_ratio"] == "inf"

    # The storage itself: NULL plus a flag, never a NaN in a Float column.
    with engine.connect() as conn:
        flags = dict(conn.execute(select(StepMetricModel.name, StepMetricModel.flag)).all())
        assert flags == {"loss": None, "a": "nan", "b": "inf", "c": "-inf"}
        assert conn.execute(select(func.count()).where(StepMetricModel.value.is_(None))).scalar() == 3
        row = conn.execute(select(RunModel.loss_slope, RunModel.nonfinite, RunModel.adapter_gain_batches)).one()
        assert row.loss_slope is None and json.loads(row.nonfinite)["loss_slope"] == "nan"
        assert json.loads(row.nonfinite)["loss_slope_rel"] == "-inf"
        assert json.loads(row.adapter_gain_batches) == [0.5, "nan", "-inf"]
        stored = conn.execute(select(ProbePointModel.per_batch_ratios)).scalar_one()
        assert json.loads(stored) == {"layers": [1.0, "nan", "inf"], "proj": ["-inf"]}


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
    write_probe(engine, rid, {"step": 0, "group": "layers", "grad_ratio": 0.5, "per_batch_ratios": {"layers": [0.5]}})
    summary = {"loss_slope": -1.0, "steps": 5, "group": "proj", "frozen": "layers", "adapter_gain_batches": [0.1]}
    finish_run(engine, rid, "failed", summary, error="CUDA OOM")
    failed = runs_frame(engine).iloc[0]
    assert failed["status"] == "failed" and failed["error"] == "CUDA OOM" and failed["loss_slope"] == -1.0
    assert (failed["judged_group"], failed["frozen"], failed["grad_ratio_init"]) == ("proj", "layers", 0.5)

    again = start_run(engine, sid, "trial", 3, 7, "tanh-gate", 0.0, "cuda:0")
    assert again == rid
    run = runs_frame(engine).iloc[0]
    assert run["status"] == "running" and run["device"] == "cuda:0" and pd.isna(run["error"])
    assert math.isnan(run["loss_slope"]) and math.isnan(run["grad_ratio_init"]) and pd.isna(run["steps"])
    assert pd.isna(run["judged_group"]) and pd.isna(run["frozen"])
    assert step_metrics_frame(engine).empty and probe_frame(engine).empty
    assert len(runs_frame(engine)) == 1
    with engine.connect() as conn:
        assert conn.execute(select(RunModel.adapter_gain_batches)).scalar_one() is None

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
    for role, trial in [("baseline", 1), ("control", 0), ("trial", None), ("trial", -1), ("other", 1)]:
        with pytest.raises(ValueError):
            start_run(engine, sid, role, trial, 0, "none", None, "cpu")
    with pytest.raises(LookupError):
        start_run(engine, 999, "trial", 0, 0, "none", None, "cpu")


def test_control_and_baseline_runs_coexist_per_seed(engine: Engine) -> None:
    sid = new_study(engine)
    trial = start_run(engine, sid, "trial", 0, 0, "zero-init", None, "cpu")
    base = start_run(engine, sid, "baseline", None, 0, "no-branch", None, "cpu")
    ctrl = start_run(engine, sid, "control", None, 0, "no-branch", None, "cpu")
    assert len({trial, base, ctrl}) == 3
    with engine.connect() as conn:
        keys = conn.execute(select(RunModel.role, RunModel.trial_number, RunModel.trial_key).order_by(RunModel.id))
        assert [tuple(k) for k in keys] == [("trial", 0, 0), ("baseline", None, -1), ("control", None, -2)]

    # A second control for the same seed: reused while unfinished (reset), refused once complete.
    with MetricBuffer(engine, ctrl) as buf:
        buf.add_step(0, {"loss": 9.0})
    assert start_run(engine, sid, "control", None, 0, "no-branch", None, "cuda:1") == ctrl
    assert step_metrics_frame(engine).empty
    assert start_run(engine, sid, "control", None, 1, "no-branch", None, "cpu") not in {ctrl, base}
    with pytest.raises(RunBusy):  # a fresh lease keeps a second worker off, as for baselines
        start_run(engine, sid, "control", None, 0, "no-branch", None, "cpu", lease_s=3600)
    row = {"study_id": sid, "trial_number": None, "seed": 0, "fix": "no-branch", "status": "running"}
    row["started_at"] = runs_frame(engine)["started_at"].iloc[0]
    for role, key in [("control", -2), ("control", -1), ("baseline", -2), ("control", 0)]:
        # a duplicate of the seed's control, or a role whose trial_key does not match it
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert(RunModel.__table__), {**row, "role": role, "trial_key": key})

    finish_run(engine, ctrl, "complete", {"loss_slope": -0.5, "frozen": "layers", "group": "layers"})
    with pytest.raises(ValueError, match=r"control run \(seed 0\) .* already complete"):
        start_run(engine, sid, "control", None, 0, "no-branch", None, "cpu")
    assert start_run(engine, sid, "baseline", None, 0, "no-branch", None, "cpu") == base  # still its own row

    runs = runs_frame(engine)
    assert runs["role"].tolist() == ["trial", "control", "control", "baseline"]  # trials, then references
    assert runs["seed"].tolist() == [0, 0, 1, 0]
    assert runs["trial_number"].isna().tolist() == [False, True, True, True]
    done = runs.set_index("run_id").loc[ctrl]
    assert (done["status"], done["loss_slope"], done["frozen"], done["device"]) == (
        "complete",
        -0.5,
        "layers",
        "cuda:1",
    )


def test_reference_run_and_status(engine: Engine) -> None:
    sid = new_study(engine)
    assert reference_run(engine, sid, 0) is None and reference_status(engine, sid, 0) is None
    assert reference_status(engine, sid, 0, "control") is None
    base = start_run(engine, sid, "baseline", None, 0, "no-branch", None, "cpu")
    with MetricBuffer(engine, base) as buf:  # steps written out of order: read back by step
        buf.add_step(2, {"loss": 1.0, "grad_norm_layers": 0.2})
        buf.add_step(0, {"loss": 3.0, "grad_norm_layers": INF})
        buf.add_step(1, {"loss": 2.0, "grad_norm_layers": 0.4})
    assert reference_status(engine, sid, 0) == "running" and reference_run(engine, sid, 0) is None

    finish_run(engine, base, "failed", {"loss_slope": -7.0}, error="boom")
    assert reference_status(engine, sid, 0) == "failed" and reference_run(engine, sid, 0) is None
    assert start_run(engine, sid, "baseline", None, 0, "no-branch", None, "cpu") == base
    with MetricBuffer(engine, base) as buf:
        for step, (loss, g) in enumerate([(3.0, INF), (2.0, 0.4), (1.0, 0.2)][::-1]):
            buf.add_step(2 - step, {"loss": loss, "grad_norm_layers": g})
    finish_run(engine, base, "complete", {"loss_slope": -2.5, "adapter_gain_batches": [0.1, NAN, 0.3]})
    ref = reference_run(engine, sid, 0)
    assert ref is not None and set(ref) == {"run_id", "loss_slope", "metrics", "gain_batches"}
    assert (ref["run_id"], ref["loss_slope"]) == (base, -2.5)
    assert ref["metrics"] == {"grad_norm_layers": [INF, 0.4, 0.2], "loss": [3.0, 2.0, 1.0]}
    assert same_list(ref["gain_batches"], [0.1, NAN, 0.3])
    assert reference_status(engine, sid, 0) == "complete"

    # The control of the same seed is a separate reference; the baseline's numbers never leak into it.
    assert reference_run(engine, sid, 0, role="control") is None
    ctrl = start_run(engine, sid, "control", None, 0, "no-branch", None, "cpu")
    assert reference_status(engine, sid, 0, "control") == "running"
    with MetricBuffer(engine, ctrl) as buf:
        buf.add_step(0, {"loss": 4.0})
        buf.add_step(1, {"loss": 3.5})
    finish_run(engine, ctrl, "complete", {"loss_slope": NAN})
    cref = reference_run(engine, sid, 0, role="control")
    assert cref is not None and cref["run_id"] == ctrl and math.isnan(cref["loss_slope"])
    assert cref["metrics"] == {"loss": [4.0, 3.5]} and cref["gain_batches"] == []
    assert reference_run(engine, sid, 1) is None  # other seeds: nothing
    other = new_study(engine, "other", "b" * 64)
    assert reference_run(engine, other, 0) is None and reference_status(engine, other, 0) is None


def test_register_study_idempotent_and_hash_conflict(engine: Engine) -> None:
    sid = new_study(engine, "quick", "a" * 64)
    assert new_study(engine, "quick", "a" * 64) == sid
    with pytest.raises(ValueError, match=r"study 'quick' already exists with a different spec: .*--name"):
        new_study(engine, "quick", "b" * 64)
    assert new_study(engine, "other", "b" * 64) != sid
    studies = list_studies(engine)
    assert studies["name"].tolist() == ["quick", "other"]
    assert studies["spec_hash"].tolist() == ["a" * 64, "b" * 64]


def _probe_result(step: int = 0, scale: float = 0.5) -> ProbeResult:
    groups = {
        "layers": GroupProbe(0.36, 0.3, 0.45, 0.2, 0.55, 1.5, [0.3, 0.37, 0.45]),
        "proj": GroupProbe(0.9, 0.85, 0.95, 0.6, 2.0, 2.2, [0.85, 0.9, 0.95]),
        "all": GroupProbe(0.8, 0.75, 0.85, 0.5, 2.1, 2.6, [0.75, 0.8, NAN]),
    }
    return ProbeResult(
        fix="norm-match", scale=scale, step=step, group="layers", grad_ratio=0.36 + step / 100,
        grad_ratio_ci=(0.3, 0.45), groups=groups, grad_norm_branch=3.0, norm_inflation=1.7, loss_with=3.16,
        loss_without=3.12, feature_cosine=0.9, threshold=0.8, verdict="CAUTION",
    )  # fmt: skip


def _train_result(probes: list[ProbeResult], frozen: tuple[str, ...] = ()) -> TrainResult:
    return TrainResult(
        fix="norm-match", scale=0.5, seed=0, steps=3, device="cpu", group="layers", frozen=frozen,
        loss_first=3.16, loss_last=3.13, loss_slope=-1.5, grad_ratio_init=0.36, grad_ratio_final=0.86,
        grad_ratio_mean=0.6, adapter_gain=0.05, adapter_gain_lo=0.01, adapter_gain_hi=0.09,
        adapter_gain_batches=[0.01, 0.05, 0.09], wall_s=1.0, steps_per_s=3.0, peak_mem_mb=100.0,
        metrics={"loss": [3.16, 3.15, 3.13]}, probes=probes,
    )  # fmt: skip


def test_write_result_from_result_objects(engine: Engine) -> None:
    sid = new_study(engine)
    result = _train_result([_probe_result(0), _probe_result(50)])
    rid = start_run(engine, sid, "trial", 0, 0, "norm-match", 0.5, "cpu")
    write_result(engine, rid, result)
    run = runs_frame(engine).iloc[0]
    assert run["status"] == "complete" and run["steps"] == 3 and run["loss_slope"] == -1.5
    assert run["judged_group"] == "layers" and pd.isna(run["frozen"])  # nothing frozen: NULL, not ""
    assert (run["grad_ratio_init"], run["grad_ratio_init_lo"], run["grad_ratio_init_hi"]) == (0.36, 0.3, 0.45)
    assert (run["grad_ratio_init_layers"], run["grad_ratio_init_proj"], run["grad_ratio_init_all"]) == (0.36, 0.9, 0.8)
    assert (run["grad_share_init_layers"], run["grad_share_init_proj"], run["grad_share_init_all"]) == (0.2, 0.6, 0.5)
    assert run["grad_share_init"] == 0.2 and run["norm_inflation_init"] == 1.7
    assert (run["loss0_with"], run["loss0_without"], run["feature_cosine_init"]) == (3.16, 3.12, 0.9)
    assert (run["adapter_gain"], run["adapter_gain_lo"], run["adapter_gain_hi"]) == (0.05, 0.01, 0.09)
    assert run["grad_ratio_final"] == 0.86 and run["grad_ratio_mean"] == 0.6 and run["verdict"] == "CAUTION"
    assert math.isnan(run["loss_slope_rel"]) and math.isnan(run["train_grad_ratio"])  # no baseline comparison
    assert step_metrics_frame(engine)["value"].tolist() == [3.16, 3.15, 3.13]

    probes = probe_frame(engine)
    assert probes["step"].tolist() == [0, 50] and probes["grad_ratio"].tolist() == [0.36, 0.86]
    p0 = probes.iloc[0]
    assert p0["judged_group"] == "layers" and (p0["grad_ratio_lo"], p0["grad_ratio_hi"]) == (0.3, 0.45)
    assert (p0["grad_ratio_proj"], p0["grad_ratio_proj_lo"], p0["grad_ratio_proj_hi"]) == (0.9, 0.85, 0.95)
    assert (p0["grad_share"], p0["grad_share_layers"], p0["grad_share_all"]) == (0.2, 0.2, 0.5)
    assert (p0["grad_norm_layers_with"], p0["grad_norm_layers_without"], p0["grad_norm_all_without"]) == (
        0.55,
        1.5,
        2.6,
    )
    assert (p0["grad_norm_branch"], p0["norm_inflation"], p0["threshold"], p0["verdict"]) == (3.0, 1.7, 0.8, "CAUTION")
    assert list(p0["per_batch_ratios"]) == ["layers", "proj", "all"]
    assert p0["per_batch_ratios"]["layers"] == [0.3, 0.37, 0.45] and p0["per_batch_ratios"]["proj"] == [0.85, 0.9, 0.95]
    assert same_list(p0["per_batch_ratios"]["all"], [0.75, 0.8, NAN])

    # A frozen-adapter control: the frozen groups are kept as text.
    ctrl = start_run(engine, sid, "control", None, 0, "no-branch", None, "cpu")
    write_result(engine, ctrl, _train_result([], frozen=("layers", "proj")), metrics=False)
    assert runs_frame(engine).set_index("run_id").loc[ctrl, "frozen"] == "layers,proj"


def test_write_result_keeps_adapter_gain_batches(tmp_path: Path) -> None:
    engine = open_storage(f"sqlite:///{tmp_path / 'r.db'}")
    sid = new_study(engine)
    rid = start_run(engine, sid, "baseline", None, 0, "no-branch", None, "cpu")
    write_result(engine, rid, _train_result([_probe_result()]))
    ref = reference_run(engine, sid, 0)
    dispose_engines()
    assert ref is not None and ref["gain_batches"] == [0.01, 0.05, 0.09]


def test_write_probe_from_flat_dict_and_legacy_list(engine: Engine) -> None:
    sid = new_study(engine)
    rid = start_run(engine, sid, "trial", 0, 0, "none", None, "cpu")
    flat = {
        "step": 0,
        "group": "proj",
        "grad_ratio": 0.5,
        "grad_ratio_lo": 0.4,
        "grad_ratio_ci": [0.1, 0.9],  # explicit _lo/_hi win over the CI pair
        "grad_ratio_layers": 0.7,
        "grad_share_proj": 0.3,
        "grad_norm_proj_with": 1.25,
        "loss_with": 2.0,
        "verdict": "CAUTION",
        "per_batch_ratios": {"proj": [0.45, 0.55]},
        "not_a_column": 123.0,
    }
    write_probe(engine, rid, flat)
    write_probe(engine, rid, {"step": 10, "grad_ratio": 0.6, "per_batch_ratios": [0.6, 0.61]})
    finish_run(engine, rid, "complete", {"loss_slope": -1.0})
    probes = probe_frame(engine)
    p0, p1 = probes.iloc[0], probes.iloc[1]
    assert (p0["judged_group"], p0["grad_ratio"], p0["grad_ratio_lo"], p0["grad_ratio_hi"]) == ("proj", 0.5, 0.4, 0.9)
    assert (p0["grad_ratio_layers"], p0["grad_share_proj"], p0["grad_norm_proj_with"]) == (0.7, 0.3, 1.25)
    assert math.isnan(p0["grad_ratio_proj"]) and math.isnan(p0["grad_share"])
    assert p0["per_batch_ratios"] == {"proj": [0.45, 0.55]} and p0["verdict"] == "CAUTION"
    assert pd.isna(p1["judged_group"]) and p1["per_batch_ratios"] == {"": [0.6, 0.61]}
    assert math.isnan(p1["grad_ratio_lo"]) and math.isnan(p1["grad_ratio_hi"])
    run = runs_frame(engine).iloc[0]  # the first probe fills the run's step-0 columns
    assert (run["grad_ratio_init"], run["grad_ratio_init_lo"], run["grad_ratio_init_hi"]) == (0.5, 0.4, 0.9)
    assert (run["loss0_with"], run["verdict"]) == (2.0, "CAUTION")


# ------------------------------------------------------------------------------------------- queries


def _run(engine: Engine, sid: int, role: str, trial: int | None, seed: int, fix: str, scale: float | None,
         status: str, probe: Mapping[str, Any] | None = None, **summary: Any) -> int:  # fmt: skip
    rid = start_run(engine, sid, role, trial, seed, fix, scale, "cpu")
    if probe is not None:
        write_probe(engine, rid, {"step": 0, "group": "layers", "threshold": 0.7, **probe})
        write_probe(engine, rid, {"step": 50, "grad_ratio": 5.0, "per_batch_ratios": {"layers": [5.0, 6.0]}})
    if status != "running":
        finish_run(engine, rid, status, summary)
    return rid


ABL_SPEC = """\
[study]
seeds = [0, 1, 2]
objectives = ["adapter_gain", "dilution_train"]

[probe]
threshold = 0.7
group = "layers"
"""
ABL_OBJECTIVES = ("adapter_gain", "dilution_train")
# Trial 0, seeds 0-2 (every number of it is checked against an independent computation).
T0_GAIN, T0_TRAIN_RATIO, T0_INIT_RATIO = [0.20, 0.26, 0.23], [0.5, 0.8, 0.4], [0.4, 0.6, 0.5]
T0_INIT_PROJ, T0_SHARE, T0_SLOPE, T0_REL = [0.8, 0.9, 1.0], [0.1, 0.2, 0.3], [-5.0, -7.0, -6.0], [4.0, 5.0, 5.5]


@pytest.fixture
def populated(engine: Engine) -> Engine:
    """Hand-built study 'abl' (3 seeds; plus an older study 'old'), numbers chosen to check every aggregate.

    Trials: 0 and 1 fixed-scale, ranked; 2 fixed-scale missing seed 2; 3 zero-init with a failed seed;
    4 layerscale with a pruned seed; 5 zero-init, ranked; 6 norm-match still running. Trials 2-4 have
    better adapter_gain than any ranked trial, so ranking them would show.
    """
    old = new_study(engine, "old")
    _run(engine, old, "trial", 0, 0, "none", None, "complete", loss_slope=99.0)
    sid = new_study(engine, "abl", "c" * 64, ABL_SPEC, objectives_of(*ABL_OBJECTIVES))
    for seed, (gain, slope) in enumerate([(0.30, -10.0), (0.36, -12.0), (0.33, -11.0)]):
        _run(engine, sid, "baseline", None, seed, "no-branch", None, "complete", adapter_gain=gain,
             loss_slope=slope, loss_slope_rel=0.0, train_grad_ratio=1.0, wall_s=2.0)  # fmt: skip
    _run(engine, sid, "baseline", None, 3, "no-branch", None, "failed", adapter_gain=99.0, loss_slope=-50.0)
    for seed in (0, 1):
        _run(engine, sid, "control", None, seed, "no-branch", None, "complete", adapter_gain=0.0,
             train_grad_ratio=0.0, loss_slope=-1.0, frozen="layers")  # fmt: skip
    _run(engine, sid, "control", None, 2, "no-branch", None, "running")
    for seed in range(3):
        lo, hi = T0_INIT_RATIO[seed] - 0.1, T0_INIT_RATIO[seed] + 0.1
        probe = {
            "grad_ratio": T0_INIT_RATIO[seed],
            "grad_ratio_ci": [lo, hi],
            "per_batch_ratios": {"layers": [lo, T0_INIT_RATIO[seed], hi], "proj": [T0_INIT_PROJ[seed]]},
        }
        _run(engine, sid, "trial", 0, seed, "fixed-scale", 0.1, "complete", probe, group="layers",
             adapter_gain=T0_GAIN[seed], adapter_gain_lo=T0_GAIN[seed] - 0.05, adapter_gain_hi=T0_GAIN[seed] + 0.05,
             train_grad_ratio=T0_TRAIN_RATIO[seed], grad_ratio_init=T0_INIT_RATIO[seed],
             grad_ratio_init_layers=T0_INIT_RATIO[seed], grad_ratio_init_proj=T0_INIT_PROJ[seed],
             grad_share_init_layers=T0_SHARE[seed], grad_ratio_mean=0.5, loss_slope=T0_SLOPE[seed],
             loss_slope_rel=T0_REL[seed], loss_first=3.0 + seed / 10, loss_last=2.0,
             wall_s=10.0 + 2 * seed)  # fmt: skip
    for seed, gain in enumerate([0.30, 0.34, 0.32]):
        _run(engine, sid, "trial", 1, seed, "fixed-scale", 1.0, "complete", adapter_gain=gain,
             train_grad_ratio=[0.9, 1.1, 1.0][seed], grad_ratio_init=[0.9, 1.1, 1.0][seed],
             loss_slope=-10.0 + seed, wall_s=1.0)  # fmt: skip
    for seed, gain in enumerate([0.90, 0.95]):  # no run at all for seed 2
        _run(engine, sid, "trial", 2, seed, "fixed-scale", 0.5, "complete", adapter_gain=gain,
             train_grad_ratio=1.0, wall_s=1.0)  # fmt: skip
    for seed, status, gain in [(0, "complete", 0.80), (1, "complete", 0.85), (2, "failed", 5.0)]:
        _run(engine, sid, "trial", 3, seed, "zero-init", None, status, adapter_gain=gain, train_grad_ratio=1.0,
             wall_s=4.0 if status == "complete" else 2.0)  # fmt: skip
    for seed, status, gain in [(0, "complete", 0.70), (1, "pruned", 5.0), (2, "complete", 0.75)]:
        _run(engine, sid, "trial", 4, seed, "layerscale", 1e-4, status, adapter_gain=gain, train_grad_ratio=1.0)
    for seed, gain in enumerate([0.10, 0.12, 0.11]):
        _run(engine, sid, "trial", 5, seed, "zero-init", None, "complete", adapter_gain=gain,
             train_grad_ratio=[0.2, 0.25, 0.3][seed])  # fmt: skip
    _run(engine, sid, "trial", 6, 0, "norm-match", 0.5, "running")
    return engine


def _rows(engine: Engine, study: str, role: str, trial: int | None = None) -> list[dict[str, Any]]:
    """The stored complete run rows of one trial (or reference role), as the objectives read them."""
    runs = runs_frame(engine, study)
    runs = runs[(runs["role"] == role) & (runs["status"] == "complete")]
    if trial is not None:
        runs = runs[runs["trial_number"] == trial]
    return runs.to_dict(orient="records")


def _t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, lo, hi) of the 95% Student-t interval, by hand for 3 values."""
    assert len(values) == 3
    m = sum(values) / 3
    s = math.sqrt(sum((v - m) ** 2 for v in values) / 2)
    half = T975_DF2 * s / math.sqrt(3)
    return m, m - half, m + half


def test_study_settings(populated: Engine) -> None:
    assert study_settings(populated, "abl") == {
        "study": "abl",
        "objectives": ["adapter_gain", "dilution_train"],
        "directions": {"adapter_gain": "maximize", "dilution_train": "minimize"},
        "threshold": 0.7,
        "seeds": [0, 1, 2],
        "group": "layers",
        "groups": ["layers", "proj", "all"],
        "subject": "aaclip",
    }
    assert study_settings(populated) == study_settings(populated, "abl")  # None = the latest study
    assert study_settings(populated, "old") == {
        "study": "old",
        "objectives": ["loss_slope"],
        "directions": {"loss_slope": "minimize"},
        "threshold": 0.8,
        "seeds": [0],
        "group": "layers",
        "groups": ["layers", "proj", "all"],
        "subject": "aaclip",
    }
    # A legacy objective (no longer in the table) is listed but gets no direction; bad TOML gives defaults.
    new_study(populated, "legacy", "d" * 64, "not = [valid", [{"metric": "grad_ratio_mean", "direction": "maximize"}])
    legacy = study_settings(populated, "legacy")
    assert legacy["objectives"] == ["grad_ratio_mean"] and legacy["directions"] == {}
    assert (legacy["threshold"], legacy["seeds"], legacy["group"]) == (0.8, [0], "layers")


def test_runs_frame_stores_loss_slope_rel_and_new_columns(populated: Engine) -> None:
    runs = runs_frame(populated)  # None = the latest study
    assert set(runs["study"]) == {"abl"}
    assert len(runs) == 25
    assert runs["role"].tolist() == ["trial"] * 18 + ["control"] * 3 + ["baseline"] * 4
    by = {(r.role, -1 if pd.isna(r.trial_number) else r.trial_number, r.seed): r for r in runs.itertuples()}
    # Stored from the summary, not recomputed: trial 0 seed 0 is -5 - (-10) = 5 but stored 4.
    assert [by[("trial", 0, s)].loss_slope_rel for s in range(3)] == T0_REL
    assert all(math.isnan(by[("trial", 1, s)].loss_slope_rel) for s in range(3))  # none stored
    assert by[("baseline", -1, 0)].loss_slope_rel == 0.0 and math.isnan(by[("baseline", -1, 3)].loss_slope_rel)
    t0 = by[("trial", 0, 1)]
    assert (t0.judged_group, t0.adapter_gain) == ("layers", 0.26)
    assert (t0.adapter_gain_lo, t0.adapter_gain_hi) == pytest.approx((0.21, 0.31))
    assert (t0.train_grad_ratio, t0.grad_ratio_init_proj, t0.grad_share_init_layers) == (0.8, 0.9, 0.2)
    assert (t0.grad_ratio_init_lo, t0.grad_ratio_init_hi) == pytest.approx((0.5, 0.7))  # from the step-0 probe
    ctrl = by[("control", -1, 1)]
    assert (ctrl.status, ctrl.frozen, ctrl.train_grad_ratio, ctrl.adapter_gain) == ("complete", "layers", 0.0, 0.0)
    assert pd.isna(ctrl.judged_group) and by[("control", -1, 2)].status == "running"


def test_trials_frame_status_ranked_and_seeds(populated: Engine) -> None:
    trials = trials_frame(populated, "abl")
    assert trials.columns[:14].tolist() == [
        "study", "trial_number", "fix", "scale", "status", "ranked", "n_seeds", "seeds_wanted",
        "adapter_gain", "adapter_gain_lo", "adapter_gain_hi", "dilution_train", "dilution_train_lo",
        "dilution_train_hi",
    ]  # fmt: skip
    assert set(METRIC_COLUMNS) <= set(trials.columns) and trials.columns[-1] == "wall_s"
    trials = trials.set_index("trial_number")
    assert trials.index.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert trials["status"].tolist() == ["complete", "complete", "complete", "failed", "pruned", "complete", "running"]
    assert trials["ranked"].tolist() == [True, True, False, False, False, True, False]
    assert trials["n_seeds"].tolist() == [3, 3, 2, 2, 2, 3, 0]
    assert trials["seeds_wanted"].tolist() == [3] * 7
    # The unranked trials carry better numbers (from their complete seeds) than any ranked one.
    assert trials.loc[[2, 3, 4], "adapter_gain"].tolist() == pytest.approx([0.925, 0.825, 0.725])
    assert trials.loc[2, "ci_scope"] == SCOPE_SEEDS
    assert (trials.loc[2, "adapter_gain_lo"], trials.loc[2, "adapter_gain_hi"]) == pytest.approx(
        (mean_ci([0.90, 0.95]).lo, mean_ci([0.90, 0.95]).hi)
    )
    assert trials.loc[3, "wall_s"] == 10.0  # every run's time, the failed seed's too
    t6 = trials.loc[6]
    assert math.isnan(t6["adapter_gain"]) and math.isnan(t6["dilution_train_lo"]) and pd.isna(t6["verdict"])
    assert pd.isna(t6["ci_scope"]) and math.isnan(t6["wall_s"])
    assert (t6["fix"], t6["scale"]) == ("norm-match", 0.5)
    records = json.loads(json.dumps(json_records(trials_frame(populated, "abl")), allow_nan=False))
    assert [r["ranked"] for r in records] == [True, True, False, False, False, True, False]


def test_trials_frame_values_and_intervals_over_seeds(populated: Engine) -> None:
    t0 = trials_frame(populated, "abl").set_index("trial_number").loc[0]
    rows = _rows(populated, "abl", "trial", 0)
    assert len(rows) == 3 and (t0["fix"], t0["scale"], t0["ci_scope"]) == ("fixed-scale", 0.1, SCOPE_SEEDS)

    # What Optuna is told, from the stored rows ...
    for name in ABL_OBJECTIVES:
        assert t0[name] == pytest.approx(trial_value(name, rows), rel=1e-12)
        ci = trial_interval(name, rows)
        assert (t0[f"{name}_lo"], t0[f"{name}_hi"]) == pytest.approx((ci.lo, ci.hi), rel=1e-12)
    # ... equals the t-interval over the seed values, computed independently.
    gain = mean_ci(T0_GAIN, scope=SCOPE_SEEDS)
    assert (t0["adapter_gain"], t0["adapter_gain_lo"], t0["adapter_gain_hi"]) == pytest.approx(
        (gain.estimate, gain.lo, gain.hi), rel=1e-12
    )
    assert (t0["adapter_gain"], t0["adapter_gain_lo"], t0["adapter_gain_hi"]) == pytest.approx(
        _t_interval(T0_GAIN), rel=1e-9
    )
    assert t0["adapter_gain"] == pytest.approx(0.23) and t0["adapter_gain_hi"] - t0["adapter_gain"] == pytest.approx(
        T975_DF2 * 0.03 / math.sqrt(3), rel=1e-9
    )
    # Dilution: geometric mean of the ratios over seeds, the interval on the logs, ends swapped, floored at 0.
    ratio = ratio_ci([[r] for r in T0_TRAIN_RATIO])
    assert (t0["dilution_train"], t0["dilution_train_lo"], t0["dilution_train_hi"]) == pytest.approx(
        (dilution(ratio.estimate), dilution(ratio.hi), dilution(ratio.lo)), rel=1e-12
    )
    m, lo, hi = _t_interval([math.log(r) for r in T0_TRAIN_RATIO])
    assert t0["dilution_train"] == pytest.approx(-m, rel=1e-12) and t0["dilution_train"] == pytest.approx(
        0.6109, abs=1e-4
    )
    assert t0["dilution_train_lo"] == 0.0 and -hi < 0  # the t-interval reaches R > 1, where the dilution is 0
    assert t0["dilution_train_hi"] == pytest.approx(-lo, rel=1e-9)
    # The other metric columns: geometric means for ratios (with their interval), plain means otherwise.
    init = ratio_ci([[r] for r in T0_INIT_RATIO])
    assert (t0["grad_ratio_init"], t0["grad_ratio_init_lo"], t0["grad_ratio_init_hi"]) == pytest.approx(
        (init.estimate, init.lo, init.hi), rel=1e-12
    )
    assert t0["grad_ratio_init"] == pytest.approx(0.12 ** (1 / 3), rel=1e-12)
    assert t0["grad_ratio_init_layers"] == pytest.approx(0.12 ** (1 / 3), rel=1e-12)
    assert t0["grad_ratio_init_proj"] == pytest.approx(0.72 ** (1 / 3), rel=1e-12)
    assert t0["train_grad_ratio"] == pytest.approx(0.16 ** (1 / 3), rel=1e-12)
    assert t0["train_grad_ratio_lo"] == pytest.approx(ratio.lo, rel=1e-12)
    assert t0["grad_share_init_layers"] == pytest.approx(0.2) and math.isnan(t0["grad_share_init_proj"])
    assert t0["grad_ratio_mean"] == pytest.approx(0.5)
    assert t0["loss_slope"] == -6.0 and t0["loss_slope_std"] == pytest.approx(1.0)
    assert t0["loss_slope_rel"] == pytest.approx(sum(T0_REL) / 3) and t0["loss_first"] == pytest.approx(3.1)
    assert t0["loss_last"] == 2.0 and t0["wall_s"] == 36.0
    assert t0["threshold"] == 0.7 and t0["verdict"] == "CAUTION"  # 0.49 < 0.7 (the spec's threshold)

    t1 = trials_frame(populated, "abl").set_index("trial_number").loc[1]
    assert t1["adapter_gain"] == pytest.approx(0.32) and t1["grad_ratio_init"] == pytest.approx(0.99 ** (1 / 3))
    assert t1["dilution_train"] == pytest.approx(-math.log(0.99) / 3) and t1["verdict"] == "OK"
    assert t1["loss_slope"] == -9.0 and math.isnan(t1["loss_slope_rel"])


ONE_SPEC = '[study]\nseeds = [0]\nobjectives = ["dilution_train", "adapter_gain"]\n'


@pytest.fixture
def one_seed(engine: Engine) -> Engine:
    """Study 'one': a single seed, so every interval is the run's own within-seed one."""
    sid = new_study(engine, "one", "e" * 64, ONE_SPEC, objectives_of("dilution_train", "adapter_gain"))
    _run(engine, sid, "baseline", None, 0, "no-branch", None, "complete", train_grad_ratio=1.0,
         train_grad_ratio_lo=0.97, train_grad_ratio_hi=1.03, adapter_gain=0.3, adapter_gain_lo=0.2,
         adapter_gain_hi=0.4)  # fmt: skip
    _run(engine, sid, "trial", 0, 0, "fixed-scale", 0.1, "complete", train_grad_ratio=0.5, train_grad_ratio_lo=0.4,
         train_grad_ratio_hi=0.6, adapter_gain=0.2, adapter_gain_lo=0.15, adapter_gain_hi=0.25,
         grad_ratio_init=0.5, loss_slope=-2.0)  # fmt: skip
    _run(engine, sid, "trial", 1, 0, "fixed-scale", 1.0, "complete", train_grad_ratio=0.9, train_grad_ratio_lo=0.8,
         train_grad_ratio_hi=1.05, adapter_gain=0.1, adapter_gain_lo=0.05, adapter_gain_hi=0.15)  # fmt: skip
    _run(engine, sid, "trial", 2, 0, "fixed-scale", 0.3, "failed", train_grad_ratio=1.0)
    # Trial 3: its spec seed is complete, but an extra seed failed: the trial failed, and may not win.
    _run(engine, sid, "trial", 3, 0, "fixed-scale", 2.0, "complete", train_grad_ratio=1.0, train_grad_ratio_lo=0.9,
         train_grad_ratio_hi=1.1)  # fmt: skip
    _run(engine, sid, "trial", 3, 1, "fixed-scale", 2.0, "failed")
    _run(engine, sid, "trial", 4, 0, "zero-init", None, "pruned", train_grad_ratio=1.0)
    return engine


def test_trials_frame_one_seed_uses_the_runs_within_seed_interval(one_seed: Engine) -> None:
    trials = trials_frame(one_seed, "one").set_index("trial_number")
    assert trials["ranked"].tolist() == [True, True, False, False, False]
    assert trials["status"].tolist() == ["complete", "complete", "failed", "failed", "pruned"]
    assert trials["n_seeds"].tolist() == [1, 1, 0, 1, 0] and trials["seeds_wanted"].tolist() == [1] * 5
    t0 = trials.loc[0]
    assert t0["ci_scope"] == SCOPE_WITHIN == "within-seed"
    assert (t0["adapter_gain"], t0["adapter_gain_lo"], t0["adapter_gain_hi"]) == (0.2, 0.15, 0.25)
    assert (t0["train_grad_ratio"], t0["train_grad_ratio_lo"], t0["train_grad_ratio_hi"]) == (0.5, 0.4, 0.6)
    assert t0["dilution_train"] == pytest.approx(math.log(2), rel=1e-12)
    assert t0["dilution_train_lo"] == pytest.approx(-math.log(0.6), rel=1e-12)  # ends swap: high ratio, low dilution
    assert t0["dilution_train_hi"] == pytest.approx(-math.log(0.4), rel=1e-12)
    assert t0["grad_ratio_init"] == 0.5 and math.isnan(t0["grad_ratio_init_lo"])  # no stored interval: none
    assert t0["loss_slope"] == -2.0 and math.isnan(t0["loss_slope_std"]) and t0["threshold"] == 0.8
    t1 = trials.loc[1]
    assert (t1["dilution_train_lo"], t1["dilution_train_hi"]) == pytest.approx((0.0, -math.log(0.8)), rel=1e-12)
    assert t1["dilution_train"] == pytest.approx(-math.log(0.9), rel=1e-12)
    assert trials.loc[3, "dilution_train"] == 0.0 and trials.loc[3, "ci_scope"] == SCOPE_WITHIN
    assert math.isnan(trials.loc[2, "dilution_train"]) and math.isnan(trials.loc[4, "adapter_gain"])


def test_group_by_fix_one_seed_minimize_primary(one_seed: Engine) -> None:
    groups = group_by_fix(one_seed, "one").set_index("fix")
    assert groups.index.tolist() == ["no-branch (baseline)", "fixed-scale", "zero-init"]  # no control ran
    fs = groups.loc["fixed-scale"]
    # dilution_train is minimised: trial 1 (0.105) beats trial 0 (0.69); failed trial 3 (0.0) may not win.
    assert (fs["best_trial"], fs["scale"], fs["n_trials"], fs["n_unranked"], fs["n_seeds"]) == (1, 1.0, 2, 2, 1)
    assert fs["dilution_train"] == pytest.approx(-math.log(0.9)) and fs["ci_scope"] == SCOPE_WITHIN
    assert (fs["adapter_gain"], fs["adapter_gain_lo"], fs["adapter_gain_hi"]) == (0.1, 0.05, 0.15)
    zi = groups.loc["zero-init"]
    assert pd.isna(zi["best_trial"]) and (zi["n_trials"], zi["n_unranked"], zi["n_seeds"]) == (0, 1, 0)
    assert math.isnan(zi["dilution_train"]) and math.isnan(zi["scale"])
    base = groups.loc["no-branch (baseline)"]
    assert (base["n_seeds"], base["adapter_gain_lo"], base["adapter_gain_hi"]) == (1, 0.2, 0.4)
    assert base["dilution_train"] == 0.0 and base["dilution_train_hi"] == pytest.approx(-math.log(0.97))


def test_group_by_fix_best_ranked_trial_per_fix(populated: Engine) -> None:
    groups = group_by_fix(populated, "abl")
    head = ["study", "fix", "rank", "recommended", "n_trials", "n_unranked", "best_trial", "scale", "n_seeds"]
    assert groups.columns[:9].tolist() == head
    groups = groups.set_index("fix")
    # the references, the fixes by adapter_gain (best first), then those with no ranked trial by name
    assert groups.index.tolist() == [
        "no-branch (baseline)",
        "frozen (control)",
        "fixed-scale",
        "zero-init",
        "layerscale",
        "norm-match",
    ]
    assert groups["rank"].iloc[2:4].tolist() == [1, 2]
    assert groups["rank"].isna().tolist() == [True, True, False, False, True, True]
    # the report's recommendation: the front's best trial on adapter_gain (trial 1, fixed-scale)
    assert groups["recommended"].tolist() == [False, False, True, False, False, False]

    # Against the baseline on adapter_gain, paired by seed: fixed-scale trial 1 is [0, -0.02, -0.01]
    # off the baseline's [0.30, 0.36, 0.33] (interval holds 0), zero-init trial 5 about -0.22 (below 0),
    # the control (seeds 0, 1) -0.30 and -0.36: with two seeds the t quantile is 12.7, so its interval
    # reaches above 0; the baseline is not compared with itself.
    m, lo, hi = _t_interval([0.0, -0.02, -0.01])
    fs = groups.loc["fixed-scale"]
    assert (fs["vs_baseline_diff"], fs["vs_baseline_diff_lo"], fs["vs_baseline_diff_hi"]) == pytest.approx((m, lo, hi))
    assert lo < 0 < hi and fs["vs_baseline"] == "≈ base"
    assert groups.loc["zero-init", "vs_baseline"] == "worse"
    assert groups.loc["zero-init", "vs_baseline_diff"] == pytest.approx(-0.22)
    ctrl = groups.loc["frozen (control)"]
    assert ctrl["vs_baseline"] == "≈ base" and ctrl["vs_baseline_diff"] == pytest.approx(-0.33)
    assert ctrl["vs_baseline_diff_hi"] > 0 > ctrl["vs_baseline_diff_lo"]
    assert pd.isna(groups.loc["no-branch (baseline)", "vs_baseline"])  # not compared with itself: null
    assert groups.loc["layerscale", "vs_baseline"] is None or pd.isna(groups.loc["layerscale", "vs_baseline"])
    trials = trials_frame(populated, "abl").set_index("trial_number")

    # fixed-scale: trial 2 (0.925, missing seed 2) is better but unranked; trial 1 (0.32) beats trial 0 (0.23).
    fs = groups.loc["fixed-scale"]
    assert (fs["best_trial"], fs["scale"], fs["n_trials"], fs["n_unranked"], fs["n_seeds"]) == (1, 1.0, 2, 1, 3)
    for col in ("adapter_gain", "adapter_gain_lo", "adapter_gain_hi", "dilution_train", "dilution_train_lo",
                "dilution_train_hi", "grad_ratio_init", "loss_slope", "wall_s"):  # fmt: skip
        assert same(fs[col], trials.loc[1, col]), col  # the best trial's own numbers: scales never pooled
    assert fs["adapter_gain"] == pytest.approx(0.32) and fs["wall_s"] == 3.0
    assert (fs["ci_scope"], fs["verdict"]) == (SCOPE_SEEDS, "OK")

    # zero-init: failed trial 3 (0.825) never wins over ranked trial 5 (0.11); its scale is None.
    zi = groups.loc["zero-init"]
    assert (zi["best_trial"], zi["n_trials"], zi["n_unranked"]) == (5, 1, 1) and math.isnan(zi["scale"])
    assert zi["adapter_gain"] == pytest.approx(0.11)
    assert zi["dilution_train"] == pytest.approx(-math.log(0.015) / 3, rel=1e-12)

    # layerscale (pruned seed) and norm-match (running) have no ranked trial: listed, with no numbers.
    for fix in ("layerscale", "norm-match"):
        row = groups.loc[fix]
        assert pd.isna(row["best_trial"]) and (row["n_trials"], row["n_unranked"], row["n_seeds"]) == (0, 1, 0)
        assert math.isnan(row["adapter_gain"]) and math.isnan(row["scale"])
    ranked_best = groups.loc[["fixed-scale", "zero-init"], "best_trial"].tolist()
    assert set(ranked_best) <= set(trials.index[trials["ranked"]])

    # The references: complete runs only (the failed seed-3 baseline and the running control are left out).
    base = groups.loc["no-branch (baseline)"]
    assert (base["n_trials"], base["n_unranked"], base["n_seeds"]) == (0, 0, 3) and pd.isna(base["best_trial"])
    gain = mean_ci([0.30, 0.36, 0.33], scope=SCOPE_SEEDS)
    assert (base["adapter_gain"], base["adapter_gain_lo"], base["adapter_gain_hi"]) == pytest.approx(
        (gain.estimate, gain.lo, gain.hi), rel=1e-12
    )
    assert base["loss_slope"] == -11.0 and base["dilution_train"] == 0.0 and base["wall_s"] == 6.0
    assert base["adapter_gain"] == pytest.approx(trial_value("adapter_gain", _rows(populated, "abl", "baseline")))
    ctrl = groups.loc["frozen (control)"]
    assert ctrl["n_seeds"] == 2 and (ctrl["adapter_gain"], ctrl["adapter_gain_lo"], ctrl["adapter_gain_hi"]) == (
        0,
        0,
        0,
    )
    floor = -math.log(1e-6)  # a ratio of 0 (frozen) counts as the floor, so the dilution stays finite
    assert (ctrl["dilution_train"], ctrl["dilution_train_lo"], ctrl["dilution_train_hi"]) == pytest.approx(
        (floor, floor, floor), rel=1e-12
    )


def test_trials_status_from_optuna_tables(tmp_path: Path) -> None:
    """Where Optuna's tables are in the database, a trial's status is Optuna's state (FAIL -> failed)."""
    import optuna

    url = f"sqlite:///{tmp_path / 'results.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="opt", storage=url)
    for state in ("complete", "fail", "pruned", "complete"):
        trial = study.ask()
        if state == "complete":
            study.tell(trial, -1.0)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL if state == "fail" else optuna.trial.TrialState.PRUNED)
    engine = open_storage(url)
    sid = new_study(engine, "s", optuna_name="opt")
    # Every run is complete; Optuna's verdict still decides. Trial 4 has no Optuna trial: its runs decide.
    for trial, slope, status in [(0, -1.0, "complete"), (1, -9.0, "complete"), (2, -8.0, "complete"),
                                 (3, -2.0, "failed"), (4, -7.0, "pruned")]:  # fmt: skip
        _run(engine, sid, "trial", trial, 0, "fixed-scale", 0.1 * (trial + 1), status, loss_slope=slope)
    trials = trials_frame(engine, "s").set_index("trial_number")
    assert trials["status"].tolist() == ["complete", "failed", "pruned", "complete", "pruned"]
    assert trials["ranked"].tolist() == [True, False, False, False, False]  # trial 3: Optuna complete, run failed
    assert trials.loc[[0, 1, 2], "loss_slope"].tolist() == [-1.0, -9.0, -8.0]
    fs = group_by_fix(engine, "s").set_index("fix").loc["fixed-scale"]
    assert (fs["best_trial"], fs["loss_slope"], fs["n_trials"], fs["n_unranked"]) == (0, -1.0, 1, 4)
    # Another Optuna study name (no trials of ours in Optuna's tables): the run statuses decide.
    other = new_study(engine, "t", "b" * 64, optuna_name="not-in-optuna")
    _run(engine, other, "trial", 1, 0, "fixed-scale", 0.2, "complete", loss_slope=-9.0)
    assert trials_frame(engine, "t")[["status", "ranked"]].values.tolist() == [["complete", True]]
    dispose_engines()


def test_legacy_objectives_rank_by_loss_slope(engine: Engine) -> None:
    """A study stored with an objective no longer known: its trials rank by loss_slope (minimised)."""
    sid = new_study(engine, "legacy", objectives=[{"metric": "grad_ratio_init", "direction": "maximize"}])
    _run(engine, sid, "trial", 0, 0, "fixed-scale", 0.1, "complete", loss_slope=-1.0, grad_ratio_init=2.0)
    _run(engine, sid, "trial", 1, 0, "fixed-scale", 0.2, "complete", loss_slope=-3.0, grad_ratio_init=0.5)
    trials = trials_frame(engine, "legacy")
    assert "grad_ratio_init_lo" in trials.columns and trials["ranked"].tolist() == [True, True]
    assert trials.columns[8] == "adapter_gain"  # no objective columns of its own
    fs = group_by_fix(engine, "legacy").set_index("fix").loc["fixed-scale"]
    assert (fs["best_trial"], fs["loss_slope"], fs["scale"]) == (1, -3.0, 0.2)


def test_list_studies_and_lookup_errors(populated: Engine) -> None:
    studies = list_studies(populated).set_index("name")
    assert studies.loc["abl", "n_trials"] == 4  # trials whose runs are all complete (0, 1, 2, 5)
    assert studies.loc["abl", "n_runs"] == 25
    assert studies.loc["old", "n_trials"] == 1 and studies.loc["abl", "optuna_study_name"] == "optuna-abl"
    assert runs_frame(populated, "old")["loss_slope"].tolist() == [99.0]
    with pytest.raises(LookupError, match=r"no study named 'nope' in .*; studies: old, abl$"):
        trials_frame(populated, "nope")
    with pytest.raises(LookupError, match="no study named 'nope'"):
        group_by_fix(populated, "nope")


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
    assert len(probes) == 6 and probes["step"].tolist() == [0, 50] * 3
    p = probes.query("run_id == @rid and step == 0").iloc[0]
    assert p["per_batch_ratios"] == {"layers": [0.5, 0.6, 0.7], "proj": [0.9]}
    assert (p["grad_ratio"], p["threshold"], p["judged_group"], p["status"]) == (0.6, 0.7, "layers", "complete")
    assert probes.query("run_id == @rid and step == 50")["per_batch_ratios"].iloc[0] == {"layers": [5.0, 6.0]}


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
    assert len(runs_frame(populated, "abl")) == 25
    assert set(inspect(populated).get_table_names()) == set(TABLE_NAMES)


def test_run_sql_reads(populated: Engine) -> None:
    df = run_sql(populated, "SELECT name FROM ablate_studies ORDER BY id;")
    assert df["name"].tolist() == ["old", "abl"]
    assert run_sql(populated, "SELECT 'a;b -- not a comment' AS s")["s"].tolist() == ["a;b -- not a comment"]
    n = run_sql(populated, "-- count\nWITH r AS (SELECT * FROM ablate_runs) SELECT count(*) AS n FROM r; -- end")
    assert n["n"].tolist() == [26]
    assert not run_sql(populated, "EXPLAIN SELECT * FROM ablate_runs").empty
    with pytest.raises(ValueError, match="not a study table"):
        run_sql(populated, "SELECT * FROM no_such_table")
    with pytest.raises(ValueError, match="SQL error"):
        run_sql(populated, "SELECT no_such_column FROM ablate_runs")


def test_run_sql_is_read_only_in_the_database(populated: Engine) -> None:
    """Past the text check, the database itself refuses writes, and the connection is reset after."""
    with pytest.raises(ValueError, match="(?i)read-?only"):
        execute_read_only(populated, "DELETE FROM ablate_step_metrics")
    with pytest.raises(ValueError, match="(?i)read-?only"):
        execute_read_only(populated, "UPDATE ablate_studies SET name = 'x'")
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


def test_a_database_from_an_older_ablate_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as con:  # an ablate_runs table from before the per-group columns
        con.execute("CREATE TABLE ablate_runs (id INTEGER PRIMARY KEY, study_id INTEGER, loss_slope FLOAT)")
    for create in (True, False):
        with pytest.raises(ValueError, match="older ablate: ablate_runs lacks"):
            open_storage(f"sqlite:///{path}", create=create)
