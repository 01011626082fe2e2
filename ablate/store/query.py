"""Read-side queries: the stored results as pandas DataFrames (for the CLI, plots and notebooks).

Every function takes an Engine and a study name (None = the most recently created study), decodes the
non-finite encoding back to NaN/inf (:mod:`ablate.store.encode`), and never writes. Aggregates (means,
standard deviations with ddof=1, bootstrap CIs) are over finite values only; a diverged run still shows
its NaN/inf in :func:`runs_frame`.
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
from sqlalchemy import Connection, Engine, and_, case, func, inspect, select

from ablate.store.encode import decode_fields, decode_float, decode_float_list
from ablate.store.engine import display_url, is_sqlite
from ablate.store.schema import (
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


def _ci(values: Any, stat: str) -> tuple[float, float]:
    from ablate.train.metrics import bootstrap_ci  # lazy: keeps torch out of `ablate query` start-up

    return bootstrap_ci(sorted(_finite(values).tolist()), stat=stat)


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
    threshold = float(spec.get("probe", {}).get("threshold", 0.8))
    ratio = next((m for m in metrics if m.startswith("grad_ratio")), "grad_ratio_mean")
    slope = next((m for m in metrics if m.startswith("loss_slope")), "loss_slope")
    return {"study": name, "ratio_metric": ratio, "slope_metric": slope, "threshold": threshold, "objectives": metrics}


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
    *RUN_FLOAT_FIELDS,
    "loss_slope_rel",
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
    df = pd.DataFrame.from_records(records, columns=[c for c in RUNS_COLUMNS if c != "loss_slope_rel"])
    df = df.astype(
        {
            "run_id": "int64",
            "trial_number": "Int64",
            "seed": "int64",
            "scale": "float64",
            "steps": "Int64",
            **dict.fromkeys(RUN_FLOAT_FIELDS, "float64"),
        }
    )
    base = df[(df["role"] == "baseline") & (df["status"] == "complete")].set_index("seed")["loss_slope"]
    base = base[~base.index.duplicated()]
    df["loss_slope_rel"] = df["loss_slope"] - df["seed"].map(base).astype("float64")
    return df[RUNS_COLUMNS]


def runs_frame(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per run with every summary column (NaN/inf restored) and ``loss_slope_rel``.

    ``loss_slope_rel`` = loss_slope minus the loss_slope of the complete baseline run with the same
    seed (NaN when there is none): negative means the run learns faster than the no-branch model.
    """
    with engine.connect() as conn:
        study_id, name = _resolve_study(conn, study)
        return _runs(conn, study_id, name)


def _first_probes(conn: Connection, study_id: int) -> pd.DataFrame:
    """Each run's first probe point (normally step 0): run_id, threshold, per_batch_ratios."""
    P = ProbePointModel
    first = (
        select(P.run_id, func.min(P.step).label("step"))
        .join(RunModel, RunModel.id == P.run_id)
        .where(RunModel.study_id == study_id)
        .group_by(P.run_id)
        .subquery()
    )
    stmt = select(P.run_id, P.threshold, P.per_batch_ratios, P.nonfinite).join(
        first, and_(P.run_id == first.c.run_id, P.step == first.c.step)
    )
    records = [
        {
            "run_id": run_id,
            "threshold": decode_float(threshold, _flags(nonfinite).get("threshold")),
            "per_batch_ratios": decode_float_list(ratios),
        }
        for run_id, threshold, ratios, nonfinite in conn.execute(stmt)
    ]
    return pd.DataFrame.from_records(records, columns=["run_id", "threshold", "per_batch_ratios"])


# -------------------------------------------------------------------------------------------- trials

TRIALS_COLUMNS = [
    "study",
    "trial_number",
    "fix",
    "scale",
    "status",
    "n_seeds",
    "n_complete",
    "loss_slope",
    "loss_slope_std",
    "loss_slope_rel",
    "grad_ratio_init",
    "grad_ratio_init_lo",
    "grad_ratio_init_hi",
    "grad_ratio_init_std",
    "grad_ratio_mean",
    "grad_ratio_mean_std",
    "grad_ratio_final",
    "loss_first",
    "loss_last",
    "threshold",
    "verdict",
    "wall_s",
]


