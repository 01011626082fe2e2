"""``ablate export mlflow``: each study as one MLflow parent run, each of its ablate runs as a run
nested under it (the optional extra ``ablate-branch[mlflow]``).

- The parent run: the spec's keys as params; the per-fix table (``ablate query --group-by fix``)
  as metrics ``<fix>/<objective>`` with ``_lo``/``_hi``, its rank and the paired difference with the
  baseline, one point per export that found the study changed (step 0, 1, ...); the report
  (``ablate report``: Markdown, HTML, JSON and its figures) as artifacts under ``report/``.
- A nested run per ablate run (trial x seed, and each seed's baseline, control and Stage 1): params
  fix, scale, seed, role, trial and the spec's keys; every per-step metric with its step; the run's
  summary numbers with their intervals as metrics; MLflow's status from the run's.

Idempotent: every run carries the tag ``ablate.key`` (the study's identity, and the run's id) and
``ablate.digest`` (what the run's row says now: status, start, end). A second export finds them:
an unchanged run is left as it is, a changed one (it finished since, or was run again) is
replaced, nothing is logged twice. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from ablate.specdiff import flat_keys, show
from ablate.store.schema import StudyModel

EXPERIMENT = "ablate"
KEY_TAG, DIGEST_TAG, STEP_TAG = "ablate.key", "ablate.digest", "ablate.export_step"
PARENT_TAG = "mlflow.parentRunId"
_BATCH = 1000  # metrics per log_batch (MLflow's own limit)
_PARAMS = 100  # params per log_batch
_STATUS = {"complete": "FINISHED", "failed": "FAILED", "pruned": "KILLED", "running": "RUNNING"}
_ROLE_NAMES = {"baseline": "baseline", "control": "control", "stage1": "stage1"}
_RUN_INFO = ("run_id", "role", "trial_number", "seed", "fix", "scale", "status", "steps", "judged_group",
             "started_at", "finished_at", "study")  # fmt: skip


@dataclass
class StudyExport:
    study: str
    parent_run_id: str
    parent: str  # "created", "updated" or "unchanged"
    created: int = 0
    replaced: int = 0
    unchanged: int = 0
    artifacts: list[str] = field(default_factory=list)


def metric_key(text: str) -> str:
    """A name MLflow accepts as a metric or param key (letters, digits, _ - . / : and spaces)."""
    return re.sub(r"[^\w.\-/: ]", "_", text)


def _ms(when: Any) -> int | None:
    if when is None or (isinstance(when, float) and math.isnan(when)) or str(when) in ("NaT", "None"):
        return None
    if not isinstance(when, datetime):
        when = datetime.fromisoformat(str(when))
    return int(when.replace(tzinfo=when.tzinfo or timezone.utc).timestamp() * 1000)


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _digest(*parts: Any) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _study_key(engine: Engine, name: str) -> tuple[str, str]:
    """(a key that names this study wherever it is copied to, its spec text)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(StudyModel.optuna_study_name, StudyModel.created_at, StudyModel.spec_hash, StudyModel.spec_text)
            .where(StudyModel.name == name)
        ).one()  # fmt: skip
    return _digest(name, row.optuna_study_name, row.created_at, row.spec_hash), row.spec_text or ""


def _params(values: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    out = []
    for key, value in values.items():
        text = value if isinstance(value, str) else show(value)  # lists as the spec writes them
        out.append(Param(metric_key(key), text if len(text) <= 6000 else text[:5997] + "..."))
    return out


def _log(client: Any, run_id: str, metrics: list[Any] = (), params: list[Any] = ()) -> None:
    metrics, params = list(metrics), list(params)
    for start in range(0, max(len(metrics), 1), _BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + _BATCH])
    for start in range(0, len(params), _PARAMS):
        client.log_batch(run_id, params=params[start : start + _PARAMS])


