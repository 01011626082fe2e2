"""Which trial a study recommends, each fix's best trial, and whether an arm is told apart from the
baseline: the rules ``ablate report`` and ``ablate query --group-by fix`` share, in one copy, so the
table and the report never disagree.

Plain Python over records (dicts of a trial's or a run's columns, as the store's summaries and the
query frames hold them); no torch, pandas or SQL.

- Only ranked trials (Optuna COMPLETE, every seed of the spec complete) whose objectives are all
  finite take part; each gets its Pareto rank over the study's objectives (:mod:`ablate.pareto`).
- The recommended trial is the front's best on the first objective (ties: the lower trial number).
- A fix's best trial is its best on the first objective (ties: the better Pareto rank, then the
  lower trial number), so the fix ranked first holds the recommended trial.
- Against the baseline: each seed's value of an objective minus the no-branch baseline run's of the
  same seed (they share initial weights and batches), averaged over the seeds with a 95% t-interval;
  the verdict says whether that interval excludes 0, and on which side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ablate.objectives import OBJECTIVES, seed_value
from ablate.pareto import pareto_ranks
from ablate.stats import SCOPE_SEEDS, Interval, mean_ci

Record = Mapping[str, Any]

BETTER, WORSE, SAME, UNKNOWN = "better", "worse", "≈ base", "-"
# The reference arms by role, named the same in every view (tables, csv/json, figures, the report and
# a study's progress lines): the no-branch baseline every arm is compared with, and the frozen control.
REFERENCE_LABELS = {"baseline": "no-branch (baseline)", "control": "frozen (control)"}


def _f(v: Any) -> float:
    try:
        return math.nan if v is None else float(v)
    except (TypeError, ValueError):
        return math.nan


def directions_of(objectives: Sequence[str]) -> list[str]:
    return [OBJECTIVES[m].direction for m in objectives]


def rank_trials(trials: Sequence[Record], objectives: Sequence[str]) -> list[tuple[Record, int]]:
    """The ranked trials with every objective finite, each with its Pareto rank (1 = the front),
    ordered by rank, then the first objective (best first), then trial number."""
    if not objectives:
        return []
    rows = [r for r in trials if bool(r["ranked"]) and all(math.isfinite(_f(r.get(m))) for m in objectives)]
    directions = directions_of(objectives)
    ranks = pareto_ranks([tuple(_f(r[m]) for m in objectives) for r in rows], directions)
    sign = 1.0 if directions[0] == "minimize" else -1.0
    out = list(zip(rows, ranks))
    out.sort(key=lambda t: (t[1], sign * _f(t[0][objectives[0]]), int(t[0]["trial_number"])))
    return out


def recommend(ranked: Sequence[tuple[Record, int]]) -> Record | None:
    """The front's best trial on the first objective (``ranked`` from :func:`rank_trials`)."""
    return ranked[0][0] if ranked and ranked[0][1] == 1 else None


def best_key(primary: str) -> Any:
    """Sort key of (record, Pareto rank) pairs: best on ``primary`` first, then rank, then number."""
    sign = 1.0 if OBJECTIVES[primary].direction == "minimize" else -1.0
    return lambda t: (sign * _f(t[0][primary]), t[1], int(t[0]["trial_number"]))


def best_per_fix(ranked: Sequence[tuple[Record, int]], primary: str) -> dict[str, tuple[Record, int]]:
    """Each fix's best trial on ``primary`` with its Pareto rank; fixes ordered best first."""
    out: dict[str, tuple[Record, int]] = {}
    for t in sorted(ranked, key=best_key(primary)):
        out.setdefault(str(t[0]["fix"]), t)
    return out


def fix_ranking(ranked: Sequence[tuple[Record, int]], primary: str) -> list[tuple[Record, int]]:
    """Each fix's best trial with its Pareto rank, best fix first: the places of ``ablate query
    --group-by fix``'s rank, of the report's table of fixes and of every "first" and "second"."""
    return list(best_per_fix(ranked, primary).values())


def runner_up(ranked: Sequence[tuple[Record, int]], primary: str) -> tuple[Record, int] | None:
    """The best trial of the best fix other than the recommended trial's (None without a
    recommendation or another ranked fix): the second of :func:`fix_ranking`."""
    chosen = recommend(ranked)
    if chosen is None:
        return None
    return next((t for t in fix_ranking(ranked, primary) if t[0]["fix"] != chosen["fix"]), None)


def paired_difference(name: str, runs: Sequence[Record], base_runs: Sequence[Record]) -> Interval:
    """``name``'s per-seed value of ``runs`` minus that of the baseline run of the same seed, mean
    over the seeds both have with a 95% t-interval (n = those seeds; one seed: no interval)."""
    base = {int(r["seed"]): r for r in base_runs}
    diffs = [seed_value(name, r) - seed_value(name, base[int(r["seed"])]) for r in runs if int(r["seed"]) in base]
    return mean_ci(diffs, scope=SCOPE_SEEDS)


def versus_baseline(diff: Interval, direction: str) -> str:
    """'better' or 'worse' when the paired interval excludes 0 (by the objective's direction),
    '≈ base' when it holds 0, '-' without an interval (fewer than two seeds)."""
    if diff.n < 2 or not (math.isfinite(diff.lo) and math.isfinite(diff.hi)):
        return UNKNOWN
    if diff.lo <= 0.0 <= diff.hi:
        return SAME
    higher = diff.lo > 0.0
    return BETTER if higher == (direction == "maximize") else WORSE
