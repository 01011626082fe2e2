"""Everything ``ablate report`` says, gathered from the database into plain dataclasses.

No number in a report is typed: each is read here from the store, through the same functions the
queries use (``query.summary_frames``: the per-trial, per-fix and per-run frames of ``ablate query``)
or computed here from the stored run rows with :mod:`ablate.stats` (the paired comparisons with the
baseline, the forward disruption at step 0). Only ranked trials (Optuna says COMPLETE and every seed
of the spec has a complete run) are compared, ranked or recommended; the rest are listed as excluded.

Torch-free (like ``query`` and ``plot``): pandas, numpy and SQLAlchemy only.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, inspect, select, text

from ablate import ranking
from ablate.eval import EVAL_METRICS, EVAL_STEP_PREFIX
from ablate.objectives import OBJECTIVES, known_objectives, seed_value
from ablate.plot.extract import fix_sort_key
from ablate.stats import HIGH_AUTOCORRELATION, SCOPE_NONE, SCOPE_SEEDS, Interval, mean_ci, ratio_ci
from ablate.store import query as q
from ablate.store.schema import AUTOCORRELATION_FIELDS, HARDWARE_ATTR, RUN_FLOAT_FIELDS, StudyModel
from ablate.subjects import subject_wording

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BASELINE_LABEL, CONTROL_LABEL = q.REFERENCE_LABELS["baseline"], q.REFERENCE_LABELS["control"]
# AUROC columns are matched by name, so a store that gains one (another issue adds it) is reported
# without a change here; until then the report says AUROC was not evaluated.
AUROC_COLUMNS = tuple(c for c in RUN_FLOAT_FIELDS if "auroc" in c.lower())

# The spec's defaults for what the setting section shows (ablate/spec.py; importing it would import
# torch); a subject adds its own sections' (its wording module's SECTION_DEFAULTS). tests/test_report.py
# checks these equal the spec models' defaults. probe.group's default is the subject's first group.
SPEC_DEFAULTS: dict[str, dict[str, Any]] = {
    "training": {"steps": 100, "lr": 5e-4, "device": "auto", "pack": 1},
    "probe": {"batches": 6, "every": 50, "threshold": 0.8, "gain_batches": 16},
    "study": {"trials": 12, "seeds": [0], "sampler": "tpe", "frozen_control": True},
}


def _f(v: Any) -> float:
    if v is None or v is pd.NA:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _interval(row: Mapping[str, Any], column: str) -> Interval:
    """A frame row's ``column`` with its stored ``_lo/_hi`` (NaN when it has none), n and scope."""
    n = int(row.get("n_seeds") or 0)
    scope = row.get("ci_scope") or SCOPE_NONE
    lo, hi = _f(row.get(f"{column}_lo")), _f(row.get(f"{column}_hi"))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        scope = SCOPE_NONE
    return Interval(_f(row.get(column)), lo, hi, n, str(scope))


# ------------------------------------------------------------------------------------------ setting


@dataclass(frozen=True)
class Setting:
    """The study's recipe (its stored spec, defaults filled in) and what it ran on."""

    study: str
    description: str
    created_at: datetime | None
    spec_hash: str
    spec_text: str
    spec: dict[str, dict[str, Any]]  # the sections the report shows, defaults filled in
    defaulted: frozenset[str]  # "section.key" taken from the spec's defaults (not written in the spec)
    objectives: tuple[str, ...]
    directions: dict[str, str]
    judged_group: str
    threshold: float
    seeds: tuple[int, ...]
    versions: dict[str, str | None]  # ablate, torch, open_clip, optuna, python
    git_revision: str | None
    host: str | None  # the machine that created the study
    devices: tuple[str, ...]  # the devices its runs were trained on (ablate_runs.device)
    hardware: tuple[dict[str, Any], ...]  # per machine, when the study recorded it (newer ablate)
    workers: tuple[tuple[str, int], ...]  # (where a worker ran, its runs), for runs that recorded it
    run_steps: tuple[int, ...]  # distinct step counts of its complete runs
    n_runs: int
    wall_s: float  # sum of the runs' wall times
    packed: int  # largest number of arms trained side by side
    subject: str = "aaclip"  # the registered subject (ablate/subjects/__init__.py)
    groups: tuple[str, ...] = ()  # its watched groups, "all" last

    @property
    def wording(self) -> Any:
        """How this study's subject is described (ablate/subjects/<subject>/wording.py)."""
        return subject_wording(self.subject)


