"""Which studies a database holds and what each one's stored spec says, in plain SQLAlchemy Core.

No pandas here: ``ablate query --studies`` answers from this module alone, and every other read
starts by resolving its study through it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, String, and_, case, cast, column, func, inspect, select, table

from ablate.errors import did_you_mean
from ablate.objectives import OBJECTIVES
from ablate.store.engine import display_url
from ablate.store.schema import RunModel, StudyModel

AACLIP_GROUPS = ("layers", "proj")  # the AA-CLIP subject's groups (ablate/subjects/aaclip/subject.py)
STUDY_COLUMNS = ("name", "optuna_study_name", "created_at", "n_trials", "n_runs", "spec_hash", "git_revision")


class StudyRow(NamedTuple):
    """One line of ``ablate query --studies``: n_trials counts trials whose runs are all complete
    and, where the database has Optuna's tables, that Optuna holds COMPLETE (so the two never
    disagree: a trial Optuna failed, e.g. on a NaN objective, is not counted here either)."""

    name: str
    optuna_study_name: str
    created_at: datetime
    n_trials: int
    n_runs: int
    spec_hash: str
    git_revision: str | None


def has_studies_table(conn: Connection) -> bool:
    return inspect(conn).has_table(StudyModel.__tablename__)


def resolve_study(conn: Connection, study: str | None) -> tuple[int, str]:
    """(id, name) of the named study, or of the latest one when ``study`` is None (LookupError if none)."""
    url = display_url(conn.engine)
    if not has_studies_table(conn):
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
        hint = did_you_mean(study, names)
        raise LookupError(f"no study named {study!r} in {url}{hint}; studies: {shown or '(none)'}")
    return int(row[0]), str(row[1])


def study_rows(engine: Engine) -> list[StudyRow] | None:
    """One row per study, oldest first, counted in SQL; None when the database has no ablate tables."""
    with engine.connect() as conn:
        if not has_studies_table(conn):
            return None
        per_trial = (
            select(
                RunModel.study_id,
                RunModel.trial_number,
                func.count().label("n"),
                func.sum(case((RunModel.status == "complete", 1), else_=0)).label("n_ok"),
            )
            .where(RunModel.role == "trial")
            .group_by(RunModel.study_id, RunModel.trial_key, RunModel.trial_number)  # one trial per key
            .subquery()
        )
        complete = select(per_trial.c.study_id, func.count().label("n_trials")).where(per_trial.c.n == per_trial.c.n_ok)
        if {"trials", "studies"} <= set(inspect(conn).get_table_names()):
            o_studies = table("studies", column("study_id"), column("study_name"))
            o_trials = table("trials", column("study_id"), column("number"), column("state"))
            # Optuna's COMPLETE trials as one subquery joined on (study name, number). DISTINCT keeps SQLite
            # from flattening it into the join, which scanned a study's trials once per trial (20 s at
            # 10,000 trials); materialised, it is joined through an automatic index.
            done = (
                select(o_studies.c.study_name, o_trials.c.number)
                .select_from(o_trials.join(o_studies, o_trials.c.study_id == o_studies.c.study_id))
                .where(cast(o_trials.c.state, String) == "COMPLETE")  # an enum on PostgreSQL
                .distinct()
                .subquery()
            )
            complete = complete.join(StudyModel, StudyModel.id == per_trial.c.study_id).join(
                done,
                and_(done.c.study_name == StudyModel.optuna_study_name, done.c.number == per_trial.c.trial_number),
            )
        n_trials = complete.group_by(per_trial.c.study_id).subquery()
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
        return [StudyRow(r[0], r[1], r[2], int(r[3]), int(r[4]), r[5], r[6]) for r in conn.execute(stmt)]


def latest_study(engine: Engine) -> str:
    """Name of the most recently created study (LookupError when there is none)."""
    with engine.connect() as conn:
        return resolve_study(conn, None)[1]


def settings_from(name: str, objectives_json: str | None, spec_text: str | None) -> dict[str, Any]:
    """What the reads need from a study's stored spec: objectives, threshold, seeds, judged group."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    metrics = [o["metric"] for o in json.loads(objectives_json or "[]")]
    try:
        spec = tomllib.loads(spec_text or "")
    except tomllib.TOMLDecodeError:
        spec = {}
    probe, study_sec = spec.get("probe", {}), spec.get("study", {})
    subject = spec.get("subject")
    # The subject's groups in the spec's order: a [subject] names its own, AA-CLIP has two.
    groups = list(subject.get("groups", {})) if isinstance(subject, dict) else list(AACLIP_GROUPS)
    return {
        "study": name,
        "objectives": metrics,
        "directions": {m: OBJECTIVES[m].direction for m in metrics if m in OBJECTIVES},
        "threshold": float(probe.get("threshold", 0.8)),
        "seeds": [int(x) for x in study_sec.get("seeds", [0])],
        "group": str(probe.get("group") or (groups[0] if groups else "all")),
        "groups": [*groups, "all"],
        "subject": "module" if isinstance(subject, dict) else "aaclip",
    }


def settings(conn: Connection, study_id: int, name: str) -> dict[str, Any]:
    row = conn.execute(select(StudyModel.objectives, StudyModel.spec_text).where(StudyModel.id == study_id)).one()
    return settings_from(name, row.objectives, row.spec_text)


def study_settings(engine: Engine, study: str | None = None) -> dict[str, Any]:
    """The stored spec's plot and ranking settings (a database is self-describing)."""
    with engine.connect() as conn:
        study_id, name = resolve_study(conn, study)
        return settings(conn, study_id, name)
