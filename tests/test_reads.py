"""Reads that stay fast as studies grow (issue 11): light imports, plans that use the keys, per-step
series read only for the runs a figure draws, and the same answers as the per-trial pandas code."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, event, text

from ablate.objectives import OBJECTIVES
from ablate.plot import source
from ablate.plot.extract import GATE_PREFIX, best_trial_per_fix, extract_gates
from ablate.store import catalog, dispose_engines, open_storage, query
from ablate.store.summaries import metric_columns
from bench.read_db import build

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """40 trials x 3 seeds x 20 steps, with failures, pruned trials, NaN/inf and Optuna's tables."""
    url = f"sqlite:///{tmp_path_factory.mktemp('reads') / 'bench.db'}"
    build(url, trials=40, seeds=3, steps=20, probes=3, rng_seed=1, fail=0.04)
    return url


def _run_cli(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env()
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_query_and_plot_import_neither_torch_nor_open_clip(bench_db: str, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from ablate.cli import main\n"
        "for args in (['query', '--studies'], ['query'], ['query', '--format', 'json'],"
        f" ['query', '--group-by', 'fix'], ['query', '--runs'], ['plot', '--out', {str(tmp_path)!r}]):\n"
        "    try:\n"
        f"        main([*args, '--storage', {bench_db!r}])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        "print('heavy:', [m for m in ('torch', 'open_clip', 'optuna') if m in sys.modules])\n"
    )
    assert _run_cli(code) == "heavy: []"
    assert (tmp_path / "tradeoff.png").exists() and (tmp_path / "gates.svg").exists()


def test_query_studies_needs_no_pandas_or_matplotlib(bench_db: str) -> None:
    code = (
        "import sys, io, contextlib\n"
        "from ablate.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        main(['query', '--studies', '--storage', {bench_db!r}])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0\n"
        "assert 'bench' in out.getvalue(), out.getvalue()\n"
        "print('loaded:', [m for m in ('pandas', 'numpy', 'matplotlib', 'optuna', 'torch') if m in sys.modules])\n"
    )
    assert _run_cli(code) == "loaded: []"


# ------------------------------------------------------------------------------------- query plans


def _read_statements(engine: Engine, study: str, tmp: Path) -> list[tuple[str, object]]:
    """Every statement the read commands send, recorded at the cursor (what the driver runs)."""
    seen: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        catalog.study_rows(engine)
        query.trials_frame(engine, study)
        query.group_by_fix(engine, study)
        query.runs_frame(engine, study)
        source.load(engine, study)
        query.step_metrics_frame(engine, study, ["loss"])
        query.probe_frame(engine, study)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return [(s, p) for s, p in seen if "ablate_step_metrics" in s]


def test_sqlite_plans_never_scan_the_step_table(bench_db: str, tmp_path: Path) -> None:
    engine = open_storage(bench_db, create=False)
    statements = _read_statements(engine, "bench", tmp_path)
    assert len(statements) >= 4  # plot's curve and gate reads, the frame, the gate probe
    with engine.connect() as conn:
        for statement, params in statements:
            plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)]
            step_lines = [line for line in plan if "ablate_step_metrics" in line]
            assert step_lines and all(line.startswith("SEARCH") for line in step_lines), (statement, plan)


def test_postgres_plans_never_scan_the_step_table(fresh_pg_url: str, tmp_path: Path) -> None:
    build(fresh_pg_url, trials=12, seeds=2, steps=10, probes=2, optuna=False)
    engine = open_storage(fresh_pg_url, create=False)
    try:
        statements = _read_statements(engine, "bench", tmp_path)
        assert len(statements) >= 4
        with engine.connect() as conn:
            # With sequential scans priced out, a Seq Scan in the plan means no index can serve the
            # query (on a table this small the planner would otherwise scan whatever the indexes).
            conn.execute(text("SET enable_seqscan = off"))
            for statement, params in statements:
                plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, params))
                assert "ablate_step_metrics" in plan, plan
                assert "Seq Scan on ablate_step_metrics" not in plan, (statement, plan)
    finally:
        dispose_engines()


# ------------------------------------------------------------------------- plot reads what it draws


