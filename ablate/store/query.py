"""Read-side queries: the stored results as pandas DataFrames (for the CLI, plots and notebooks).

Every function takes an Engine and a study name (None = the most recently created study), decodes the
non-finite encoding back to NaN/inf (:mod:`ablate.store.encode`), and never writes. Aggregates (means,
standard deviations with ddof=1, Student-t intervals from :mod:`ablate.stats`) are over finite values
only; a diverged run still shows its NaN/inf in :func:`runs_frame`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, case, func, inspect, select, text

from ablate.objectives import DEFAULT_OBJECTIVES, OBJECTIVES, column_interval, trial_interval
from ablate.stats import SCOPE_SEEDS, SCOPE_WITHIN
from ablate.store.encode import decode_fields, decode_float, decode_float_lists
from ablate.store.engine import display_url, is_sqlite
from ablate.store.schema import (
    GROUPS,
    PROBE_FLOAT_FIELDS,
    RUN_FLOAT_FIELDS,
    ProbePointModel,
    RunModel,
    StepMetricModel,
    StudyModel,
)

_STATUS_SEVERITY = {"failed": 3, "pruned": 2, "running": 1, "complete": 0}
_RUN_INFO = ("run_id", "role", "trial_number", "seed", "fix", "scale")


# --------------------------------------------------------------------------------------------- helpers


def _resolve_study(conn: Connection, study: str | None) -> tuple[int, str]:
    """(id, name) of the named study, or of the latest one when ``study`` is None."""
    url = display_url(conn.engine)
    if not inspect(conn).has_table(StudyModel.__tablename__):
        raise LookupError(f"no ablate studies in {url} (it has no {StudyModel.__tablename__} table)")
    if study is None:
        stmt = select(StudyModel.id, StudyModel.name).order_by(StudyModel.created_at.desc(), StudyModel.id.desc())
        row = conn.execute(stmt.limit(1)).first()
        if row is None:
            raise LookupError(f"no studies in {url}")
        return int(row[0]), str(row[1])
    row = conn.execute(select(StudyModel.id, StudyModel.name).where(StudyModel.name == study)).first()
    if row is None:
        names = list(conn.scalars(select(StudyModel.name).order_by(StudyModel.created_at, StudyModel.id)))
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        raise LookupError(f"no study named {study!r} in {url}; studies: {shown or '(none)'}")
    return int(row[0]), str(row[1])


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    return arr[np.isfinite(arr)]


def _mean(values: Any) -> float:
    arr = _finite(values)
    return float(arr.mean()) if arr.size else math.nan


def _std(values: Any) -> float:
    arr = _finite(values)
    return float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def _verdict(ratio: float, threshold: float) -> str | None:
    if not (math.isfinite(ratio) and math.isfinite(threshold)):
        return None
    return "OK" if ratio >= threshold else "CAUTION"


def _flags(nonfinite: str | None) -> dict[str, str]:
    return json.loads(nonfinite) if nonfinite else {}


# ------------------------------------------------------------------------------------------- studies


def list_studies(engine: Engine) -> pd.DataFrame:
    """One row per study, oldest first: name, optuna_study_name, created_at, n_trials (trials whose
    runs are all complete), n_runs, spec_hash, git_revision."""
    columns = ["name", "optuna_study_name", "created_at", "n_trials", "n_runs", "spec_hash", "git_revision"]
    with engine.connect() as conn:
        if not inspect(conn).has_table(StudyModel.__tablename__):
            return pd.DataFrame(columns=columns)
        per_trial = (
            select(
                RunModel.study_id,
                RunModel.trial_number,
                func.count().label("n"),
                func.sum(case((RunModel.status == "complete", 1), else_=0)).label("n_ok"),
            )
            .where(RunModel.role == "trial")
            .group_by(RunModel.study_id, RunModel.trial_number)
            .subquery()
        )
        n_trials = (
            select(per_trial.c.study_id, func.count().label("n_trials"))
            .where(per_trial.c.n == per_trial.c.n_ok)
            .group_by(per_trial.c.study_id)
            .subquery()
        )
        n_runs = select(RunModel.study_id, func.count().label("n_runs")).group_by(RunModel.study_id).subquery()
        stmt = (
            select(
                StudyModel.name,
                StudyModel.optuna_study_name,
                StudyModel.created_at,
                func.coalesce(n_trials.c.n_trials, 0),
                func.coalesce(n_runs.c.n_runs, 0),
                StudyModel.spec_hash,
                StudyModel.git_revision,
            )
            .outerjoin(n_trials, n_trials.c.study_id == StudyModel.id)
            .outerjoin(n_runs, n_runs.c.study_id == StudyModel.id)
            .order_by(StudyModel.created_at, StudyModel.id)
        )
        rows = conn.execute(stmt).all()
    df = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    return df.astype({"n_trials": "int64", "n_runs": "int64"})


def latest_study(engine: Engine) -> str:
    """Name of the most recently created study (LookupError when there is none)."""
    with engine.connect() as conn:
        return _resolve_study(conn, None)[1]


def study_settings(engine: Engine, study: str | None = None) -> dict[str, Any]:
    """What the plots need from a study's stored spec: the ratio and slope metrics it optimised and
    the probe threshold. Read from the stored objectives and spec text, so a database is self-describing."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    with engine.connect() as conn:
        study_id, name = _resolve_study(conn, study)
        row = conn.execute(select(StudyModel.objectives, StudyModel.spec_text).where(StudyModel.id == study_id)).one()
    metrics = [o["metric"] for o in json.loads(row.objectives or "[]")]
    try:
        spec = tomllib.loads(row.spec_text or "")
    except tomllib.TOMLDecodeError:
        spec = {}
    probe, study_sec = spec.get("probe", {}), spec.get("study", {})
    threshold = float(probe.get("threshold", 0.8))
    return {
        "study": name,
        "objectives": metrics,
        "directions": {m: OBJECTIVES[m].direction for m in metrics if m in OBJECTIVES},
        "threshold": threshold,
        "seeds": [int(x) for x in study_sec.get("seeds", [0])],
        "group": str(probe.get("group", "layers")),
    }