def trials_frame(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per Optuna trial (its seeds aggregated); the table ``ablate query`` shows.

    ``status`` is 'complete' only when every seed's run is complete, else the worst of failed > pruned >
    running. Numbers are over the complete seeds: means, ``*_std`` (ddof=1, NaN for one seed).
    ``grad_ratio_init_lo/hi`` is the single run's bootstrap CI for one seed; for several seeds, a
    bootstrap 95% CI of the median of the pooled step-0 per-batch ratios. ``verdict`` compares the mean
    grad_ratio_init with the stored probe threshold. ``wall_s`` sums every run of the trial.
    """
    with engine.connect() as conn:
        study_id, name = _resolve_study(conn, study)
        runs = _runs(conn, study_id, name)
        probes = _first_probes(conn, study_id)
    runs = runs[runs["role"] == "trial"]
    probes = probes.set_index("run_id")
    records = []
    for trial_number, g in runs.groupby("trial_number", sort=True):
        ok = g[g["status"] == "complete"]
        worst = max(g["status"], key=lambda s: _STATUS_SEVERITY.get(s, 4))
        status = "complete" if (g["status"] == "complete").all() else worst
        pooled: list[float] = []
        thresholds: list[float] = []
        ok_ids = set(ok["run_id"])
        for run_id in g["run_id"]:
            if run_id in probes.index:
                thresholds.append(probes.at[run_id, "threshold"])
                if run_id in ok_ids:
                    pooled.extend(probes.at[run_id, "per_batch_ratios"])
        if len(ok) == 1:
            lo, hi = float(ok["grad_ratio_init_lo"].iloc[0]), float(ok["grad_ratio_init_hi"].iloc[0])
        elif len(ok) > 1:
            lo, hi = _ci(pooled, "median")
        else:
            lo, hi = math.nan, math.nan
        threshold = next((t for t in thresholds if math.isfinite(t)), math.nan)
        ratio = _mean(ok["grad_ratio_init"])
        records.append(
            {
                "study": name,
                "trial_number": int(trial_number),
                "fix": g["fix"].iloc[0],
                "scale": g["scale"].iloc[0],
                "status": status,
                "n_seeds": int(g["seed"].nunique()),
                "n_complete": len(ok),
                "loss_slope": _mean(ok["loss_slope"]),
                "loss_slope_std": _std(ok["loss_slope"]),
                "loss_slope_rel": _mean(ok["loss_slope_rel"]),
                "grad_ratio_init": ratio,
                "grad_ratio_init_lo": lo,
                "grad_ratio_init_hi": hi,
                "grad_ratio_init_std": _std(ok["grad_ratio_init"]),
                "grad_ratio_mean": _mean(ok["grad_ratio_mean"]),
                "grad_ratio_mean_std": _std(ok["grad_ratio_mean"]),
                "grad_ratio_final": _mean(ok["grad_ratio_final"]),
                "loss_first": _mean(ok["loss_first"]),
                "loss_last": _mean(ok["loss_last"]),
                "threshold": threshold,
                "verdict": _verdict(ratio, threshold),
                "wall_s": float(g["wall_s"].sum(min_count=1)),
            }
        )
    df = pd.DataFrame.from_records(records, columns=TRIALS_COLUMNS)
    return df.astype({"trial_number": "int64", "n_seeds": "int64", "n_complete": "int64", "scale": "float64"})


# ---------------------------------------------------------------------------------------------- fixes

GROUP_COLUMNS = [
    "study",
    "fix",
    "n_runs",
    "n_trials",
    "loss_slope_mean",
    "loss_slope_lo",
    "loss_slope_hi",
    "loss_slope_rel_mean",
    "grad_ratio_init_mean",
    "grad_ratio_init_lo",
    "grad_ratio_init_hi",
    "grad_ratio_mean_mean",
    "grad_ratio_mean_lo",
    "grad_ratio_mean_hi",
    "best_scale",
    "best_trial",
]


def group_by_fix(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per fix type over its complete trial runs (all trials and seeds pooled).

    ``*_mean`` with a bootstrap 95% CI of the mean (``*_lo``/``*_hi``) over runs; ``best_scale`` and
    ``best_trial`` name the trial of that fix with the lowest mean loss_slope. The complete baseline
    runs appear as fix 'no-branch' (n_trials 0, no best scale). Rows: 'no-branch' first, then by name.
    """
    with engine.connect() as conn:
        study_id, name = _resolve_study(conn, study)
        runs = _runs(conn, study_id, name)
    runs = runs[runs["status"] == "complete"].copy()
    # Baseline runs carry the registry's reference name ('no-branch'); the store does not spell it out.
    baseline_fixes = set(runs.loc[runs["role"] == "baseline", "fix"])
    records = []
    for fix, g in runs.groupby("fix", sort=True):
        trials = g[g["role"] == "trial"]
        best_scale, best_trial = math.nan, None
        if not trials.empty:
            per_trial = trials.groupby("trial_number").agg(slope=("loss_slope", _mean), scale=("scale", "first"))
            per_trial = per_trial[np.isfinite(per_trial["slope"])]
            if not per_trial.empty:
                best_trial = int(per_trial["slope"].idxmin())
                best_scale = float(per_trial.at[best_trial, "scale"])
        rec: dict[str, Any] = {
            "study": name,
            "fix": fix,
            "n_runs": len(g),
            "n_trials": int(trials["trial_number"].nunique()),
            "loss_slope_rel_mean": _mean(g["loss_slope_rel"]),
            "best_scale": best_scale,
            "best_trial": best_trial,
        }
        for col in ("loss_slope", "grad_ratio_init", "grad_ratio_mean"):
            rec[f"{col}_mean"] = _mean(g[col])
            rec[f"{col}_lo"], rec[f"{col}_hi"] = _ci(g[col], "mean")
        records.append(rec)
    records.sort(key=lambda r: (r["fix"] not in baseline_fixes, r["fix"]))
    df = pd.DataFrame.from_records(records, columns=GROUP_COLUMNS)
    return df.astype({"n_runs": "int64", "n_trials": "int64", "best_scale": "float64", "best_trial": "Int64"})


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


PROBE_COLUMNS = [*_RUN_INFO, "status", "step", *PROBE_FLOAT_FIELDS, "verdict", "per_batch_ratios"]


def probe_frame(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per probe point with its run's identity; ``per_batch_ratios`` is a list of floats."""
    P = ProbePointModel
    with engine.connect() as conn:
        study_id, _ = _resolve_study(conn, study)
        stmt = (
            select(
                *_run_identity(),
                RunModel.status,
                P.step,
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
            rec["per_batch_ratios"] = decode_float_list(rec["per_batch_ratios"])
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
