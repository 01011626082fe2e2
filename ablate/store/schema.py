"""SQLAlchemy 2.0 declarative schema for ablate's own tables (DESIGN.md §6).

One class per table, explicit named constraints, finders that take a session (the habit of
optuna/storages/_rdb/models.py). Every table is prefixed ``ablate_`` and lives on its own
``MetaData``, so ``create_all``/``drop_all`` on it can never touch Optuna's tables (``studies``,
``trials``, ``alembic_version``, ...) that share the database file.

Baseline uniqueness: a run is unique on ``(study_id, role, trial_key, seed)``. ``trial_key`` equals
``trial_number`` for trial runs and is ``-1`` for baseline runs (whose ``trial_number`` is NULL). A
unique constraint over the nullable ``trial_number`` would not do: NULLs never collide, so two
baseline rows for the same seed could coexist. A CHECK constraint keeps the two columns consistent.

Non-finite floats are stored as NULL plus a flag; see :mod:`ablate.store.encode`. Timestamps are
naive UTC.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

TABLE_PREFIX = "ablate_"
BASELINE_TRIAL_KEY = -1
ROLES = ("trial", "baseline")
STATUSES = ("running", "complete", "failed", "pruned")

# Summary columns of ablate_runs that are floats (``steps`` is the one integer summary column).
RUN_FLOAT_FIELDS = (
    "loss_first",
    "loss_last",
    "loss_slope",
    "grad_ratio_init",
    "grad_ratio_init_lo",
    "grad_ratio_init_hi",
    "grad_ratio_final",
    "grad_ratio_mean",
    "grad_share_init",
    "norm_inflation_init",
    "loss0_with",
    "loss0_without",
    "feature_cosine_init",
    "wall_s",
    "steps_per_s",
    "peak_mem_mb",
)
RUN_SUMMARY_FIELDS = ("steps", *RUN_FLOAT_FIELDS, "verdict")

PROBE_FLOAT_FIELDS = (
    "grad_ratio",
    "grad_ratio_lo",
    "grad_ratio_hi",
    "grad_ratio_layers",
    "grad_norm_with",
    "grad_norm_without",
    "grad_norm_branch",
    "grad_share",
    "norm_inflation",
    "loss_with",
    "loss_without",
    "feature_cosine",
    "threshold",
)


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class Base(DeclarativeBase):
    """Declarative base with a private MetaData: only ablate_* tables are ever created or dropped."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class StudyModel(Base):
    """One ablate study: the spec it ran and the software it ran with (DESIGN.md §7 determinism)."""

    __tablename__ = "ablate_studies"
    __table_args__ = (UniqueConstraint("name", name="uq_ablate_studies_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(512))
    optuna_study_name: Mapped[str] = mapped_column(String(512))
    spec_text: Mapped[str] = mapped_column(Text)
    spec_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    ablate_version: Mapped[str | None] = mapped_column(String(64))
    torch_version: Mapped[str | None] = mapped_column(String(64))
    open_clip_version: Mapped[str | None] = mapped_column(String(64))
    optuna_version: Mapped[str | None] = mapped_column(String(64))
    python_version: Mapped[str | None] = mapped_column(String(64))
    git_revision: Mapped[str | None] = mapped_column(String(64))
    host: Mapped[str | None] = mapped_column(String(255))
    objectives: Mapped[str] = mapped_column(Text)  # JSON list of {"metric": ..., "direction": ...}

    @classmethod
    def find_by_name(cls, name: str, session: Session) -> StudyModel | None:
        return session.scalars(select(cls).where(cls.name == name)).one_or_none()


class RunModel(Base):
    """One training run: a (trial x seed) of the search, or a no-branch baseline for a seed."""

    __tablename__ = "ablate_runs"
    __table_args__ = (
        UniqueConstraint("study_id", "role", "trial_key", "seed", name="uq_ablate_runs_study_role_trial_seed"),
        CheckConstraint(f"role IN ({_quoted(ROLES)})", name="ck_ablate_runs_role"),
        CheckConstraint(f"status IN ({_quoted(STATUSES)})", name="ck_ablate_runs_status"),
        CheckConstraint(
            "(role = 'trial' AND trial_number IS NOT NULL AND trial_key = trial_number AND trial_number >= 0)"
            f" OR (role = 'baseline' AND trial_number IS NULL AND trial_key = {BASELINE_TRIAL_KEY})",
            name="ck_ablate_runs_trial_key",
        ),
        Index("ix_ablate_runs_study_id", "study_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("ablate_studies.id", ondelete="CASCADE"))
    trial_number: Mapped[int | None] = mapped_column(Integer)  # Optuna trial number; NULL for baselines
    trial_key: Mapped[int] = mapped_column(Integer)  # trial_number, or -1 for baselines (uniqueness)
    role: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int] = mapped_column(Integer)
    fix: Mapped[str] = mapped_column(String(64))
    scale: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    device: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)

    steps: Mapped[int | None] = mapped_column(Integer)
    loss_first: Mapped[float | None] = mapped_column(Float)
    loss_last: Mapped[float | None] = mapped_column(Float)
    loss_slope: Mapped[float | None] = mapped_column(Float)
    grad_ratio_init: Mapped[float | None] = mapped_column(Float)
    grad_ratio_init_lo: Mapped[float | None] = mapped_column(Float)
    grad_ratio_init_hi: Mapped[float | None] = mapped_column(Float)
    grad_ratio_final: Mapped[float | None] = mapped_column(Float)
    grad_ratio_mean: Mapped[float | None] = mapped_column(Float)
    grad_share_init: Mapped[float | None] = mapped_column(Float)
    norm_inflation_init: Mapped[float | None] = mapped_column(Float)
    loss0_with: Mapped[float | None] = mapped_column(Float)
    loss0_without: Mapped[float | None] = mapped_column(Float)
    feature_cosine_init: Mapped[float | None] = mapped_column(Float)
    wall_s: Mapped[float | None] = mapped_column(Float)
    steps_per_s: Mapped[float | None] = mapped_column(Float)
    peak_mem_mb: Mapped[float | None] = mapped_column(Float)
    verdict: Mapped[str | None] = mapped_column(String(16))
    nonfinite: Mapped[str | None] = mapped_column(Text)  # JSON {column: "nan"|"inf"|"-inf"}

    @classmethod
    def find(cls, session: Session, study_id: int, role: str, trial_key: int, seed: int) -> RunModel | None:
        stmt = select(cls).where(
            cls.study_id == study_id, cls.role == role, cls.trial_key == trial_key, cls.seed == seed
        )
        return session.scalars(stmt).one_or_none()


class StepMetricModel(Base):
    """Per-step training metrics in long format (one row per run, step and metric name)."""

    __tablename__ = "ablate_step_metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("ablate_runs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)
    flag: Mapped[str | None] = mapped_column(String(4))  # "nan" | "inf" | "-inf" when value is NULL


class ProbePointModel(Base):
    """One paired gradient probe (ProbeResult) taken during a run."""

    __tablename__ = "ablate_probe_points"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_ablate_probe_points_run_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ablate_runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    grad_ratio: Mapped[float | None] = mapped_column(Float)
    grad_ratio_lo: Mapped[float | None] = mapped_column(Float)
    grad_ratio_hi: Mapped[float | None] = mapped_column(Float)
    grad_ratio_layers: Mapped[float | None] = mapped_column(Float)
    grad_norm_with: Mapped[float | None] = mapped_column(Float)
    grad_norm_without: Mapped[float | None] = mapped_column(Float)
    grad_norm_branch: Mapped[float | None] = mapped_column(Float)
    grad_share: Mapped[float | None] = mapped_column(Float)
    norm_inflation: Mapped[float | None] = mapped_column(Float)
    loss_with: Mapped[float | None] = mapped_column(Float)
    loss_without: Mapped[float | None] = mapped_column(Float)
    feature_cosine: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    verdict: Mapped[str | None] = mapped_column(String(16))
    per_batch_ratios: Mapped[str | None] = mapped_column(Text)  # JSON list, see encode_float_list
    nonfinite: Mapped[str | None] = mapped_column(Text)  # JSON {column: "nan"|"inf"|"-inf"}


TABLES = tuple(Base.metadata.sorted_tables)
TABLE_NAMES = tuple(t.name for t in TABLES)
assert all(name.startswith(TABLE_PREFIX) for name in TABLE_NAMES)