# ---------------------------------------------------------------------------------------------- runs

RUNS_COLUMNS = [
    "study",
    "run_id",
    "role",
    "trial_number",
    "seed",
    "fix",
    "scale",
    "status",
    "steps",
    "packed_arms",
    "judged_group",
    "frozen",
    *RUN_FLOAT_FIELDS,
    "verdict",
    "device",
    "error",
    "started_at",
    "finished_at",
]


def _run_identity() -> tuple[Any, ...]:
    """The columns that say which run a row belongs to (labelled as in ``_RUN_INFO``)."""
    return (
        RunModel.id.label("run_id"),
        RunModel.role,
        RunModel.trial_number,
        RunModel.seed,
        RunModel.fix,
        RunModel.scale,
    )


def _runs(conn: Connection, study_id: int, study_name: str) -> pd.DataFrame:
    stmt = (
        select(
            *_run_identity(),
            RunModel.status,
            RunModel.steps,
            RunModel.packed_arms,
            RunModel.judged_group,
            RunModel.frozen,
            *(getattr(RunModel, f) for f in RUN_FLOAT_FIELDS),
            RunModel.verdict,
            RunModel.device,
            RunModel.error,
            RunModel.started_at,
            RunModel.finished_at,
            RunModel.nonfinite,
        )
        .where(RunModel.study_id == study_id)
        .order_by(RunModel.role.desc(), RunModel.trial_key, RunModel.seed)  # trials first, then baselines
    )
    records = []
    for row in conn.execute(stmt).mappings():
        rec = dict(row)
        rec.update(decode_fields(rec, RUN_FLOAT_FIELDS, rec.pop("nonfinite")))
        rec["study"] = study_name
        records.append(rec)
    df = pd.DataFrame.from_records(records, columns=RUNS_COLUMNS)
    df = df.astype(
        {
            "run_id": "int64",
            "trial_number": "Int64",
            "seed": "int64",
            "scale": "float64",
            "steps": "Int64",
            "packed_arms": "Int64",
            **dict.fromkeys(RUN_FLOAT_FIELDS, "float64"),
        }
    )
    return df[RUNS_COLUMNS]


