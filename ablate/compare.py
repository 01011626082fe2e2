"""``ablate compare A B``: two studies' per-fix tables side by side, in one storage or two, with the
difference per fix and its interval, and what differs between them (spec keys, code versions).

Each side is its study's own per-fix table (``ablate query --group-by fix``: the references, then
each fix's best ranked trial by its own first objective), so nothing here ranks or summarises
anew: each side's intervals are :func:`ablate.objectives.trial_interval` over that row's runs, the
numbers the table prints. The difference B - A of an objective is taken on each seed's value
(:func:`ablate.objectives.seed_value`):

- paired by seed when both rows ran the same seeds (two or more): B's value minus A's of the same
  seed, mean with a 95% t-interval (:func:`ablate.ranking.paired_difference`); the same seed
  shares its initial weights and batches when the specs do;
- otherwise Welch's interval of the two means (:func:`ablate.stats.welch_ci`).

A row only one study has gets no difference. Plain Python over the store's frames; no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from ablate import ranking
from ablate.objectives import OBJECTIVES, known_objectives, seed_value, trial_interval
from ablate.ranking import REFERENCE_LABELS
from ablate.specdiff import KeyChange, spec_changes
from ablate.stats import Interval, welch_ci

PAIRED, WELCH = "paired", "welch"
# What a study records of the code it ran with (ablate_studies); the host is where, not what.
CODE_VERSIONS = ("ablate_version", "git_revision", "torch_version", "open_clip_version", "optuna_version",
                 "python_version")  # fmt: skip
VERDICTS = {ranking.BETTER: "B better", ranking.WORSE: "B worse", ranking.SAME: "≈ same", ranking.UNKNOWN: None}


@dataclass(frozen=True)
class Side:
    """One study of the comparison: where it is and what it recorded."""

    study: str
    storage: str  # displayed (password masked)
    objectives: tuple[str, ...]
    seeds: tuple[int, ...]
    versions: dict[str, str | None]
    spec_text: str


@dataclass(frozen=True)
class FixPair:
    """One row: a fix (or a reference) in A and in B, and B - A on each objective."""

    fix: str
    a_trial: int | None
    b_trial: int | None
    a_scale: float
    b_scale: float
    a_seeds: tuple[int, ...]  # the row's complete runs' seeds (none: the study has no such row)
    b_seeds: tuple[int, ...]
    method: str | None  # PAIRED, WELCH, or None (one side missing)
    a: dict[str, Interval]
    b: dict[str, Interval]
    diff: dict[str, Interval]  # B - A
    verdict: dict[str, str | None]  # by the objective's direction: 'B better', 'B worse', '≈ same', None


@dataclass(frozen=True)
class Comparison:
    a: Side
    b: Side
    objectives: tuple[str, ...]  # A's, in its order (B's own trials are picked by B's first objective)
    rows: tuple[FixPair, ...]
    spec_changes: tuple[KeyChange, ...]
    version_changes: tuple[tuple[str, str | None, str | None], ...] = field(default=())

    @property
    def primary(self) -> str:
        return self.objectives[0]


def _side(engine: Engine, study: str | None) -> tuple[Side, Any, Any]:
    """The study's description, its per-fix frame and its runs frame."""
    from ablate.store import query as q
    from ablate.store.catalog import resolve_study
    from ablate.store.engine import display_url
    from ablate.store.schema import StudyModel

    with engine.connect() as conn:
        study_id, name = resolve_study(conn, study)
        row = conn.execute(
            select(StudyModel.spec_text, *(getattr(StudyModel, f) for f in CODE_VERSIONS)).where(
                StudyModel.id == study_id
            )
        ).one()
    settings = q.study_settings(engine, name)
    _, fixes, runs = q.summary_frames(engine, name)
    side = Side(
        study=name,
        storage=display_url(engine),
        objectives=tuple(known_objectives(settings["objectives"]) or ["adapter_gain"]),
        seeds=tuple(settings["seeds"]),
        versions={f: getattr(row, f) for f in CODE_VERSIONS},
        spec_text=row.spec_text or "",
    )
    return side, fixes, runs


