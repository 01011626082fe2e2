"""Read-side queries: the stored results as pandas DataFrames (for the CLI, plots and notebooks).

Every function takes an Engine and a study name (None = the most recently created study), decodes the
non-finite encoding back to NaN/inf (:mod:`ablate.store.encode`), and never writes. Aggregates (means,
standard deviations with ddof=1, Student-t intervals from :mod:`ablate.stats`) are over finite values
only; a diverged run still shows its NaN/inf in :func:`runs_frame`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, inspect, or_, select

from ablate.jsonout import json_float, json_value
from ablate.objectives import OBJECTIVES, known_objectives
from ablate.store import catalog, readonly_sql, summaries
from ablate.store.catalog import latest_study, study_settings
from ablate.store.encode import decode_fields, decode_float, decode_float_lists
from ablate.store.groups import read_probe_groups, wide_columns
from ablate.store.schema import (
    EVAL_FIELDS,
    PROBE_FLOAT_FIELDS,
    PROBE_GROUP_COLUMNS,
    RUN_FLOAT_FIELDS,
    RUN_GROUP_COLUMNS,
    WORKER_FIELDS,
    ClassMetricModel,
    ProbePointModel,
    RunModel,
    StepMetricModel,
)
from ablate.store.summaries import REFERENCE_LABELS

DEFAULT_GROUPS = ("layers", "proj", "all")  # the AA-CLIP subject's groups and their union
_RUN_INFO = ("run_id", "role", "trial_number", "seed", "fix", "scale")
_resolve_study = catalog.resolve_study

__all__ = [
    "CLASS_COLUMNS",
    "METRIC_COLUMNS",
    "REFERENCE_LABELS",
    "RUNS_COLUMNS",
    "class_metrics_frame",
    "group_by_fix",
    "json_records",
    "latest_study",
    "list_studies",
    "probe_frame",
    "run_sql",
    "runs_frame",
    "step_metrics_for_runs",
    "step_metrics_frame",
    "study_settings",
    "trials_frame",
]


# ------------------------------------------------------------------------------------------- studies


def list_studies(engine: Engine) -> pd.DataFrame:
    """One row per study, oldest first: name, optuna_study_name, created_at, n_trials (trials whose
    runs are all complete), n_runs, spec_hash, git_revision."""
    columns = list(catalog.STUDY_COLUMNS)
    rows = catalog.study_rows(engine)
    if rows is None:
        return pd.DataFrame(columns=columns)
    df = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    return df.astype({"n_trials": "int64", "n_runs": "int64"})


# ---------------------------------------------------------------------------------------------- runs

RUNS_HEAD = [
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
]
RUNS_TAIL = ["verdict", "device", "error", "started_at", "finished_at", *WORKER_FIELDS]


def runs_columns(groups: Sequence[str]) -> list[str]:
    """The runs frame's columns for a study with these adapter groups (``all`` included)."""
    return [*RUNS_HEAD, *wide_columns(RUN_GROUP_COLUMNS, groups), *RUNS_TAIL]


# The AA-CLIP subject's (the frames of another subject name its groups instead).
RUNS_COLUMNS = runs_columns(DEFAULT_GROUPS)


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


def _runs_df(records: list[dict[str, Any]], groups: Sequence[str]) -> pd.DataFrame:
    columns = runs_columns(groups)
    df = pd.DataFrame.from_records(records, columns=columns)
    df = df.astype(
        {
            "run_id": "int64",
            "trial_number": "Int64",
            "seed": "int64",
            "scale": "float64",
            "steps": "Int64",
            "packed_arms": "Int64",
            "worker_pid": "Int64",
            **dict.fromkeys(RUN_FLOAT_FIELDS, "float64"),
            **dict.fromkeys(wide_columns(RUN_GROUP_COLUMNS, groups), "float64"),
        }
    )
    return df[columns]


