"""SQLAlchemy 2.0 declarative schema for ablate's own tables (docs/results-database.md).

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
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ablate.eval import EVAL_METRICS

TABLE_PREFIX = "ablate_"
BASELINE_TRIAL_KEY = -1  # the no-branch reference run of a seed
CONTROL_TRIAL_KEY = -2  # the frozen-adapter control of a seed (no branch, block adapters not updated)
STAGE1_TRIAL_KEY = -3  # the subject's Stage 1 of a seed (AA-CLIP: the text adapter every arm of the seed uses)
ROLES = ("trial", "baseline", "control", "stage1")
# Runs of a seed that belong to no trial (trial_number NULL): one per (study, role, seed).
REFERENCE_KEYS = {"baseline": BASELINE_TRIAL_KEY, "control": CONTROL_TRIAL_KEY, "stage1": STAGE1_TRIAL_KEY}
# Per-group numbers live in long tables keyed by group name (ablate_run_groups, ablate_probe_groups):
# any subject's groups, plus their union "all". Read back, each becomes a column named by the
# template below (train_grad_ratio_layers, grad_ratio_proj_lo, ...), so frames look alike for every
# subject. AA-CLIP's groups were columns of ablate_runs / ablate_probe_points until schema 2.
RUN_GROUP_COLUMNS = {
    "train_grad_ratio": "train_grad_ratio_{g}",
    "train_update_ratio": "train_update_ratio_{g}",
    "grad_ratio_init": "grad_ratio_init_{g}",
    "grad_share_init": "grad_share_init_{g}",
}
PROBE_GROUP_COLUMNS = {
    "grad_ratio": "grad_ratio_{g}",
    "grad_ratio_lo": "grad_ratio_{g}_lo",
    "grad_ratio_hi": "grad_ratio_{g}_hi",
    "grad_share": "grad_share_{g}",
    "grad_norm_with": "grad_norm_{g}_with",
    "grad_norm_without": "grad_norm_{g}_without",
}
# The schema this release writes; ablate/store/migrate.py upgrades older files to it.
SCHEMA_VERSION = 2
STATUSES = ("running", "complete", "failed", "pruned")
# Optuna study user attribute (+ host) where the study runner notes each machine's hardware; an
# attribute rather than a column, so databases written before it need nothing (ablate report reads it).
HARDWARE_ATTR = "ablate_hardware:"

# The end-of-run evaluation (ablate/eval): the mean over classes of the metrics AA-CLIP reports; NULL
# when the run was not evaluated. Per class they are rows of ablate_class_metrics.
EVAL_FIELDS = EVAL_METRICS
# Lag-1 autocorrelation of the judged group's per-step log ratios that each within-seed interval of
# train_grad_ratio / train_update_ratio was widened for (ablate.stats.series_ci); NULL in older runs.
AUTOCORRELATION_FIELDS = ("train_grad_ratio_ac1", "train_update_ratio_ac1")
# Where a run ran (ablate/store/provenance.py worker_record): the worker's host, process id,
# launcher (cli, local, slurm, submitit-local, ray, kubernetes), job or task id, and the devices it saw
# (CUDA_VISIBLE_DEVICES, or "cpu").
WORKER_FIELDS = ("worker_host", "worker_pid", "worker_launcher", "worker_job", "worker_devices")
# Columns added to ablate_runs after databases had been written without them: all nullable, so
# ablate.store.engine adds them to an older file (ALTER TABLE ... ADD COLUMN) and its runs read as
# not evaluated, without an autocorrelation or of no recorded worker. Any other missing column still
# refuses the file.
ADDED_RUN_COLUMNS = (*EVAL_FIELDS, *AUTOCORRELATION_FIELDS, *WORKER_FIELDS)

# Summary columns of ablate_runs that are floats (``steps`` is the one integer summary column).
# ``grad_ratio_*`` are bypass-probe ratios of the run's judged group; ``train_*_ratio*`` compare the
# run with its seed's no-branch baseline run step by step (ablate/engine/compare.py).
RUN_FLOAT_FIELDS = (
    "loss_first",
    "loss_last",
    "loss_slope",
    "loss_slope_rel",
    "adapter_gain",
    "adapter_gain_lo",
    "adapter_gain_hi",
    "adapter_gain_rel",
    "adapter_gain_diff",
    "adapter_gain_diff_lo",
    "adapter_gain_diff_hi",
    "train_grad_ratio",
    "train_grad_ratio_lo",
    "train_grad_ratio_hi",
    "train_grad_ratio_ac1",
    "train_update_ratio",
    "train_update_ratio_lo",
    "train_update_ratio_hi",
    "train_update_ratio_ac1",
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
    "step_flops",
    "mfu",
    *EVAL_FIELDS,
)
RUN_SUMMARY_FIELDS = ("steps", "packed_arms", *RUN_FLOAT_FIELDS, "verdict")

PROBE_FLOAT_FIELDS = (
    "grad_ratio",
    "grad_ratio_lo",
    "grad_ratio_hi",
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
    """One ablate study: the spec it ran and the software it ran with (docs/results-database.md)."""

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
            f" OR (role = 'baseline' AND trial_number IS NULL AND trial_key = {BASELINE_TRIAL_KEY})"
            f" OR (role = 'control' AND trial_number IS NULL AND trial_key = {CONTROL_TRIAL_KEY})"
            f" OR (role = 'stage1' AND trial_number IS NULL AND trial_key = {STAGE1_TRIAL_KEY})",
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
    # Refreshed by the worker running it (ablate.store.claims.RunHeartbeat): a 'running' row whose
    # heartbeat has stopped belongs to a killed worker and may be taken over.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)

    steps: Mapped[int | None] = mapped_column(Integer)
    packed_arms: Mapped[int | None] = mapped_column(Integer)  # arms trained side by side (timings are the pack's)
    judged_group: Mapped[str | None] = mapped_column(String(32))  # adapter group verdicts and gains judge
    frozen: Mapped[str | None] = mapped_column(String(128))  # comma-separated groups not updated
    # One Float column per RUN_FLOAT_FIELDS entry (declared in a loop so that tuple stays the one list).
    for _name in RUN_FLOAT_FIELDS:
        locals()[_name] = mapped_column(_name, Float, nullable=True)
    del _name
    adapter_gain_batches: Mapped[str | None] = mapped_column(Text)  # JSON list per held-out batch
    verdict: Mapped[str | None] = mapped_column(String(16))
    nonfinite: Mapped[str | None] = mapped_column(Text)  # JSON {column: "nan"|"inf"|"-inf"}
    worker_host: Mapped[str | None] = mapped_column(String(255))  # WORKER_FIELDS: set when the run is claimed
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    worker_launcher: Mapped[str | None] = mapped_column(String(32))
    worker_job: Mapped[str | None] = mapped_column(String(128))
    worker_devices: Mapped[str | None] = mapped_column(String(128))

    @classmethod
    def find(
        cls, session: Session, study_id: int, role: str, trial_key: int, seed: int, lock: bool = False
    ) -> RunModel | None:
        """The run of (study, role, trial, seed), or None. ``lock``: hold the row until the transaction
        ends (SELECT ... FOR UPDATE; SQLite, which has no row locks, needs ``claims.write_lock`` first)."""
        stmt = select(cls).where(
            cls.study_id == study_id, cls.role == role, cls.trial_key == trial_key, cls.seed == seed
        )
        return session.scalars(stmt.with_for_update() if lock else stmt).one_or_none()


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
    judged_group: Mapped[str | None] = mapped_column(String(32))
    for _name in PROBE_FLOAT_FIELDS:
        locals()[_name] = mapped_column(_name, Float, nullable=True)
    del _name
    verdict: Mapped[str | None] = mapped_column(String(16))
    per_batch_ratios: Mapped[str | None] = mapped_column(Text)  # JSON {group: [ratio per batch]}
    nonfinite: Mapped[str | None] = mapped_column(Text)  # JSON {column: "nan"|"inf"|"-inf"}


class ClassMetricModel(Base):
    """One evaluation number of a run for one class (long format): the per-class values behind the
    run's ``image_auroc`` ... ``pixel_ap`` means, and the counts they rest on (``images``,
    ``anomalous_images``, ``pixels``, ``anomalous_pixels``). An undefined metric (a class with no
    anomalous sample) is NULL with flag "nan" and ``note`` saying why."""

    __tablename__ = "ablate_class_metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("ablate_runs.id", ondelete="CASCADE"), primary_key=True)
    class_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)
    flag: Mapped[str | None] = mapped_column(String(4))  # "nan" | "inf" | "-inf" when value is NULL
    note: Mapped[str | None] = mapped_column(Text)


class RunGroupMetricModel(Base):
    """A run's number for one adapter group (long format): ``name`` is a key of ``RUN_GROUP_COLUMNS``."""

    __tablename__ = "ablate_run_groups"

    run_id: Mapped[int] = mapped_column(ForeignKey("ablate_runs.id", ondelete="CASCADE"), primary_key=True)
    group_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)
    flag: Mapped[str | None] = mapped_column(String(4))  # "nan" | "inf" | "-inf" when value is NULL


class ProbeGroupMetricModel(Base):
    """A probe point's number for one adapter group (long format): ``name`` is a key of
    ``PROBE_GROUP_COLUMNS``; (run_id, step) is the probe point (unique per run)."""

    __tablename__ = "ablate_probe_groups"

    run_id: Mapped[int] = mapped_column(ForeignKey("ablate_runs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)
    flag: Mapped[str | None] = mapped_column(String(4))


class SchemaInfoModel(Base):
    """Facts about the database file itself; ``schema_version`` says which layout it has (files
    without this table were written by ablate 0.1.0: schema 1)."""

    __tablename__ = "ablate_schema"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class BlobModel(Base):
    """A binary artefact of a run, kept in the database so every worker of a study reads the same one
    (the Stage 1 text adapter's weights: the ``stage1`` run of a seed, ``name`` "stage1")."""

    __tablename__ = "ablate_blobs"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_ablate_blobs_run_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ablate_runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    nbytes: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime)


TABLES = tuple(Base.metadata.sorted_tables)
TABLE_NAMES = tuple(t.name for t in TABLES)
assert all(name.startswith(TABLE_PREFIX) for name in TABLE_NAMES)