def _spec_sections(spec_text: str, subject: str) -> tuple[dict[str, dict[str, Any]], frozenset[str], str]:
    try:
        raw = tomllib.loads(spec_text or "")
    except tomllib.TOMLDecodeError:
        raw = {}
    out: dict[str, dict[str, Any]] = {}
    defaulted = set()
    for section, defaults in {**subject_wording(subject).SECTION_DEFAULTS, **SPEC_DEFAULTS}.items():
        given = raw.get(section, {}) if isinstance(raw.get(section), dict) else {}
        out[section] = {**defaults, **given}
        defaulted |= {f"{section}.{k}" for k in defaults if k not in given}
    out["search"] = dict(raw.get("search", {})) if isinstance(raw.get("search"), dict) else {}
    return out, frozenset(defaulted), str(raw.get("description", ""))


def _hardware(conn: Any, optuna_name: str) -> tuple[dict[str, Any], ...]:
    """The per-host hardware notes the study runner leaves as Optuna study user attributes."""
    if not {"studies", "study_user_attributes"} <= set(inspect(conn).get_table_names()):
        return ()
    rows = conn.execute(
        text(
            "SELECT a.key, a.value_json FROM study_user_attributes a JOIN studies s ON s.study_id = a.study_id"
            " WHERE s.study_name = :name ORDER BY a.key"
        ),
        {"name": optuna_name},
    ).all()
    out = []
    for key, value in rows:
        if str(key).startswith(HARDWARE_ATTR):
            try:
                info = json.loads(value)
            except (TypeError, ValueError):
                continue
            if isinstance(info, dict):
                out.append(info)
    return tuple(out)


def _workers(runs: pd.DataFrame) -> tuple[tuple[str, int], ...]:
    """Each worker that ran some of the runs (host, pid, launcher, job, devices) and how many it ran,
    in the order of their first run."""
    from ablate.views import worker_text

    if "worker_host" not in runs or runs["worker_host"].isna().all():
        return ()
    counts: dict[str, int] = {}
    for run in runs.sort_values("run_id").to_dict(orient="records"):
        if run.get("worker_host"):
            key = worker_text(run)
            counts[key] = counts.get(key, 0) + 1
    return tuple(counts.items())


def _setting(engine: Engine, name: str, settings: dict[str, Any], runs: pd.DataFrame) -> Setting:
    with engine.connect() as conn:
        study = conn.execute(select(StudyModel.__table__).where(StudyModel.name == name)).one()
        hardware = _hardware(conn, study.optuna_study_name)
    spec, defaulted, description = _spec_sections(study.spec_text, settings["subject"])
    spec["probe"].setdefault("group", settings["group"])
    done = runs[runs["status"] == "complete"]
    wall = pd.to_numeric(runs["wall_s"], errors="coerce")
    packed = pd.to_numeric(runs["packed_arms"], errors="coerce").dropna()
    return Setting(
        study=name,
        description=description,
        created_at=study.created_at,
        spec_hash=study.spec_hash,
        spec_text=study.spec_text,
        spec=spec,
        defaulted=defaulted,
        objectives=tuple(settings["objectives"]),
        directions=dict(settings["directions"]),
        judged_group=str(settings["group"]),
        threshold=float(settings["threshold"]),
        seeds=tuple(settings["seeds"]),
        versions={
            "ablate": study.ablate_version,
            "torch": study.torch_version,
            "open_clip": study.open_clip_version,
            "optuna": study.optuna_version,
            "python": study.python_version,
        },
        git_revision=study.git_revision,
        host=study.host,
        devices=tuple(sorted({str(d) for d in runs["device"].dropna()})),
        hardware=hardware,
        workers=_workers(runs),
        # Stage 2 runs: a subject's Stage 1 (AA-CLIP's text adapter) has its own length
        run_steps=tuple(sorted({int(s) for s in done.loc[done["role"] != "stage1", "steps"].dropna()})),
        n_runs=len(runs),
        wall_s=float(wall.sum(min_count=1)),
        packed=int(packed.max()) if not packed.empty else 1,
        subject=str(settings["subject"]),
        groups=tuple(settings["groups"]),
    )