def runs_frame(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per run (trial x seed, the baseline and control of each seed) with every summary
    column, NaN/inf restored. The ``train_*``, ``adapter_gain_rel/diff`` and ``loss_slope_rel``
    columns compare the run with the no-branch baseline run of the same seed."""
    with engine.connect() as conn:
        study_id, name = _resolve_study(conn, study)
        return _runs(conn, study_id, name)


def _optuna_states(conn: Connection, study_id: int) -> dict[int, str] | None:
    """Optuna's state of each trial of the study ('complete', 'pruned', 'fail', ...), read from
    Optuna's own tables by SQL (no optuna import); None when this database has no Optuna tables."""
    tables = set(inspect(conn).get_table_names())
    if not {"trials", "studies"} <= tables:
        return None
    optuna_name = conn.execute(select(StudyModel.optuna_study_name).where(StudyModel.id == study_id)).scalar_one()
    rows = conn.execute(
        text(
            "SELECT t.number, t.state FROM trials t JOIN studies s ON s.study_id = t.study_id"
            " WHERE s.study_name = :name"
        ),
        {"name": optuna_name},
    ).all()
    if not rows:
        return None
    return {int(n): str(state).split(".")[-1].lower() for n, state in rows}


def _metric_columns(rows: list[dict[str, Any]], objectives: Sequence[str], threshold: float) -> dict[str, Any]:
    """The metric columns of a trial (or reference arm) from its complete seeds' run rows."""
    rec: dict[str, Any] = {}
    scopes = set()
    for name in dict.fromkeys([*objectives, *DEFAULT_OBJECTIVES]):  # the plots' default axes always exist
        ci = trial_interval(name, rows)
        rec[name], rec[f"{name}_lo"], rec[f"{name}_hi"] = ci.estimate, ci.lo, ci.hi
        scopes.add(ci.scope)
    for column, ratio in (
        ("adapter_gain", False),
        ("adapter_gain_rel", False),
        ("adapter_gain_diff", False),
        ("train_grad_ratio", True),
        ("train_update_ratio", True),
        ("grad_ratio_init", True),
    ):
        ci = column_interval(column, rows, ratio)
        rec.setdefault(column, ci.estimate)
        rec.setdefault(f"{column}_lo", ci.lo)
        rec.setdefault(f"{column}_hi", ci.hi)
    for g in GROUPS:
        for column in (f"train_grad_ratio_{g}", f"train_update_ratio_{g}", f"grad_ratio_init_{g}"):
            rec[column] = column_interval(column, rows, ratio=True).estimate
        rec[f"grad_share_init_{g}"] = _mean([r.get(f"grad_share_init_{g}") for r in rows])
    rec["grad_ratio_mean"] = column_interval("grad_ratio_mean", rows, ratio=True).estimate
    for column in ("loss_slope", "loss_slope_rel", "loss_first", "loss_last"):
        rec[column] = _mean([r.get(column) for r in rows])
    rec["loss_slope_std"] = _std([r.get("loss_slope") for r in rows])
    rec["ci_scope"] = SCOPE_SEEDS if len(rows) > 1 else (SCOPE_WITHIN if rows else None)
    rec["threshold"] = threshold
    rec["verdict"] = _verdict(rec["grad_ratio_init"], threshold)
    return rec


TRIALS_ID_COLUMNS = ["study", "trial_number", "fix", "scale", "status", "ranked", "n_seeds", "seeds_wanted"]
METRIC_COLUMNS = [
    "adapter_gain", "adapter_gain_lo", "adapter_gain_hi", "dilution_train", "dilution_train_lo", "dilution_train_hi",
    "adapter_gain_rel",
    "adapter_gain_diff", "adapter_gain_diff_lo", "adapter_gain_diff_hi",
    "train_grad_ratio", "train_grad_ratio_lo", "train_grad_ratio_hi",
    *(f"train_grad_ratio_{g}" for g in GROUPS),
    "train_update_ratio", "train_update_ratio_lo", "train_update_ratio_hi",
    *(f"train_update_ratio_{g}" for g in GROUPS),
    "grad_ratio_init", "grad_ratio_init_lo", "grad_ratio_init_hi",
    *(f"grad_ratio_init_{g}" for g in GROUPS),
    *(f"grad_share_init_{g}" for g in GROUPS),
    "grad_ratio_mean", "loss_slope", "loss_slope_std", "loss_slope_rel", "loss_first", "loss_last",
    "ci_scope", "threshold", "verdict",
]  # fmt: skip


def _ordered(records: list[dict[str, Any]], head: list[str], objectives: Sequence[str]) -> pd.DataFrame:
    obj_cols = [c for m in objectives for c in (m, f"{m}_lo", f"{m}_hi")]
    columns = [*head, *obj_cols, *[c for c in METRIC_COLUMNS if c not in obj_cols], "wall_s"]
    return pd.DataFrame.from_records(records, columns=list(dict.fromkeys(columns)))


def trials_frame(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per Optuna trial (its seeds aggregated); the table ``ablate query`` shows.

    ``status`` is Optuna's state where the database has Optuna's tables (so the two never disagree),
    else the worst run status (failed > pruned > running). ``ranked`` is True only for a complete
    trial with a complete run for every seed of the spec: only those may be compared or called best.
    Each objective of the study comes with its 95% interval (``<name>_lo/_hi``): over seeds when there
    are several (``ci_scope`` 'seeds'), else within the one seed ('within-seed'). Ratios are geometric
    means over seeds; ``adapter_gain_diff`` is paired with the baseline by seed (and by held-out batch).
    """
    settings = study_settings(engine, study)
    with engine.connect() as conn:
        study_id, name = _resolve_study(conn, study)
        runs = _runs(conn, study_id, name)
        states = _optuna_states(conn, study_id)
    objectives = [m for m in settings["objectives"] if m in OBJECTIVES]
    wanted = set(settings["seeds"])
    runs = runs[runs["role"] == "trial"]
    records = []
    for trial_number, g in runs.groupby("trial_number", sort=True):
        ok = g[g["status"] == "complete"]
        worst = max(g["status"], key=lambda st: _STATUS_SEVERITY.get(st, 4))
        status = "complete" if (g["status"] == "complete").all() else worst
        if states is not None and int(trial_number) in states:
            status = {"fail": "failed"}.get(states[int(trial_number)], states[int(trial_number)])
        complete_seeds = set(ok["seed"].astype(int))
        ranked = status == "complete" and wanted <= complete_seeds
        rows = ok.to_dict(orient="records")
        records.append(
            {
                "study": name,
                "trial_number": int(trial_number),
                "fix": g["fix"].iloc[0],
                "scale": g["scale"].iloc[0],
                "status": status,
                "ranked": bool(ranked),
                "n_seeds": len(complete_seeds),
                "seeds_wanted": len(wanted),
                **_metric_columns(rows, objectives, settings["threshold"]),
                "wall_s": float(g["wall_s"].sum(min_count=1)),
            }
        )
    df = _ordered(records, TRIALS_ID_COLUMNS, objectives)
    return df.astype(
        {"trial_number": "int64", "n_seeds": "int64", "seeds_wanted": "int64", "scale": "float64", "ranked": "bool"}
    )


# ---------------------------------------------------------------------------------------------- fixes

REFERENCE_LABELS = {"baseline": "no-branch (baseline)", "control": "frozen-adapters (control)"}


def _better(direction: str, a: float, b: float) -> bool:
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a > b if direction == "maximize" else a < b


def group_by_fix(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per fix: its best *ranked* trial (by the study's first objective) with that trial's
    intervals over seeds, and how many ranked trials the fix has; then the references, the no-branch
    baseline and the frozen-adapter control, over their seeds. Different scales of a fix are different
    arms, so they are never pooled as replicates; unranked (pruned, failed, incomplete) trials never
    count. Rows: the references first, then the fixes by name.
    """
    settings = study_settings(engine, study)
    trials = trials_frame(engine, study)
    objectives = [m for m in settings["objectives"] if m in OBJECTIVES]
    primary = objectives[0] if objectives else "loss_slope"
    direction = OBJECTIVES[primary].direction
    with engine.connect() as conn:
        study_id, name = _resolve_study(conn, study)
        runs = _runs(conn, study_id, name)
    records = []
    for role, label in REFERENCE_LABELS.items():
        ok = runs[(runs["role"] == role) & (runs["status"] == "complete")]
        if ok.empty:
            continue
        rows = ok.to_dict(orient="records")
        records.append(
            {
                "study": name,
                "fix": label,
                "n_trials": 0,
                "n_unranked": 0,
                "best_trial": None,
                "scale": math.nan,
                "n_seeds": len(rows),
                **_metric_columns(rows, objectives, settings["threshold"]),
                "wall_s": float(ok["wall_s"].sum(min_count=1)),
            }
        )
    for fix, g in trials.groupby("fix", sort=True):
        ranked = g[g["ranked"]]
        best = None
        for _, row in ranked.iterrows():
            if best is None or _better(direction, row[primary], best[primary]):
                best = row
        rec = {"study": name, "fix": fix, "n_trials": len(ranked), "n_unranked": len(g) - len(ranked)}
        if best is None:
            rec.update({"best_trial": None, "scale": math.nan, "n_seeds": 0})
        else:
            rec.update(
                {k: best[k] for k in ("scale", "n_seeds", *METRIC_COLUMNS, "wall_s") if k in best.index}
                | {c: best[c] for m in objectives for c in (m, f"{m}_lo", f"{m}_hi")}
            )
            rec["best_trial"] = int(best["trial_number"])
        records.append(rec)
    head = ["study", "fix", "n_trials", "n_unranked", "best_trial", "scale", "n_seeds"]
    df = _ordered(records, head, objectives)
    return df.astype({"n_trials": "int64", "n_unranked": "int64", "best_trial": "Int64", "n_seeds": "int64"})


# ------------------------------------------------------------------------------- step metrics, probes


def step_metrics_frame(engine: Engine, study: str | None = None, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-step metrics in long format: run_id, role, trial_number, seed, fix, scale, step, name, value.

    ``names`` restricts to those metric names (e.g. ``["loss"]``); non-finite values come back as
    NaN/inf.
    """
    columns = [*_RUN_INFO, "step", "name", "value"]
    with engine.connect() as conn:
        study_id, _ = _resolve_study(conn, study)
        M = StepMetricModel
        stmt = (
            select(
                *_run_identity(),
                M.step,
                M.name,
                M.value,
                M.flag,
            )
            .join(RunModel, RunModel.id == M.run_id)
            .where(RunModel.study_id == study_id)
            .order_by(M.run_id, M.name, M.step)
        )
        if names is not None:
            stmt = stmt.where(M.name.in_(list(names)))
        rows = conn.execute(stmt).all()
    df = pd.DataFrame([tuple(r) for r in rows], columns=[*columns, "flag"])
    df = df.astype({"run_id": "int64", "trial_number": "Int64", "seed": "int64", "scale": "float64", "step": "int64"})
    value = df["value"].astype("float64")
    flagged = df["flag"].notna()
    if flagged.any():
        value[flagged] = df.loc[flagged, "flag"].map(lambda f: decode_float(None, f)).astype("float64")
    df["value"] = value
    return df[columns]


PROBE_COLUMNS = [*_RUN_INFO, "status", "step", "judged_group", *PROBE_FLOAT_FIELDS, "verdict", "per_batch_ratios"]


def probe_frame(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per probe point with its run's identity; ``per_batch_ratios`` is {group: [ratios]}."""
    P = ProbePointModel
    with engine.connect() as conn:
        study_id, _ = _resolve_study(conn, study)
        stmt = (
            select(
                *_run_identity(),
                RunModel.status,
                P.step,
                P.judged_group,
                *(getattr(P, f) for f in PROBE_FLOAT_FIELDS),
                P.verdict,
                P.per_batch_ratios,
                P.nonfinite,
            )
            .join(RunModel, RunModel.id == P.run_id)
            .where(RunModel.study_id == study_id)
            .order_by(RunModel.id, P.step)
        )
        records = []
        for row in conn.execute(stmt).mappings():
            rec = dict(row)
            rec.update(decode_fields(rec, PROBE_FLOAT_FIELDS, rec.pop("nonfinite")))
            rec["per_batch_ratios"] = decode_float_lists(rec["per_batch_ratios"])
            records.append(rec)
    df = pd.DataFrame.from_records(records, columns=PROBE_COLUMNS)
    return df.astype(
        {
            "run_id": "int64",
            "trial_number": "Int64",
            "seed": "int64",
            "scale": "float64",
            "step": "int64",
            **dict.fromkeys(PROBE_FLOAT_FIELDS, "float64"),
        }
    )


def _json_value(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_json_value(x) for x in v]
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, float | np.floating):
        f = float(v)
        if math.isnan(f):
            return None
        return f if math.isfinite(f) else ("inf" if f > 0 else "-inf")
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, pd.Timestamp | datetime):
        return v.isoformat()
    return v


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows as strict-JSON-safe dicts (for ``--json`` output).

    NaN and missing values become null, infinities the strings "inf"/"-inf" (so a diverged run is
    still visible), timestamps ISO strings, numpy scalars Python numbers; lists are converted inside.
    """
    return [{str(k): _json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


# ----------------------------------------------------------------------------------------- raw SQL

_LEXEMES = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?\*/)
    | (?P<literal>'(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\]|\$(?P<tag>\w*)\$.*?\$(?P=tag)\$)
    | (?P<open>/\*|['"`\[]|\$\w*\$)
    """,
    re.VERBOSE | re.DOTALL,
)
_ALLOWED_FIRST = {"select", "with", "explain"}
# Words that only appear in writing SQL: a WITH may wrap a DELETE (PostgreSQL), SELECT ... INTO creates a
# table, EXPLAIN ANALYZE runs its statement. (Not REPLACE or SET: replace() and set-returning functions.)
_FORBIDDEN = {
    "insert", "update", "delete", "merge", "into", "drop", "alter", "create", "truncate", "attach",
    "detach", "pragma", "vacuum", "reindex", "grant", "revoke", "copy", "call",
}  # fmt: skip