def runs_frame(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per run (trial x seed, the baseline and control of each seed) with every summary
    column, NaN/inf restored. The ``train_*``, ``adapter_gain_rel/diff`` and ``loss_slope_rel``
    columns compare the run with the no-branch baseline run of the same seed."""
    with engine.connect() as conn:
        study_id, name = _resolve_study(conn, study)
        groups = catalog.settings(conn, study_id, name)["groups"]
        return _runs_df(summaries.run_records(conn, study_id, name, groups=groups), groups)


TRIALS_ID_COLUMNS = ["study", "trial_number", "fix", "scale", "status", "ranked", "n_seeds", "seeds_wanted"]


def metric_columns(groups: Sequence[str]) -> list[str]:
    """The trial and fix frames' metric columns for a study with these adapter groups."""
    per_group = lambda prefix: [f"{prefix}_{g}" for g in groups]  # noqa: E731
    return [
        "adapter_gain", "adapter_gain_lo", "adapter_gain_hi", "dilution_train", "dilution_train_lo",
        "dilution_train_hi", "adapter_gain_rel", "adapter_gain_diff", "adapter_gain_diff_lo", "adapter_gain_diff_hi",
        "train_grad_ratio", "train_grad_ratio_lo", "train_grad_ratio_hi", *per_group("train_grad_ratio"),
        "train_update_ratio", "train_update_ratio_lo", "train_update_ratio_hi", *per_group("train_update_ratio"),
        "grad_ratio_init", "grad_ratio_init_lo", "grad_ratio_init_hi", *per_group("grad_ratio_init"),
        *per_group("grad_share_init"),
        "grad_ratio_mean", "loss_slope", "loss_slope_lo", "loss_slope_hi", "loss_slope_std", "loss_slope_rel",
        "loss_first", "loss_last",
        *(f"{m}{end}" for m in EVAL_FIELDS for end in ("", "_lo", "_hi")),
        "ci_scope", "threshold", "verdict",
    ]  # fmt: skip


METRIC_COLUMNS = metric_columns(DEFAULT_GROUPS)  # the AA-CLIP subject's


def trial_metrics(groups: Sequence[str] = DEFAULT_GROUPS) -> tuple[str, ...]:
    """The metrics a trial can be drawn by (``ablate plot --x/--y``) in a study with these groups: the
    trials frame's value columns and every objective (one the study did not optimise is derived from
    its column: ablate/plot/extract.py)."""
    values = {c for c in metric_columns(groups) if not c.endswith(("_lo", "_hi"))}
    return tuple(sorted((values - {"ci_scope", "threshold", "verdict"}) | set(OBJECTIVES) | {"wall_s"}))


TRIAL_METRICS = trial_metrics()  # the AA-CLIP subject's
FIX_HEAD_COLUMNS = ["study", "fix", "rank", "recommended", "n_trials", "n_unranked", "best_trial", "scale", "n_seeds"]


def _ordered(
    records: list[dict[str, Any]], head: list[str], objectives: Sequence[str], groups: Sequence[str]
) -> pd.DataFrame:
    obj_cols = [c for m in objectives for c in (m, f"{m}_lo", f"{m}_hi")]
    columns = [*head, *obj_cols, *[c for c in metric_columns(groups) if c not in obj_cols], "wall_s"]
    return pd.DataFrame.from_records(records, columns=list(dict.fromkeys(columns)))


def _trial_records(
    conn: Any, study: str | None, runs: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any], int, str]:
    """The study's trial records (from ``runs``, or one SQL read of the trial runs' summary
    columns), its settings, id and name."""
    study_id, name = _resolve_study(conn, study)
    settings = catalog.settings(conn, study_id, name)
    objectives = known_objectives(settings["objectives"])
    if runs is None:
        runs = summaries.run_records(conn, study_id, name, roles=("trial",), groups=settings["groups"])
    trial_runs = [r for r in runs if r["role"] == "trial"]
    states = summaries.optuna_states(conn, study_id)
    records = summaries.trial_records(
        trial_runs, name, states, objectives, set(settings["seeds"]), settings["threshold"], settings["groups"]
    )
    return records, settings, study_id, name


def _trials_df(records: list[dict[str, Any]], objectives: Sequence[str], groups: Sequence[str]) -> pd.DataFrame:
    df = _ordered(records, TRIALS_ID_COLUMNS, objectives, groups)
    return df.astype(
        {"trial_number": "int64", "n_seeds": "int64", "seeds_wanted": "int64", "scale": "float64", "ranked": "bool"}
    )


def _objectives(settings: dict[str, Any]) -> list[str]:
    return known_objectives(settings["objectives"])