# ----------------------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class ArmEvidence:
    """One row of the evidence: a fix's best ranked trial (``ablate query --group-by fix``), or a
    reference arm (the no-branch baseline, the frozen-adapter control) over its seeds."""

    label: str  # the fix, or the reference label of group_by_fix
    reference: bool
    trial_number: int | None
    scale: float
    n_seeds: int
    n_trials: int  # ranked trials of the fix
    n_unranked: int
    ci_scope: str | None
    objectives: dict[str, Interval]
    # training-time comparison with the baseline (the judged group with its interval, every group)
    train_grad_ratio: Interval
    train_grad_ratio_groups: dict[str, float]
    train_update_ratio: Interval  # the update sizes: ||dθ||/||θ|| vs the baseline run
    train_update_ratio_groups: dict[str, float]
    # bypass probe at step 0, per group
    grad_ratio_init: Interval
    grad_ratio_init_groups: dict[str, float]
    grad_share_init_groups: dict[str, float]
    verdict: str | None
    # what the adapters learned
    adapter_gain: Interval
    adapter_gain_rel: float
    adapter_gain_diff: Interval
    loss_slope: float
    loss_slope_rel: float
    # forward disruption at step 0 (from the runs, over the seeds)
    loss0_delta: Interval  # loss with the branch - without, same weights and batches
    feature_cosine: Interval
    norm_inflation: Interval
    auroc: dict[str, Interval]  # column -> mean over seeds; empty when not evaluated
    # Runs evaluated during training too (eval.every), per metric over seeds: the best of each run's
    # evaluations (the end's included) and its last (the end's, what ``auroc`` and the ranking use).
    eval_best: dict[str, Interval] = field(default_factory=dict)
    eval_last: dict[str, Interval] = field(default_factory=dict)


def _runs_of(runs: pd.DataFrame, role: str, trial_number: int | None) -> list[dict[str, Any]]:
    done = runs[(runs["status"] == "complete") & (runs["role"] == role)]
    if trial_number is not None:
        done = done[done["trial_number"] == trial_number]
    return done.sort_values("seed").to_dict(orient="records")


def _over_seeds(values: Sequence[float]) -> Interval:
    """Mean over seeds with a t-interval (scope seeds); one seed: the value, no interval."""
    ci = mean_ci([v for v in values if math.isfinite(v)], scope=SCOPE_SEEDS)
    return ci


def _checkpoints(rows: list[dict[str, Any]], steps: pd.DataFrame) -> tuple[dict[str, Interval], dict[str, Interval]]:
    """Per metric, over the seeds' runs: the best and the last of each run's evaluation step rows
    (``eval/<metric>``, every ``eval.every`` steps and at the end); empty when they have none."""
    best: dict[str, Interval] = {}
    last: dict[str, Interval] = {}
    mine = steps[steps["run_id"].isin([r["run_id"] for r in rows])] if len(steps) else steps
    for m in EVAL_METRICS:
        series = mine[mine["name"] == EVAL_STEP_PREFIX + m] if len(mine) else mine
        if not len(series):
            continue
        by_run = [g.sort_values("step")["value"] for _, g in series.groupby("run_id")]
        best[m] = _over_seeds([float(v.max()) for v in by_run])
        last[m] = _over_seeds([float(v.iloc[-1]) for v in by_run])
    return best, last


def _evidence(
    row: Mapping[str, Any],
    rows: list[dict[str, Any]],
    objectives: Sequence[str],
    groups: Sequence[str],
    steps: pd.DataFrame | None = None,
) -> ArmEvidence:
    reference = row["fix"] in (BASELINE_LABEL, CONTROL_LABEL)
    best = row.get("best_trial")
    eval_best, eval_last = _checkpoints(rows, steps) if steps is not None else ({}, {})
    return ArmEvidence(
        label=str(row["fix"]),
        reference=reference,
        trial_number=None if best is None or pd.isna(best) else int(best),
        scale=_f(row.get("scale")),
        n_seeds=int(row.get("n_seeds") or 0),
        n_trials=int(row.get("n_trials") or 0),
        n_unranked=int(row.get("n_unranked") or 0),
        ci_scope=None if pd.isna(row.get("ci_scope")) else str(row.get("ci_scope")),
        objectives={m: _interval(row, m) for m in objectives},
        train_grad_ratio=_interval(row, "train_grad_ratio"),
        train_grad_ratio_groups={g: _f(row.get(f"train_grad_ratio_{g}")) for g in groups},
        train_update_ratio=_interval(row, "train_update_ratio"),
        train_update_ratio_groups={g: _f(row.get(f"train_update_ratio_{g}")) for g in groups},
        grad_ratio_init=_interval(row, "grad_ratio_init"),
        grad_ratio_init_groups={g: _f(row.get(f"grad_ratio_init_{g}")) for g in groups},
        grad_share_init_groups={g: _f(row.get(f"grad_share_init_{g}")) for g in groups},
        verdict=None if pd.isna(row.get("verdict")) else str(row.get("verdict")),
        adapter_gain=_interval(row, "adapter_gain"),
        adapter_gain_rel=_f(row.get("adapter_gain_rel")),
        adapter_gain_diff=_interval(row, "adapter_gain_diff"),
        loss_slope=_f(row.get("loss_slope")),
        loss_slope_rel=_f(row.get("loss_slope_rel")),
        loss0_delta=_over_seeds([_f(r.get("loss0_with")) - _f(r.get("loss0_without")) for r in rows]),
        feature_cosine=_over_seeds([_f(r.get("feature_cosine_init")) for r in rows]),
        norm_inflation=_over_seeds([_f(r.get("norm_inflation_init")) for r in rows]),
        auroc={
            c: ci
            for c in AUROC_COLUMNS
            if (ci := _over_seeds([_f(r.get(c)) for r in rows])).n > 0  # noqa: B023 - used at once
        },
        eval_best=eval_best,
        eval_last=eval_last,
    )