def _row_runs(fix_row: dict[str, Any] | None, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The complete runs behind one per-fix row: a reference's, or its best trial's."""
    if fix_row is None:
        return []
    roles = {label: role for role, label in REFERENCE_LABELS.items()}
    role = roles.get(str(fix_row["fix"]))
    done = [r for r in runs if r["status"] == "complete"]
    if role is not None:
        return [r for r in done if r["role"] == role]
    best = _int_or_none(fix_row.get("best_trial"))
    return [] if best is None else [r for r in done if r["role"] == "trial" and int(r["trial_number"]) == best]


def _int_or_none(v: Any) -> int | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else int(f)


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def difference(name: str, a_runs: Sequence[dict[str, Any]], b_runs: Sequence[dict[str, Any]]) -> tuple[Interval, str]:
    """B - A on objective ``name`` over the two rows' runs, and how: paired by seed when both ran the
    same seeds (two or more), else Welch's interval."""
    a_seeds = {int(r["seed"]) for r in a_runs}
    if a_seeds == {int(r["seed"]) for r in b_runs} and len(a_seeds) >= 2:
        return ranking.paired_difference(name, b_runs, a_runs), PAIRED
    return welch_ci([seed_value(name, r) for r in b_runs], [seed_value(name, r) for r in a_runs]), WELCH


def _pair(fix: str, a_row, b_row, a_runs, b_runs, objectives: Sequence[str]) -> FixPair:
    ra, rb = _row_runs(a_row, a_runs), _row_runs(b_row, b_runs)
    a = {m: trial_interval(m, ra) for m in objectives} if ra else {}
    b = {m: trial_interval(m, rb) for m in objectives} if rb else {}
    diff: dict[str, Interval] = {}
    verdict: dict[str, str | None] = {}
    method = None
    if ra and rb:
        for m in objectives:
            diff[m], method = difference(m, ra, rb)
            verdict[m] = VERDICTS[ranking.versus_baseline(diff[m], OBJECTIVES[m].direction)]
    return FixPair(
        fix=fix,
        a_trial=None if a_row is None else _int_or_none(a_row.get("best_trial")),
        b_trial=None if b_row is None else _int_or_none(b_row.get("best_trial")),
        a_scale=math.nan if a_row is None else _float(a_row.get("scale")),
        b_scale=math.nan if b_row is None else _float(b_row.get("scale")),
        a_seeds=tuple(sorted(int(r["seed"]) for r in ra)),
        b_seeds=tuple(sorted(int(r["seed"]) for r in rb)),
        method=method,
        a=a,
        b=b,
        diff=diff,
        verdict=verdict,
    )


def compare_studies(engine_a: Engine, study_a: str | None, engine_b: Engine, study_b: str | None) -> Comparison:
    """Study A and study B (None: each storage's latest), fix by fix (LookupError for a missing study)."""
    a, a_fixes, a_runs = _side(engine_a, study_a)
    b, b_fixes, b_runs = _side(engine_b, study_b)
    objectives = a.objectives
    a_rows = {str(r["fix"]): r for r in a_fixes.to_dict(orient="records")}
    b_rows = {str(r["fix"]): r for r in b_fixes.to_dict(orient="records")}
    # A's rows in A's order (references, then its ranked fixes), then the fixes only B has
    order = [*a_rows, *(f for f in b_rows if f not in a_rows)]
    a_records, b_records = a_runs.to_dict(orient="records"), b_runs.to_dict(orient="records")
    rows = tuple(_pair(fix, a_rows.get(fix), b_rows.get(fix), a_records, b_records, objectives) for fix in order)
    versions = tuple((f, a.versions[f], b.versions[f]) for f in CODE_VERSIONS if a.versions[f] != b.versions[f])
    return Comparison(a, b, objectives, rows, tuple(spec_changes(a.spec_text, b.spec_text)), versions)


def _ends(prefix: str, iv: Interval | None) -> dict[str, float]:
    if iv is None:
        return {prefix: math.nan, f"{prefix}_lo": math.nan, f"{prefix}_hi": math.nan}
    return {prefix: iv.estimate, f"{prefix}_lo": iv.lo, f"{prefix}_hi": iv.hi}


def records(c: Comparison) -> list[dict[str, Any]]:
    """One flat record per row (``--format csv``, and ``fixes`` of ``--format json``)."""
    out = []
    for r in c.rows:
        rec: dict[str, Any] = {
            "fix": r.fix,
            "a_trial": r.a_trial,
            "b_trial": r.b_trial,
            "a_scale": r.a_scale,
            "b_scale": r.b_scale,
            "a_n_seeds": len(r.a_seeds),
            "b_n_seeds": len(r.b_seeds),
            "method": r.method,
        }
        for m in c.objectives:
            rec |= _ends(f"{m}_a", r.a.get(m)) | _ends(f"{m}_b", r.b.get(m)) | _ends(f"{m}_diff", r.diff.get(m))
            rec[f"{m}_verdict"] = r.verdict.get(m)
        out.append(rec)
    return out


def document(c: Comparison) -> dict[str, Any]:
    """The whole comparison as one JSON document (``--format json``)."""

    def side(s: Side) -> dict[str, Any]:
        return {"study": s.study, "storage": s.storage, "objectives": list(s.objectives), "seeds": list(s.seeds),
                "versions": s.versions}  # fmt: skip

    return {
        "a": side(c.a),
        "b": side(c.b),
        "objectives": list(c.objectives),
        "fixes": records(c),
        "spec_changes": [{"key": k.key, "a": _plain(k.a), "b": _plain(k.b)} for k in c.spec_changes],
        "version_changes": [{"field": f, "a": a, "b": b} for f, a, b in c.version_changes],
    }


def _plain(v: Any) -> Any:
    from ablate.specdiff import ABSENT

    return None if v is ABSENT else v