def trials_frame(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per Optuna trial (its seeds aggregated); the table ``ablate query`` shows.

    ``status`` is Optuna's state where the database has Optuna's tables (so the two never disagree),
    else the worst run status (failed > pruned > running). ``ranked`` is True only for a complete
    trial with a complete run for every seed of the spec: only those may be compared or called best.
    Each objective of the study comes with its 95% interval (``<name>_lo/_hi``): over seeds when there
    are several (``ci_scope`` 'seeds'), else within the one seed ('within-seed'). Ratios are geometric
    means over seeds; ``adapter_gain_diff`` is paired with the baseline by seed (and by held-out batch).
    """
    with engine.connect() as conn:
        records, settings, _, _ = _trial_records(conn, study)
    return _trials_df(records, _objectives(settings), settings["groups"])


# ---------------------------------------------------------------------------------------------- fixes


def _fix_records(
    conn: Any, study: str | None, runs: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(fix records, trial records, settings) from the study's runs (read here when not given)."""
    if runs is None:
        study_id, name = _resolve_study(conn, study)
        groups = catalog.settings(conn, study_id, name)["groups"]
        runs = summaries.run_records(conn, study_id, name, groups=groups)
    trials, settings, _, name = _trial_records(conn, study, runs)
    groups = settings["groups"]
    fixes = summaries.fix_records(
        trials, runs, name, _objectives(settings), settings["threshold"], metric_columns(groups), groups
    )
    return fixes, trials, settings


FIX_VERSUS_COLUMNS = ["vs_baseline", "vs_baseline_diff", "vs_baseline_diff_lo", "vs_baseline_diff_hi"]


def _fixes_df(records: list[dict[str, Any]], objectives: Sequence[str], groups: Sequence[str]) -> pd.DataFrame:
    obj_cols = [c for m in objectives for c in (m, f"{m}_lo", f"{m}_hi")]
    metrics = [c for c in metric_columns(groups) if c not in obj_cols]
    columns = [*FIX_HEAD_COLUMNS, *obj_cols, *FIX_VERSUS_COLUMNS, *metrics]
    df = pd.DataFrame.from_records(records, columns=list(dict.fromkeys([*columns, "wall_s"])))
    return df.astype(
        {"rank": "Int64", "recommended": "bool", "n_trials": "int64", "n_unranked": "int64", "best_trial": "Int64",
         "n_seeds": "int64"}
    )  # fmt: skip


def group_by_fix(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per fix: its best *ranked* trial by the study's first objective (ties: the better
    Pareto rank) with that trial's intervals over seeds, and how many ranked trials the fix has;
    before them the references, the no-branch baseline and the frozen control, over their seeds.
    Different scales of a fix are different arms, so they are never pooled as replicates; unranked
    (pruned, failed, incomplete) trials never count.

    Rows: the references, then the fixes by ``rank`` (best first on the first objective), then the
    fixes with no ranked trial. ``vs_baseline`` ('better', 'worse', '≈ base', or '-' with one seed)
    and ``vs_baseline_diff`` [``_lo``, ``_hi``] compare each row's first objective with the
    baseline's, paired by seed; ``recommended`` marks the fix whose trial ``ablate report``
    recommends (:mod:`ablate.ranking`).
    """
    with engine.connect() as conn:
        fixes, _, settings = _fix_records(conn, study)
    return _fixes_df(fixes, _objectives(settings), settings["groups"])


def summary_frames(engine: Engine, study: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``trials_frame``, ``group_by_fix`` and ``runs_frame`` from one read of the study's runs
    (what ``ablate plot`` needs)."""
    with engine.connect() as conn:
        study_id, name = _resolve_study(conn, study)
        groups = catalog.settings(conn, study_id, name)["groups"]
        runs = summaries.run_records(conn, study_id, name, groups=groups)
        fixes, trials, settings = _fix_records(conn, name, runs)
    objectives = _objectives(settings)
    return _trials_df(trials, objectives, groups), _fixes_df(fixes, objectives, groups), _runs_df(runs, groups)


# ------------------------------------------------------------------------------- step metrics, probes


_STEP_COLUMNS = [*_RUN_INFO, "step", "name", "value"]


def _steps_select() -> Any:
    M = StepMetricModel
    return (
        select(*_run_identity(), M.step, M.name, M.value, M.flag)
        .join(RunModel, RunModel.id == M.run_id)
        .order_by(M.run_id, M.name, M.step)
    )


def _steps_df(rows: list[Any]) -> pd.DataFrame:
    df = pd.DataFrame([tuple(r) for r in rows], columns=[*_STEP_COLUMNS, "flag"])
    df = df.astype({"run_id": "int64", "trial_number": "Int64", "seed": "int64", "scale": "float64", "step": "int64"})
    value = df["value"].astype("float64")
    flagged = df["flag"].notna()
    if flagged.any():
        value[flagged] = df.loc[flagged, "flag"].map(lambda f: decode_float(None, f)).astype("float64")
    df["value"] = value
    return df[_STEP_COLUMNS]


def step_metrics_frame(engine: Engine, study: str | None = None, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-step metrics in long format: run_id, role, trial_number, seed, fix, scale, step, name, value.

    ``names`` restricts to those metric names (e.g. ``["loss"]``); non-finite values come back as
    NaN/inf. This reads every run of the study: for a figure, :func:`step_metrics_for_runs` reads
    only the runs it draws.
    """
    with engine.connect() as conn:
        study_id, _ = _resolve_study(conn, study)
        stmt = _steps_select().where(RunModel.study_id == study_id)
        if names is not None:
            stmt = stmt.where(StepMetricModel.name.in_(list(names)))
        rows = conn.execute(stmt).all()
    return _steps_df(rows)


def step_metrics_for_runs(
    engine: Engine, run_ids: Sequence[int], names: Sequence[str] = (), prefix: str | None = None
) -> pd.DataFrame:
    """The per-step metrics of the given runs only, in :func:`step_metrics_frame`'s format: the
    metrics named in ``names``, plus those whose name starts with ``prefix`` (e.g. ``"gate/"``).

    Each run is found through the step table's primary key (run_id, step, name), so the cost
    follows the runs asked for, not the size of the study.
    """
    M = StepMetricModel
    wanted = []
    if names:
        wanted.append(M.name.in_(list(names)))
    if prefix:
        wanted.append(M.name.startswith(prefix, autoescape=True))
    return _steps_of_runs(engine, run_ids, or_(*wanted) if wanted else None)


def every_step_metric_for_runs(engine: Engine, run_ids: Sequence[int]) -> pd.DataFrame:
    """Every per-step metric of the given runs (and only theirs), in :func:`step_metrics_frame`'s
    format: what an export of those runs copies."""
    return _steps_of_runs(engine, run_ids, True)


def _steps_of_runs(engine: Engine, run_ids: Sequence[int], where: Any) -> pd.DataFrame:
    ids = sorted({int(i) for i in run_ids})
    rows: list[Any] = []
    if ids and where is not None:
        with engine.connect() as conn:
            for start in range(0, len(ids), 500):  # bounded IN lists on every backend
                chunk = ids[start : start + 500]
                stmt = _steps_select().where(StepMetricModel.run_id.in_(chunk))
                rows += conn.execute(stmt if where is True else stmt.where(where)).all()
    return _steps_df(rows)


def probe_columns(groups: Sequence[str]) -> list[str]:
    """The probe frame's columns for a study with these adapter groups."""
    middle = [*PROBE_FLOAT_FIELDS, *wide_columns(PROBE_GROUP_COLUMNS, groups)]
    return [*_RUN_INFO, "status", "step", "judged_group", *middle, "verdict", "per_batch_ratios"]


PROBE_COLUMNS = probe_columns(DEFAULT_GROUPS)  # the AA-CLIP subject's


def probe_frame(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per probe point with its run's identity; ``per_batch_ratios`` is {group: [ratios]}."""
    P = ProbePointModel
    with engine.connect() as conn:
        study_id, name = _resolve_study(conn, study)
        groups = catalog.settings(conn, study_id, name)["groups"]
        per_group = read_probe_groups(conn, study_id)
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
            rec.update(per_group.get((int(rec["run_id"]), int(rec["step"])), {}))
            records.append(rec)
    columns = probe_columns(groups)
    df = pd.DataFrame.from_records(records, columns=columns)
    return df.astype(
        {
            "run_id": "int64",
            "trial_number": "Int64",
            "seed": "int64",
            "scale": "float64",
            "step": "int64",
            **dict.fromkeys(columns[columns.index(PROBE_FLOAT_FIELDS[0]) : columns.index("verdict")], "float64"),
        }
    )


# ---------------------------------------------------------------------------------- class metrics

CLASS_COUNTS = ("images", "anomalous_images", "pixels", "anomalous_pixels")
CLASS_COLUMNS = ["study", *_RUN_INFO, "class_name", *EVAL_FIELDS, *CLASS_COUNTS, "note"]


def class_metrics_frame(engine: Engine, study: str | None = None) -> pd.DataFrame:
    """One row per evaluated run and class: its ``image_auroc`` ... ``pixel_ap`` (NaN where undefined,
    ``note`` saying why, e.g. 'no anomalous samples'), and the counts they rest on. Runs that were not
    evaluated have no rows; a database from before the evaluation has none at all."""
    C = ClassMetricModel
    with engine.connect() as conn:
        study_id, name = _resolve_study(conn, study)
        rows = []
        if C.__tablename__ in set(inspect(conn).get_table_names()):
            stmt = (
                select(*_run_identity(), C.class_name, C.metric, C.value, C.flag, C.note)
                .join(RunModel, RunModel.id == C.run_id)
                .where(RunModel.study_id == study_id)
                .order_by(RunModel.id, C.class_name)
            )
            rows = conn.execute(stmt).all()
    records: dict[tuple[int, str], dict[str, Any]] = {}
    notes: dict[tuple[int, str], dict[str, None]] = {}
    for r in rows:
        key = (int(r.run_id), r.class_name)
        rec = records.setdefault(
            key, {"study": name, **{k: getattr(r, k) for k in _RUN_INFO}, "class_name": r.class_name, "note": None}
        )
        rec[r.metric] = decode_float(r.value, r.flag)
        if r.note:
            notes.setdefault(key, {})[f"{r.metric.split('_')[0]}: {r.note}"] = None
    for key, parts in notes.items():
        records[key]["note"] = "; ".join(parts)
    df = pd.DataFrame.from_records(list(records.values()), columns=CLASS_COLUMNS)
    return df.astype(
        {
            "run_id": "int64",
            "trial_number": "Int64",
            "seed": "int64",
            "scale": "float64",
            **dict.fromkeys(EVAL_FIELDS, "float64"),
            **dict.fromkeys(CLASS_COUNTS, "Int64"),
        }
    )


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The frame's rows as strict-JSON-safe dicts (for ``--json`` output).

    NaN and missing values become null, infinities the strings "inf"/"-inf" (so a diverged run is
    still visible), timestamps ISO strings, numpy scalars Python numbers; lists are converted inside.
    Converted column by column (a float column needs no per-value type dispatch): 10,000 trials x 60
    columns take a tenth of the time of converting row by row.
    """
    keys = [str(k) for k in frame.columns]
    columns = []
    for i in range(frame.shape[1]):
        col = frame.iloc[:, i]
        values = col.tolist()
        if col.dtype == np.float64:
            columns.append([json_float(v, "text") for v in values])
        else:
            columns.append([json_value(v, "text") for v in values])
    return [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]


# ----------------------------------------------------------------------------------------- raw SQL


def run_sql(
    engine: Engine,
    sql: str,
    timeout_s: float = readonly_sql.DEFAULT_TIMEOUT_S,
    max_rows: int = readonly_sql.DEFAULT_MAX_ROWS,
    max_bytes: int = readonly_sql.DEFAULT_MAX_BYTES,
) -> pd.DataFrame:
    """Run one read-only query over the study tables and return its first rows (``ablate query --sql``).

    Checked by a SQL parser (one SELECT / WITH query, study tables only, pure functions only) and run
    in a database-enforced read-only transaction, always rolled back, stopped after ``timeout_s``
    seconds; the rows are streamed and reading stops at ``max_rows`` rows or ``max_bytes`` bytes
    held, so memory stays bounded; see :mod:`ablate.store.readonly_sql`. ``frame.attrs["cut"]`` is
    the :class:`~ablate.store.readonly_sql.Cut` saying where and why the rows stop short of the whole
    result, or None. Refusals and database errors raise SQLInputError (a ValueError).
    """
    result = readonly_sql.run_read_only(engine, sql, timeout_s, max_rows, max_bytes)
    frame = pd.DataFrame(result.rows, columns=result.columns)
    frame.attrs["cut"] = result.cut
    return frame