# ------------------------------------------------------------------------------------ ranking, pairs


@dataclass(frozen=True)
class RankedTrial:
    """A ranked trial with its objectives and its Pareto rank (1 = on the front)."""

    trial_number: int
    fix: str
    scale: float
    n_seeds: int
    pareto_rank: int
    objectives: dict[str, Interval]


@dataclass(frozen=True)
class Paired:
    """A trial against the no-branch baseline of the same seed, seed by seed.

    Each difference is taken within a seed (the trial's run minus the baseline run of that seed,
    which shares its initial weights, batches and held-out batches), then averaged over the seeds
    with a t-interval (n = seeds with both runs complete; one seed: no interval).
    """

    trial_number: int
    fix: str
    scale: float
    seeds: tuple[int, ...]
    gain_diff: Interval  # adapter_gain - baseline's
    slope_diff: Interval  # loss_slope - baseline's (per 100 steps; > 0: learns slower)
    grad_ratio: Interval  # train_grad_ratio: geometric mean over seeds, interval on the logs
    update_ratio: Interval  # train_update_ratio, the same way


def _ranked_trials(trials: pd.DataFrame, objectives: Sequence[str]) -> list[RankedTrial]:
    return [
        RankedTrial(
            trial_number=int(r["trial_number"]),
            fix=str(r["fix"]),
            scale=_f(r["scale"]),
            n_seeds=int(r["n_seeds"]),
            pareto_rank=rank,
            objectives={m: _interval(r, m) for m in objectives},
        )
        for r, rank in ranking.rank_trials(trials.to_dict(orient="records"), objectives)
    ]


def _paired(trial: RankedTrial, runs: pd.DataFrame) -> Paired:
    base = {int(r["seed"]): r for r in _runs_of(runs, "baseline", None)}
    mine = [r for r in _runs_of(runs, "trial", trial.trial_number) if int(r["seed"]) in base]
    seeds = tuple(int(r["seed"]) for r in mine)

    def diff(column: str) -> Interval:
        return ranking.paired_difference(column, mine, list(base.values()))

    def ratio(column: str) -> Interval:
        vals = [_f(r.get(column)) for r in mine]
        vals = [v for v in vals if not math.isnan(v)]
        if len(vals) == 1:  # one seed: the value, no interval over seeds
            return Interval(vals[0], math.nan, math.nan, 1, SCOPE_NONE)
        return ratio_ci([[v] for v in vals])

    return Paired(
        trial.trial_number,
        trial.fix,
        trial.scale,
        seeds,
        diff("adapter_gain"),
        diff("loss_slope"),
        ratio("train_grad_ratio"),
        ratio("train_update_ratio"),
    )


# ------------------------------------------------------------------------------------ recommendation


@dataclass(frozen=True)
class Recommendation:
    """The front's best trial by the study's first objective, and how sure that choice is."""

    trial: RankedTrial
    primary: str
    direction: str
    paired: Paired
    runner_up: RankedTrial | None  # the best trial of another fix by the same rule
    versus_runner_up: Interval | None  # the primary objective, recommended - runner-up, paired by seed
    # Each other fix's best trial on the primary objective, and recommended - it on that objective,
    # paired by seed (the seeds share the backbone, initial adapters and batches), in fix order.
    versus_fixes: tuple[tuple[RankedTrial, Interval], ...]