def _check_read_only_sql(sql: str) -> str:
    """The statement with any trailing ';' removed, or ValueError unless it is one read-only query."""

    def blank(m: re.Match[str]) -> str:
        if m.group("open"):
            raise ValueError("SQL has an unterminated string, quoted name or comment")
        # Same length, so positions in `code` are positions in `sql`. Literals become a non-blank filler so
        # that trimming trailing blanks below never cuts into a string at the end of the statement.
        return ("0" if m.group("literal") else " ") * len(m.group(0))

    code = _LEXEMES.sub(blank, sql)
    if not code.strip():
        raise ValueError("empty SQL")
    body = code.rstrip().rstrip(";").rstrip()
    if ";" in body:
        raise ValueError("only one SQL statement is allowed (found ';' between statements)")
    words = re.findall(r"[A-Za-z_][A-Za-z_0-9$]*", body)
    if not words or words[0].lower() not in _ALLOWED_FIRST:
        raise ValueError("only read-only queries are allowed: the statement must start with SELECT, WITH or EXPLAIN")
    bad = sorted({w.upper() for w in words if w.lower() in _FORBIDDEN})
    if bad:
        raise ValueError(f"only read-only queries are allowed; found {', '.join(bad)}")
    return sql[: len(body)]


def _execute_read_only(engine: Engine, sql: str) -> pd.DataFrame:
    """Run ``sql`` in a database-enforced read-only transaction that is always rolled back."""
    sqlite = is_sqlite(engine)
    with engine.connect() as conn:
        raw = conn.connection  # the pooled DBAPI connection; SQL text goes to the driver as-is
        raw.rollback()  # start clean (e.g. after a pool pre-ping that opened a transaction)
        cur = raw.cursor()
        try:
            cur.execute("PRAGMA query_only = ON" if sqlite else "SET TRANSACTION READ ONLY")
            try:
                cur.execute(sql)
                columns = [d[0] for d in cur.description] if cur.description else []
                rows = cur.fetchall() if cur.description else []
            except engine.dialect.loaded_dbapi.Error as exc:
                text = str(exc).strip()
                raise ValueError(f"SQL error: {text.splitlines()[0] if text else type(exc).__name__}") from exc
        finally:
            try:
                cur.close()
                raw.rollback()
                if sqlite:
                    reset = raw.cursor()
                    reset.execute("PRAGMA query_only = OFF")
                    reset.close()
            except Exception:
                conn.invalidate()  # never hand a read-only (or broken) connection back to the pool
                raise
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


def run_sql(engine: Engine, sql: str) -> pd.DataFrame:
    """Run one read-only query (SELECT / WITH / EXPLAIN) and return its rows.

    Checked twice: the text must be a single query without writing keywords (ValueError otherwise),
    and the database itself enforces it (SQLite ``PRAGMA query_only``; PostgreSQL ``SET TRANSACTION
    READ ONLY``); the transaction is always rolled back.
    """
    return _execute_read_only(engine, _check_read_only_sql(sql))
