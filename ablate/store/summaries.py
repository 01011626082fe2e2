"""Per-trial and per-fix summaries from the run rows: one SQL pass, then plain Python per trial.

Why not pandas per trial: a ``groupby`` loop costs about a millisecond per group, 10 s for 10,000
trials. The rows needed here are the runs' summary columns only (one row per run, never the
per-step table); SQL filters them by study and role and orders them by trial, so each trial is a
run of consecutive rows. The intervals stay in Python (Student-t quantiles and the ratio floor of
:mod:`ablate.stats` are not portable SQL), at a few microseconds per trial.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import groupby
from typing import Any

import numpy as np
from sqlalchemy import Connection, cast, inspect, null, select, text

from ablate import ranking
from ablate.objectives import DEFAULT_OBJECTIVES, OBJECTIVES, column_interval, trial_interval
from ablate.ranking import REFERENCE_LABELS
from ablate.stats import SCOPE_SEEDS, SCOPE_WITHIN
from ablate.store.encode import decode_fields
from ablate.store.groups import read_run_groups, wide_columns
from ablate.store.schema import (
    ADDED_RUN_COLUMNS,
    EVAL_FIELDS,
    RUN_FLOAT_FIELDS,
    RUN_GROUP_COLUMNS,
    WORKER_FIELDS,
    RunModel,
    StudyModel,
)

STATUS_SEVERITY = {"failed": 3, "pruned": 2, "running": 1, "complete": 0}
RUN_ORDER = (RunModel.role.desc(), RunModel.trial_key, RunModel.seed)  # trials, then control, baseline


def _run_columns(absent: frozenset[str] = frozenset()) -> tuple[Any, ...]:
    """The run columns the summaries read; ``absent`` ones (an older file) read as NULL."""

    def column(name: str) -> Any:
        # CAST(NULL AS type), not a bound NULL: PostgreSQL types an untyped NULL parameter as text
        if name in absent:
            return cast(null(), RunModel.__table__.c[name].type).label(name)
        return getattr(RunModel, name)

    floats = (column(f) for f in RUN_FLOAT_FIELDS)
    return (*RUN_COLUMNS_HEAD, *floats, *RUN_COLUMNS_TAIL, *(column(f) for f in WORKER_FIELDS))


RUN_COLUMNS_HEAD = (
    RunModel.id.label("run_id"),
    RunModel.role,
    RunModel.trial_number,
    RunModel.seed,
    RunModel.fix,
    RunModel.scale,
    RunModel.status,
    RunModel.steps,
    RunModel.packed_arms,
    RunModel.judged_group,
    RunModel.frozen,
)
RUN_COLUMNS_TAIL = (
    RunModel.verdict,
    RunModel.device,
    RunModel.error,
    RunModel.started_at,
    RunModel.finished_at,
    RunModel.nonfinite,
)
RUN_COLUMNS = _run_columns()


def absent_run_columns(conn: Connection) -> frozenset[str]:
    """The later-added run columns an older file lacks (read-only commands do not add them)."""
    have = {c["name"] for c in inspect(conn).get_columns(RunModel.__tablename__)}
    return frozenset(c for c in ADDED_RUN_COLUMNS if c not in have)


def run_records(
    conn: Connection, study_id: int, study_name: str, roles: Sequence[str] | None = None, groups: Sequence[str] = ()
) -> list[dict]:
    """The study's run rows (all roles, or ``roles``) as dicts, NaN/inf restored, in ``RUN_ORDER``, with
    each group's numbers (ablate_run_groups) under their wide names (NaN where a run has none)."""
    absent = absent_run_columns(conn)
    columns = _run_columns(absent) if absent else RUN_COLUMNS
    stmt = select(*columns).where(RunModel.study_id == study_id).order_by(*RUN_ORDER)
    if roles is not None:
        stmt = stmt.where(RunModel.role.in_(list(roles)))
    per_group, _ = read_run_groups(conn, study_id)
    blank = dict.fromkeys(wide_columns(RUN_GROUP_COLUMNS, groups), math.nan)
    records = []
    for row in conn.execute(stmt).mappings():
        rec = dict(row)
        rec.update(decode_fields(rec, RUN_FLOAT_FIELDS, rec.pop("nonfinite")))
        rec.update(blank)
        rec.update(per_group.get(int(rec["run_id"]), {}))
        rec["study"] = study_name
        records.append(rec)
    return records