def _seed_values(name: str, runs: pd.DataFrame, trial_number: int) -> dict[int, float]:
    return {int(r["seed"]): seed_value(name, r) for r in _runs_of(runs, "trial", trial_number)}


def _as_pairs(ranked: Sequence[RankedTrial]) -> list[tuple[dict[str, Any], int]]:
    """RankedTrials as the (record, Pareto rank) pairs :mod:`ablate.ranking` takes."""
    return [
        ({"trial_number": t.trial_number, "fix": t.fix, **{m: iv.estimate for m, iv in t.objectives.items()}, "t": t},
         t.pareto_rank)
        for t in ranked
    ]  # fmt: skip


def _recommend(ranked: list[RankedTrial], objectives: Sequence[str], directions: Sequence[str], runs: pd.DataFrame):
    pairs = _as_pairs(ranked)  # in rank_trials' order
    chosen = ranking.recommend(pairs)
    if chosen is None:
        return None
    best: RankedTrial = chosen["t"]
    primary, direction = objectives[0], directions[0]
    per_fix = {fix: rec["t"] for fix, (rec, _) in ranking.best_per_fix(pairs, primary).items()}
    second = ranking.runner_up(pairs, primary)
    runner = second[0]["t"] if second is not None else None
    versus = None
    if runner is not None:
        a = _seed_values(primary, runs, best.trial_number)
        b = _seed_values(primary, runs, runner.trial_number)
        versus = _over_seeds([a[k] - b[k] for k in sorted(set(a) & set(b))])
    mine = _seed_values(primary, runs, best.trial_number)
    versus_fixes = []
    for fix in sorted(per_fix, key=fix_sort_key):
        if fix != best.fix:
            theirs = _seed_values(primary, runs, per_fix[fix].trial_number)
            diff = _over_seeds([mine[k] - theirs[k] for k in sorted(set(mine) & set(theirs))])
            versus_fixes.append((per_fix[fix], diff))
    return Recommendation(
        best,
        primary,
        direction,
        _paired(best, runs),
        runner,
        versus,
        tuple(versus_fixes),
    )


# ------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Excluded:
    trial_number: int
    fix: str
    scale: float
    status: str
    n_seeds: int
    seeds_wanted: int


@dataclass(frozen=True)
class StepAutocorrelation:
    """How autocorrelated the per-step ratios behind the runs' within-seed intervals are: the lag-1
    autocorrelation of each complete run's train_grad_ratio / train_update_ratio series (the larger
    of the two), which ``ablate.stats.series_ci`` widened the intervals for."""

    n_runs: int  # complete runs that have one (none for a baseline: it is its own reference)
    n_high: int  # of them, at or above HIGH_AUTOCORRELATION
    highest: float  # NaN when no run has one
    fix: str | None = None  # the run with the highest
    scale: float = math.nan
    trial_number: int | None = None
    seed: int | None = None


def _step_autocorrelation(runs: pd.DataFrame) -> StepAutocorrelation:
    done = runs[runs["status"] == "complete"]
    cols = [c for c in AUTOCORRELATION_FIELDS if c in done]
    if done.empty or not cols:
        return StepAutocorrelation(0, 0, math.nan)
    ac1 = done[cols].apply(pd.to_numeric, errors="coerce").max(axis=1, skipna=True)
    known = ac1.dropna()
    if known.empty:
        return StepAutocorrelation(0, 0, math.nan)
    top = done.loc[known.idxmax()]
    trial = top.get("trial_number")
    return StepAutocorrelation(
        n_runs=len(known),
        n_high=int((known >= HIGH_AUTOCORRELATION).sum()),
        highest=float(known.max()),
        fix=str(top["fix"]),
        scale=_f(top.get("scale")),
        trial_number=None if trial is None or pd.isna(trial) else int(trial),
        seed=int(top["seed"]),
    )