def _existing(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _run_label(run: dict[str, Any]) -> str:
    role = str(run["role"])
    if role in _ROLE_NAMES:
        return f"{_ROLE_NAMES[role]} seed {int(run['seed'])}"
    scale = _number(run.get("scale"))
    fix = str(run["fix"]) + ("" if scale is None else f" s={scale:g}")
    return f"trial {int(run['trial_number'])} {fix} seed {int(run['seed'])}"


def _parent_metrics(fixes: Any, objectives: Sequence[str], step: int, when: int) -> list[Any]:
    """The per-fix table as metrics: ``<fix>/<column>`` for each objective with its interval, the
    rank and the paired difference with the baseline."""
    from mlflow.entities import Metric

    from ablate.ranking import REFERENCE_LABELS

    names = {label: role for role, label in REFERENCE_LABELS.items()}
    columns = [c for m in objectives for c in (m, f"{m}_lo", f"{m}_hi")]
    columns += ["rank", "n_seeds", "vs_baseline_diff", "vs_baseline_diff_lo", "vs_baseline_diff_hi"]
    out = []
    for row in fixes.to_dict(orient="records"):
        fix = metric_key(names.get(str(row["fix"]), str(row["fix"])))
        for column in columns:
            value = _number(row.get(column))
            if value is not None:
                out.append(Metric(f"{fix}/{column}", value, when, step))
    return out


def _run_metrics(run: dict[str, Any], steps: Any, summary_columns: Sequence[str], when: int) -> list[Any]:
    from mlflow.entities import Metric

    out = []
    if steps is not None:
        for name, step, value in zip(steps["name"], steps["step"], steps["value"]):
            out.append(Metric(metric_key(str(name)), float(value), when, int(step)))
    last = int(_number(run.get("steps")) or 0)  # a summary is the run's value at its end
    for column in summary_columns:
        value = _number(run.get(column))
        if value is not None:  # a number never measured is no metric
            out.append(Metric(metric_key(column), value, when, last))
    return out


def export_study(
    client: Any,
    experiment_id: str,
    engine: Engine,
    name: str,
    storage: str,
    report: bool = True,
    program: str = "ablate",
) -> StudyExport:
    """One study into the experiment: its parent run (found by its key, else created) and a nested
    run per ablate run, each created, replaced (changed since) or left (unchanged)."""
    from ablate.objectives import known_objectives
    from ablate.store import query as q

    key, spec_text = _study_key(engine, name)
    settings = q.study_settings(engine, name)
    objectives = known_objectives(settings["objectives"])
    _, fixes, runs = q.summary_frames(engine, name)
    spec = flat_keys(spec_text)
    records = runs.to_dict(orient="records")
    study_digest = _digest(*sorted((int(r["run_id"]), str(r["status"]), str(r["finished_at"])) for r in records))

    found = _existing(client, experiment_id, f"tags.`{KEY_TAG}` = '{key}'")
    parent = found[0] if found else None
    now = _ms(datetime.now(timezone.utc)) or 0
    if parent is None:
        parent = client.create_run(
            experiment_id,
            start_time=min((_ms(r["started_at"]) or now for r in records), default=now),
            run_name=name,
            tags={KEY_TAG: key, "ablate.study": name, "ablate.storage": storage},
        )
        state, step = "created", 0
        _log(client, parent.info.run_id, params=_params({"study": name, "objectives": ",".join(objectives), **spec}))
    else:
        state = "unchanged" if parent.data.tags.get(DIGEST_TAG) == study_digest else "updated"
        step = int(parent.data.tags.get(STEP_TAG, "0")) + 1
    parent_id = parent.info.run_id
    result = StudyExport(name, parent_id, state)
    if state != "unchanged":
        # the per-fix table as it stands: one point per export that found the study changed
        _log(client, parent_id, metrics=_parent_metrics(fixes, objectives, step, now))
        client.set_tag(parent_id, STEP_TAG, str(step))
        recommended = [str(r["fix"]) for r in fixes.to_dict(orient="records") if r.get("recommended") is True]
        client.set_tag(parent_id, "ablate.recommended", recommended[0] if recommended else "none")

    nested = {
        r.data.tags.get(KEY_TAG): r for r in _existing(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_id}'")
    }
    summary_columns = [c for c in runs.columns if c not in _RUN_INFO and runs[c].dtype.kind == "f"]
    todo = []
    for run in records:
        run_key = f"{key}/{int(run['run_id'])}"
        digest = _digest(run["status"], run["started_at"], run["finished_at"])
        old = nested.get(run_key)
        if old is not None and old.data.tags.get(DIGEST_TAG) == digest:
            result.unchanged += 1
            continue
        if old is not None:
            client.delete_run(old.info.run_id)  # replaced: the ablate run changed since the last export
            result.replaced += 1
        else:
            result.created += 1
        todo.append((run, run_key, digest))
    for start in range(0, len(todo), 200):  # their steps in chunks: memory follows the chunk, not the study
        chunk = todo[start : start + 200]
        steps = q.every_step_metric_for_runs(engine, [int(r["run_id"]) for r, _, _ in chunk])
        by_run = dict(tuple(steps.groupby("run_id"))) if not steps.empty else {}
        for run, run_key, digest in chunk:
            _nested_run(client, experiment_id, parent_id, run, run_key, digest, by_run.get(int(run["run_id"])),
                        summary_columns, spec, now)  # fmt: skip
    client.set_tag(parent_id, DIGEST_TAG, study_digest)
    if report:
        result.artifacts = _log_report(client, parent_id, engine, name, storage, program)
    client.set_terminated(
        parent_id, "FINISHED", end_time=max((_ms(r["finished_at"]) or 0 for r in records), default=now) or now
    )
    return result


def _nested_run(client, experiment_id, parent_id, run, run_key, digest, steps, summary_columns, spec, now) -> None:
    started = _ms(run["started_at"]) or now
    child = client.create_run(
        experiment_id,
        start_time=started,
        run_name=_run_label(run),
        tags={PARENT_TAG: parent_id, KEY_TAG: run_key, DIGEST_TAG: digest, "ablate.run_id": str(int(run["run_id"]))},
    )
    trial = _number(run.get("trial_number"))
    params = {
        "fix": run["fix"],
        "scale": "" if _number(run.get("scale")) is None else f"{float(run['scale']):g}",
        "seed": int(run["seed"]),
        "role": run["role"],
        "trial": "" if trial is None else int(trial),
        "judged_group": run.get("judged_group") or "",
        **spec,
    }
    _log(client, child.info.run_id, _run_metrics(run, steps, summary_columns, started), _params(params))
    status = _STATUS.get(str(run["status"]), "FINISHED")
    if status != "RUNNING":
        client.set_terminated(child.info.run_id, status, end_time=_ms(run["finished_at"]) or now)


def _log_report(client: Any, parent_id: str, engine: Engine, name: str, storage: str, program: str) -> list[str]:
    """``ablate report`` of the study (Markdown, HTML, JSON, figures) as the parent run's artifacts."""
    from ablate.report import write_report

    with tempfile.TemporaryDirectory(prefix="ablate-report-") as folder:
        files = write_report(engine, name, folder, storage, program)
        client.log_artifacts(parent_id, folder, artifact_path="report")
        return [f"report/{Path(p).name}" for p in (files.markdown, files.html, files.json, *files.figures)]


def open_client(tracking_uri: str, experiment: str) -> tuple[Any, str]:
    """(an MlflowClient on ``tracking_uri``, the id of ``experiment``, created when missing).
    ImportError without mlflow; ValueError, one line, for a tracking store that cannot be used."""
    import mlflow  # noqa: F401 - the optional extra; ImportError says so to the caller
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("file:") or "://" not in tracking_uri:
        # MLflow 3 asks for an opt-in to its file store; naming a file: URI here is that choice
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    except MlflowException as exc:
        raise ValueError(" ".join(str(exc.message).split())) from None
    return client, experiment_id


def export(
    engine: Engine,
    tracking_uri: str,
    studies: Sequence[str] | None = None,
    experiment: str = EXPERIMENT,
    report: bool = True,
    storage: str = "",
    program: str = "ablate",
    on_study: Callable[[StudyExport], None] | None = None,
) -> list[StudyExport]:
    """Export the named studies (default: every study in the database) to the tracking store."""
    from ablate.store.catalog import resolve_study, study_rows

    with engine.connect() as conn:
        names = [resolve_study(conn, s)[1] for s in studies] if studies else [r.name for r in study_rows(engine) or []]
    if not names:
        raise LookupError("no studies to export")
    client, experiment_id = open_client(tracking_uri, experiment)
    done = []
    for name in names:
        done.append(export_study(client, experiment_id, engine, name, storage, report, program))
        if on_study is not None:
            on_study(done[-1])
    return done