def test_plot_reads_steps_of_drawn_runs_only(bench_db: str) -> None:
    engine = open_storage(bench_db, create=False)
    inputs = source.load(engine, "bench", gate_cap=2)
    best = best_trial_per_fix(inputs.runs)
    curve_ids = {i for b in best.values() for i in b.run_ids}
    baselines = set(inputs.runs.loc[(inputs.runs.role == "baseline") & (inputs.runs.status == "complete"), "run_id"])
    steps = inputs.steps
    curves = steps[~steps["name"].str.startswith(GATE_PREFIX)]
    assert set(curves["run_id"]) == curve_ids | baselines
    assert set(curves["name"]) == {"loss", "grad_norm_layers", "grad_norm_proj", "grad_norm_branch"}
    gates = steps[steps["name"].str.startswith(GATE_PREFIX)]
    gated = inputs.runs[inputs.runs["run_id"].isin(set(gates["run_id"]))]
    assert set(gated["fix"]) == {"learnable-alpha", "tanh-gate", "layerscale"}
    assert gated.groupby("fix")["trial_number"].nunique().max() == 2  # the cap, per fix
    # every value read matches the whole-study frame
    full = query.step_metrics_frame(engine, "bench")
    merged = steps.merge(full, on=["run_id", "step", "name"], suffixes=("", "_full"))
    assert len(merged) == len(steps)
    assert np.array_equal(merged["value"].to_numpy(), merged["value_full"].to_numpy(), equal_nan=True)
    assert len(steps) < len(full) / 3
    data = extract_gates(steps, inputs.runs, inputs.gates_selection)
    assert "at most 2 trials" in data.note and len(data.series) == 6


def test_plot_reads_every_gate_trial_under_the_cap(bench_db: str) -> None:
    engine = open_storage(bench_db, create=False)
    inputs = source.load(engine, "bench", kinds=["gates"])
    assert inputs.gates_selection is None
    gates = inputs.steps
    assert set(gates["name"]) == {"gate/alpha", "gate/tanh_alpha", "gate/layerscale_mean"}
    runs = inputs.runs
    complete = runs[(runs.role == "trial") & (runs.status == "complete") & runs.fix.isin(["tanh-gate", "layerscale"])]
    assert set(complete["run_id"]) <= set(gates["run_id"])


# ----------------------------------------------------------- same answers as the per-trial pandas code


def _reference_trials(engine: Engine, study: str) -> pd.DataFrame:
    """trials_frame as ablate computed it before issue 11: pandas, one group per trial."""
    settings = query.study_settings(engine, study)
    runs = query.runs_frame(engine, study)
    states = _optuna_states(engine, study)
    objectives = [m for m in settings["objectives"] if m in OBJECTIVES]
    severity = {"failed": 3, "pruned": 2, "running": 1, "complete": 0}
    records = []
    for number, g in runs[runs["role"] == "trial"].groupby("trial_number", sort=True):
        ok = g[g["status"] == "complete"]
        status = "complete" if (g["status"] == "complete").all() else max(g["status"], key=severity.get)
        status = {"fail": "failed"}.get(states.get(int(number)), states.get(int(number), status))
        seeds = set(ok["seed"].astype(int))
        records.append(
            {
                "study": study,
                "trial_number": int(number),
                "fix": g["fix"].iloc[0],
                "scale": g["scale"].iloc[0],
                "status": status,
                "ranked": bool(status == "complete" and set(settings["seeds"]) <= seeds),
                "n_seeds": len(seeds),
                "seeds_wanted": len(settings["seeds"]),
                **metric_columns(ok.to_dict(orient="records"), objectives, settings["threshold"], settings["groups"]),
                "wall_s": float(g["wall_s"].sum(min_count=1)),
            }
        )
    return pd.DataFrame(records)


def _optuna_states(engine: Engine, study: str) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.number, t.state FROM trials t JOIN studies s ON s.study_id = t.study_id"
                " WHERE s.study_name = :n"
            ),
            {"n": study},
        ).all()
    return {int(n): str(s).split(".")[-1].lower() for n, s in rows}


def test_trials_frame_equals_the_pandas_reference(bench_db: str) -> None:
    engine = open_storage(bench_db, create=False)
    got = query.trials_frame(engine, "bench")
    want = _reference_trials(engine, "bench")
    assert list(got["trial_number"]) == list(range(40))
    assert set(got["status"]) == {"complete", "failed", "pruned"}  # the fixture meets every status
    runs = query.runs_frame(engine, "bench")
    assert runs["loss_slope"].isna().any() and np.isinf(runs["train_grad_ratio_proj"]).any()
    assert set(got.columns) <= set(want.columns)
    for column in got.columns:
        a, b = got[column].tolist(), want[column].tolist()
        same = [x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)) for x, y in zip(a, b)]
        assert all(same), column


def test_summary_frames_equal_the_separate_reads(bench_db: str) -> None:
    engine = open_storage(bench_db, create=False)
    trials, fixes, runs = query.summary_frames(engine, "bench")
    pd.testing.assert_frame_equal(trials, query.trials_frame(engine, "bench"))
    pd.testing.assert_frame_equal(fixes, query.group_by_fix(engine, "bench"))
    pd.testing.assert_frame_equal(runs, query.runs_frame(engine, "bench"))
    assert [s.name for s in catalog.study_rows(engine)] == list(query.list_studies(engine)["name"])


def test_plot_unknown_study_is_bad_input(bench_db: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ablate.cli import main

    with pytest.raises(SystemExit) as info:
        main(["plot", "--storage", bench_db, "--study", "nope", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: --study: no study named 'nope'")
    assert len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