@dataclass(frozen=True)
class Report:
    setting: Setting
    evidence: tuple[ArmEvidence, ...]  # baseline, control, then fixes in registry order
    ranked: tuple[RankedTrial, ...]  # every ranked trial, by Pareto rank then primary objective
    fix_ranking: tuple[RankedTrial, ...]  # each fix's best trial, best fix first (ranking.fix_ranking)
    paired: tuple[Paired, ...]  # every fix's best-placed trial and every front trial
    recommendation: Recommendation | None
    excluded: tuple[Excluded, ...]
    n_trials: int
    # The frozen control minus the baseline on each objective, paired by seed (None without a control):
    # the check that an objective scores adapters that never learn worse than the baseline's.
    control_vs_baseline: dict[str, Interval] | None = None
    auroc_columns: tuple[str, ...] = field(default=AUROC_COLUMNS)
    step_autocorrelation: StepAutocorrelation = field(default=StepAutocorrelation(0, 0, math.nan))

    @property
    def front(self) -> tuple[RankedTrial, ...]:
        return tuple(t for t in self.ranked if t.pareto_rank == 1)

    def arm(self, label: str) -> ArmEvidence | None:
        return next((e for e in self.evidence if e.label == label), None)

    @property
    def seeds_used(self) -> int:
        """Seeds per ranked trial (the spec's seeds: a ranked trial has all of them)."""
        return len(self.setting.seeds)


def gather(engine: Engine, study: str | None = None) -> Report:
    """Read the study and compute the report's numbers (LookupError for an unknown study)."""
    settings = q.study_settings(engine, study)
    name = settings["study"]
    trials, fixes, runs = q.summary_frames(engine, name)
    objectives = known_objectives(settings["objectives"]) or ["adapter_gain"]
    directions = [OBJECTIVES[m].direction for m in objectives]
    setting = _setting(
        engine, name, {**settings, "objectives": objectives, "directions": dict(zip(objectives, directions))}, runs
    )

    arm_rows = []
    for row in fixes.to_dict(orient="records"):
        label = row["fix"]
        if label == BASELINE_LABEL:
            rows = _runs_of(runs, "baseline", None)
        elif label == CONTROL_LABEL:
            rows = _runs_of(runs, "control", None)
        elif row.get("best_trial") is None or pd.isna(row.get("best_trial")):
            rows = []
        else:
            rows = _runs_of(runs, "trial", int(row["best_trial"]))
        arm_rows.append((row, rows))
    # The evaluations during training (eval.every) of the runs the evidence reads, in one query.
    steps = q.step_metrics_for_runs(
        engine, [r["run_id"] for _, rows in arm_rows for r in rows], prefix=EVAL_STEP_PREFIX
    )
    evidence = [_evidence(row, rows, objectives, setting.groups, steps) for row, rows in arm_rows]
    evidence.sort(
        key=lambda e: (0 if e.label == BASELINE_LABEL else 1 if e.label == CONTROL_LABEL else 2, fix_sort_key(e.label))
    )

    ranked = _ranked_trials(trials, objectives)
    # the places of `ablate query --group-by fix`: one rule (ablate/ranking.py), one order
    fix_ranking = [rec["t"] for rec, _ in ranking.fix_ranking(_as_pairs(ranked), objectives[0])]
    chosen = fix_ranking + [t for t in ranked if t.pareto_rank == 1]
    paired_for = list({t.trial_number: t for t in chosen}.values())
    excluded = tuple(
        Excluded(
            int(r["trial_number"]),
            str(r["fix"]),
            _f(r["scale"]),
            str(r["status"]),
            int(r["n_seeds"]),
            int(r["seeds_wanted"]),
        )
        for r in trials.to_dict(orient="records")
        if not r["ranked"]
    )
    return Report(
        setting=setting,
        evidence=tuple(evidence),
        ranked=tuple(ranked),
        fix_ranking=tuple(fix_ranking),
        paired=tuple(_paired(t, runs) for t in paired_for),
        recommendation=_recommend(ranked, objectives, directions, runs),
        excluded=excluded,
        n_trials=len(trials),
        control_vs_baseline=_control_vs_baseline(runs, objectives),
        step_autocorrelation=_step_autocorrelation(runs),
    )


def _control_vs_baseline(runs: pd.DataFrame, objectives: Sequence[str]) -> dict[str, Interval] | None:
    base, control = _runs_of(runs, "baseline", None), _runs_of(runs, "control", None)
    if not {int(r["seed"]) for r in base} & {int(r["seed"]) for r in control}:
        return None
    return {m: ranking.paired_difference(m, control, base) for m in objectives}


__all__ = [
    "ArmEvidence",
    "Excluded",
    "Paired",
    "RankedTrial",
    "Recommendation",
    "Report",
    "Setting",
    "StepAutocorrelation",
    "gather",
]