def optuna_states(conn: Connection, study_id: int) -> dict[int, str] | None:
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


def _finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if v is not None:
            f = float(v)
            if math.isfinite(f):
                out.append(f)
    return out


def _mean(values: Iterable[Any]) -> float:
    v = _finite(values)
    if len(v) < 2:  # one value is its own mean, exactly as numpy gives it
        return v[0] if v else math.nan
    return float(np.mean(v))


def _std(values: Iterable[Any]) -> float:
    v = _finite(values)
    return float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def _verdict(ratio: float, threshold: float) -> str | None:
    if not (math.isfinite(ratio) and math.isfinite(threshold)):
        return None
    return "OK" if ratio >= threshold else "CAUTION"


def metric_columns(
    rows: list[dict[str, Any]], objectives: Sequence[str], threshold: float, groups: Sequence[str] = ()
) -> dict[str, Any]:
    """The metric columns of a trial (or reference arm) from its complete seeds' run rows."""
    rec: dict[str, Any] = {}
    for name in dict.fromkeys([*objectives, *DEFAULT_OBJECTIVES]):  # the plots' default axes always exist
        ci = trial_interval(name, rows)
        rec[name], rec[f"{name}_lo"], rec[f"{name}_hi"] = ci.estimate, ci.lo, ci.hi
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
    for g in groups:
        for column in (f"train_grad_ratio_{g}", f"train_update_ratio_{g}", f"grad_ratio_init_{g}"):
            rec[column] = column_interval(column, rows, ratio=True).estimate
        rec[f"grad_share_init_{g}"] = _mean([r.get(f"grad_share_init_{g}") for r in rows])
    rec["grad_ratio_mean"] = column_interval("grad_ratio_mean", rows, ratio=True).estimate
    for column in ("loss_slope", "loss_slope_rel", "loss_first", "loss_last"):
        rec[column] = _mean([r.get(column) for r in rows])
    slope = column_interval("loss_slope", rows)  # the y of the loss-versus-ratio figure, with its interval
    rec.setdefault("loss_slope_lo", slope.lo)
    rec.setdefault("loss_slope_hi", slope.hi)
    rec["loss_slope_std"] = _std([r.get("loss_slope") for r in rows])
    for column in EVAL_FIELDS:  # the end-of-run evaluation, mean over seeds (NaN: not evaluated)
        if column not in rec:
            ci = column_interval(column, rows)
            rec[column], rec[f"{column}_lo"], rec[f"{column}_hi"] = ci.estimate, ci.lo, ci.hi
    rec["ci_scope"] = SCOPE_SEEDS if len(rows) > 1 else (SCOPE_WITHIN if rows else None)
    rec["threshold"] = threshold
    rec["verdict"] = _verdict(rec["grad_ratio_init"], threshold)
    return rec


def _wall(runs: Sequence[dict[str, Any]]) -> float:
    """Total wall time of the runs, NaN when none has one (pandas' ``sum(min_count=1)``)."""
    known = [r["wall_s"] for r in runs if not math.isnan(r["wall_s"])]
    return float(sum(known)) if known else math.nan


def _scale(v: float | None) -> float:
    return math.nan if v is None else float(v)


