"""`ablate export mlflow` into a `file:` tracking store, read back with MLflow's own
`mlflow.search_runs`: one parent run per study, a nested run per ablate run with its params,
per-step metrics (with their steps), summaries and intervals, the report as artifacts; a second
export updates what changed and duplicates nothing."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from ablate.store import open_storage, query
from tests.study_helpers import run_cli, sqlite_url

mlflow = pytest.importorskip("mlflow")


def _runs(uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["ablate"])


def test_export_to_mlflow_reads_back_and_a_second_export_duplicates_nothing(cli_study, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's opt-in to its file store, for the reader
    db = tmp_path / "results.db"
    shutil.copyfile(cli_study[0] / "results.db", db)
    url, uri = sqlite_url(db), f"file:{tmp_path / 'mlruns'}"
    # one trial run still running at the first export, as when exporting during a study
    with sqlite3.connect(db) as con:
        rid, finished = con.execute(
            "SELECT id, finished_at FROM ablate_runs WHERE role = 'trial' ORDER BY id LIMIT 1"
        ).fetchone()
        con.execute("UPDATE ablate_runs SET status = 'running', finished_at = NULL WHERE id = ?", (rid,))

    code, out, err = run_cli(capsys, "export", "mlflow", "--tracking-uri", uri, "--storage", url, "--json")
    assert code == 0, err
    doc = json.loads(out)["studies"][0]
    assert (doc["study"], doc["parent"], doc["created"]) == ("mini", "created", 10)
    assert "report/report.html" in doc["artifacts"] and "report/tradeoff.png" in doc["artifacts"]

    engine = open_storage(url, create=False)
    _, fixes, runs = query.summary_frames(engine, "mini")
    found = _runs(uri)
    parent = found[found["tags.mlflow.runName"] == "mini"]
    assert len(parent) == 1 and len(found) == 1 + len(runs) == 11
    parent_id = parent["run_id"].iloc[0]
    nested = found[found["tags.mlflow.parentRunId"] == parent_id]
    assert len(nested) == 10
    assert set(nested["status"]) == {"FINISHED", "RUNNING"}

    # a trial's run: its params, its summary with its interval, every step of its loss
    run = runs[(runs["role"] == "trial") & (runs["status"] == "complete")].iloc[0]
    row = nested[nested["tags.ablate.run_id"] == str(int(run["run_id"]))].iloc[0]
    assert (row["params.fix"], row["params.seed"], row["params.role"]) == (run["fix"], str(int(run["seed"])), "trial")
    assert row["params.scale"] == ("" if run["scale"] != run["scale"] else f"{run['scale']:g}")
    assert row["params.training.steps"] == "6" and row["params.search.fixes"] == '["none", "fixed-scale", "tanh-gate"]'
    for column in ("adapter_gain", "adapter_gain_lo", "adapter_gain_hi", "train_grad_ratio", "loss_slope"):
        assert row[f"metrics.{column}"] == pytest.approx(run[column], rel=1e-12), column
    client = mlflow.tracking.MlflowClient(uri)
    history = sorted((m.step, m.value) for m in client.get_metric_history(row["run_id"], "loss"))
    steps = query.every_step_metric_for_runs(engine, [int(run["run_id"])])
    loss = steps[steps["name"] == "loss"]
    assert history == [(int(s), pytest.approx(v)) for s, v in zip(loss["step"], loss["value"])]
    assert [s for s, _ in history] == list(range(6))
    # the parent: the per-fix table as metrics, the report as artifacts
    best = fixes[fixes["rank"] == 1].iloc[0]
    assert parent[f"metrics.{best['fix']}/adapter_gain"].iloc[0] == pytest.approx(best["adapter_gain"])
    assert parent["metrics.baseline/adapter_gain_lo"].iloc[0] == pytest.approx(fixes.iloc[0]["adapter_gain_lo"])
    assert {"report/report.md", "report/report.json"} <= {a.path for a in client.list_artifacts(parent_id, "report")}

    # the run finished since: the second export replaces that one run and leaves the rest
    with sqlite3.connect(db) as con:
        con.execute("UPDATE ablate_runs SET status = 'complete', finished_at = ? WHERE id = ?", (finished, rid))
    code, out, err = run_cli(capsys, "export", "mlflow", "--tracking-uri", uri, "--storage", url, "--no-report",
                             "--json")  # fmt: skip
    assert code == 0, err
    again = json.loads(out)["studies"][0]
    assert (again["parent"], again["created"], again["replaced"], again["unchanged"]) == ("updated", 0, 1, 9)
    after = _runs(uri)
    assert len(after) == 11 and set(after["run_id"]) >= set(found["run_id"]) - {
        nested[nested["tags.ablate.run_id"] == str(rid)]["run_id"].iloc[0]
    }
    assert set(after[after["tags.mlflow.parentRunId"] == parent_id]["status"]) == {"FINISHED"}
    assert len(client.get_metric_history(row["run_id"], "loss")) == 6  # nothing logged twice
    # and a third, with nothing changed, changes nothing
    code, out, _ = run_cli(capsys, "export", "mlflow", "--tracking-uri", uri, "--storage", url, "--no-report", "--json")
    third = json.loads(out)["studies"][0]
    assert (third["parent"], third["created"], third["replaced"], third["unchanged"]) == ("unchanged", 0, 0, 10)
    assert len(_runs(uri)) == 11
    assert len(client.get_metric_history(parent_id, f"{best['fix']}/adapter_gain")) == 2  # one point per change


def test_export_mlflow_bad_input_exits_2(cli_study, tmp_path, capsys):
    url = cli_study[1]
    code, out, err = run_cli(capsys, "export", "mlflow", "--tracking-uri", f"file:{tmp_path}", "--study", "mnii",
                             "--storage", url)  # fmt: skip
    assert code == 2 and out == "" and "(did you mean 'mini'?)" in err and err.count("\n") == 1