def trial_records(
    trial_runs: Sequence[dict[str, Any]],
    study: str,
    states: dict[int, str] | None,
    objectives: Sequence[str],
    seeds_wanted: set[int],
    threshold: float,
    groups: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One record per trial from its runs (given ordered by trial number, then seed).

    ``status`` is Optuna's state when known, else the worst run status; ``ranked`` needs a complete
    trial with a complete run for every wanted seed.
    """
    records = []
    for number, group in groupby(trial_runs, key=lambda r: r["trial_number"]):
        runs = list(group)
        ok = [r for r in runs if r["status"] == "complete"]
        if len(ok) == len(runs):
            status = "complete"
        else:
            status = max((r["status"] for r in runs), key=lambda st: STATUS_SEVERITY.get(st, 4))
        if states is not None and int(number) in states:
            status = {"fail": "failed"}.get(states[int(number)], states[int(number)])
        complete_seeds = {int(r["seed"]) for r in ok}
        records.append(
            {
                "study": study,
                "trial_number": int(number),
                "fix": runs[0]["fix"],
                "scale": _scale(runs[0]["scale"]),
                "status": status,
                "ranked": status == "complete" and seeds_wanted <= complete_seeds,
                "n_seeds": len(complete_seeds),
                "seeds_wanted": len(seeds_wanted),
                **metric_columns(ok, objectives, threshold, groups),
                "wall_s": _wall(runs),
            }
        )
    return records


def fix_records(
    trials: Sequence[dict[str, Any]],
    runs: Sequence[dict[str, Any]],
    study: str,
    objectives: Sequence[str],
    threshold: float,
    metric_names: Sequence[str],
    groups: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The references over their complete seeds, then per fix its best ranked trial by the first
    objective (:mod:`ablate.ranking`: the rule the report uses), fixes ordered best first (``rank``
    1, 2, ...), those without a ranked trial last by name. ``runs`` are the study's run rows (every
    role); ``metric_names`` are the trial columns a fix row copies from its best trial.

    ``vs_baseline`` compares each row with the no-branch baseline on the first objective, paired by
    seed (``vs_baseline_diff`` with its ``_lo/_hi``); ``recommended`` marks the fix of the trial
    ``ablate report`` recommends.
    """
    primary = objectives[0] if objectives else "loss_slope"  # a stored objective this version does not know
    direction = OBJECTIVES[primary].direction
    complete = [r for r in runs if r["status"] == "complete"]
    base = [r for r in complete if r["role"] == "baseline"]

    def versus(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        diff = ranking.paired_difference(primary, rows, base)
        verdict = ranking.versus_baseline(diff, direction)
        return {
            "vs_baseline": None if verdict == ranking.UNKNOWN else verdict,  # null in csv/json, '-' in the table
            "vs_baseline_diff": diff.estimate,
            "vs_baseline_diff_lo": diff.lo,
            "vs_baseline_diff_hi": diff.hi,
        }

    records = []
    for role, label in REFERENCE_LABELS.items():
        ok = [r for r in complete if r["role"] == role]
        if not ok:
            continue
        records.append(
            {
                "study": study,
                "fix": label,
                "rank": None,
                "recommended": False,
                "n_trials": 0,
                "n_unranked": 0,
                "best_trial": None,
                "scale": math.nan,
                "n_seeds": len(ok),
                **metric_columns(ok, objectives, threshold, groups),
                **(versus([]) if role == "baseline" else versus(ok)),
                "wall_s": _wall(ok),
            }
        )
    ranked = ranking.rank_trials(trials, [primary, *objectives[1:]])
    chosen = ranking.recommend(ranked)
    best = ranking.best_per_fix(ranked, primary)
    by_trial: dict[int, list[dict[str, Any]]] = {}
    for r in complete:
        if r["role"] == "trial":
            by_trial.setdefault(int(r["trial_number"]), []).append(r)
    counts: dict[str, list[int]] = {}
    for t in trials:
        counts.setdefault(t["fix"], [0, 0])[0 if t["ranked"] else 1] += 1
    for place, fix in enumerate([*best, *sorted(f for f in counts if f not in best)], 1):
        n_ranked, n_unranked = counts.get(fix, [0, 0])
        rec: dict[str, Any] = {"study": study, "fix": fix, "n_trials": n_ranked, "n_unranked": n_unranked}
        if fix not in best:
            rec.update({"rank": None, "recommended": False, "best_trial": None, "scale": math.nan, "n_seeds": 0})
        else:
            trial = best[fix][0]
            rec.update(
                {k: trial.get(k, math.nan) for k in ("scale", "n_seeds", *metric_names, "wall_s")}
                | {c: trial.get(c, math.nan) for m in objectives for c in (m, f"{m}_lo", f"{m}_hi")}
            )
            rec.update(
                rank=place,
                recommended=chosen is not None and chosen["trial_number"] == trial["trial_number"],
                best_trial=int(trial["trial_number"]),
                **versus(by_trial.get(int(trial["trial_number"]), [])),
            )
        records.append(rec)
    return records
