"""Upgrading a results database written by an older ablate to this release's layout.

Every file records its layout in ``ablate_schema`` (``schema_version``); a file with ablate tables,
no such record and ablate 0.1.0's wide per-group columns was written by that release (schema 1).
``ablate study run`` upgrades the file it writes to; ``ablate db upgrade`` does it explicitly; read
commands refuse an old file with a one-line hint instead of writing to it. Each step runs in one
transaction (on PostgreSQL under an advisory lock, on SQLite under the write lock), so workers
starting together upgrade it once and a failed step leaves the file as it was.

Schema 1 -> 2: AA-CLIP's per-group numbers (``train_grad_ratio_layers``, ``grad_share_proj``, ...,
33 columns of ablate_runs and ablate_probe_points) move to the long tables ablate_run_groups and
ablate_probe_groups, keyed by group name, so that any subject's groups fit; the old columns go. And
ablate_runs' CHECK constraints admit the ``stage1`` role (a subject's per-seed Stage 1 run): SQLite
cannot alter a constraint, so there the table is rebuilt (foreign keys off while it is, so no child
row is touched); PostgreSQL drops and adds the constraints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, insert, inspect, text
from sqlalchemy.exc import IntegrityError

from ablate.store.schema import (
    PROBE_GROUP_COLUMNS,
    RUN_GROUP_COLUMNS,
    SCHEMA_VERSION,
    ProbeGroupMetricModel,
    ProbePointModel,
    RunGroupMetricModel,
    RunModel,
    SchemaInfoModel,
)

VERSION_KEY = "schema_version"
V1_GROUPS = ("layers", "proj", "all")  # the groups schema 1 kept as columns (AA-CLIP's, and their union)
PG_LOCK_KEY = 727_001  # advisory lock id for upgrades (any constant unique to ablate)


class OldSchema(ValueError):
    """A read command met a file written by an older ablate (it does not write to it)."""


def schema_version(conn: Connection) -> int | None:
    """The file's layout: None for a database without ablate tables, else its schema version."""
    tables = set(inspect(conn).get_table_names())
    if RunModel.__tablename__ not in tables:
        return None
    if SchemaInfoModel.__tablename__ in tables:
        row = conn.execute(
            text(f"SELECT value FROM {SchemaInfoModel.__tablename__} WHERE key = :k"), {"k": VERSION_KEY}
        ).first()
        if row is not None:
            return int(row[0])
    # No record. A file 0.1.0 wrote has the wide per-group columns; one without them is a fresh file
    # another worker created a moment ago and is about to stamp (reading it as schema 1 would
    # "upgrade" it under that worker's feet).
    wide = {t.format(g=g) for g in V1_GROUPS for t in RUN_GROUP_COLUMNS.values()}
    return 1 if wide & _columns(conn, RunModel.__tablename__) else SCHEMA_VERSION


def stamp(conn: Connection, version: int = SCHEMA_VERSION) -> None:
    """Record the layout (insert or update the version row)."""
    table = SchemaInfoModel.__table__
    updated = conn.execute(table.update().where(table.c.key == VERSION_KEY).values(value=str(version)))
    if updated.rowcount == 0:
        conn.execute(insert(table).values(key=VERSION_KEY, value=str(version)))


def stamp_new(engine: Engine) -> None:
    """Record the current layout in a file whose tables were just created (a race with another
    worker doing the same is not an error)."""
    try:
        with engine.begin() as conn:
            if (
                conn.execute(
                    text(f"SELECT 1 FROM {SchemaInfoModel.__tablename__} WHERE key = :k"), {"k": VERSION_KEY}
                ).first()
                is None
            ):
                stamp(conn)
    except IntegrityError:
        pass


def _columns(conn: Connection, table: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(table)}


def _flags(nonfinite: str | None) -> dict[str, str]:
    return json.loads(nonfinite) if nonfinite else {}


def _move_group_columns(
    conn: Connection, table: str, key: dict[str, str], templates: dict[str, str], target: Any
) -> int:
    """Copy the schema-1 per-group columns of ``table`` into ``target``'s long rows, then drop them.
    ``key``: the long table's key columns -> the SQL that reads each from ``table``."""
    have = _columns(conn, table)
    wide = {
        (g, name): template.format(g=g)
        for g in V1_GROUPS
        for name, template in templates.items()
        if template.format(g=g) in have
    }
    if not wide:
        return 0
    cols = ", ".join([*(f"{sql} AS {name}" for name, sql in key.items()), "nonfinite", *wide.values()])
    rows = []
    for rec in conn.execute(text(f"SELECT {cols} FROM {table}")).mappings():
        flags = _flags(rec["nonfinite"])
        for (g, name), column in wide.items():
            value, flag = rec[column], flags.get(column)
            if value is None and flag is None:
                continue  # never measured (a failed run): no row, as this release writes it
            rows.append({**{k: rec[k] for k in key}, "group_name": g, "name": name, "value": value, "flag": flag})
    for start in range(0, len(rows), 5000):
        conn.execute(insert(target.__table__), rows[start : start + 5000])
    # The dropped columns' flags leave the JSON too (read-back decodes only the columns that exist).
    moved = set(wide.values())
    for rec in conn.execute(text(f"SELECT id, nonfinite FROM {table} WHERE nonfinite IS NOT NULL")).mappings():
        flags = _flags(rec["nonfinite"])
        kept = {k: v for k, v in flags.items() if k not in moved}
        if kept != flags:
            conn.execute(
                text(f"UPDATE {table} SET nonfinite = :n WHERE id = :id"),
                {"n": json.dumps(kept) if kept else None, "id": rec["id"]},
            )
    for column in wide.values():
        conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    return len(rows)


def _run_checks(conn: Connection) -> None:
    """Give ablate_runs this release's CHECK constraints (rows and ids unchanged)."""
    from sqlalchemy import CheckConstraint
    from sqlalchemy.schema import CreateIndex, CreateTable

    table = RunModel.__table__
    if conn.dialect.name == "postgresql":
        for c in table.constraints:
            if isinstance(c, CheckConstraint):
                conn.execute(text(f"ALTER TABLE {table.name} DROP CONSTRAINT IF EXISTS {c.name}"))
                conn.execute(text(f"ALTER TABLE {table.name} ADD CONSTRAINT {c.name} CHECK ({c.sqltext})"))
        return
    tmp = f"{table.name}_rebuilt"
    ddl = str(CreateTable(table).compile(dialect=conn.dialect))
    conn.exec_driver_sql(ddl.replace(f"CREATE TABLE {table.name} ", f"CREATE TABLE {tmp} ", 1))
    have = _columns(conn, table.name)
    cols = ", ".join(c.name for c in table.columns if c.name in have)
    conn.exec_driver_sql(f"INSERT INTO {tmp} ({cols}) SELECT {cols} FROM {table.name}")
    conn.exec_driver_sql(f"DROP TABLE {table.name}")
    conn.exec_driver_sql(f"ALTER TABLE {tmp} RENAME TO {table.name}")
    for index in table.indexes:
        conn.execute(CreateIndex(index))
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"rebuilding {table.name} broke {len(broken)} foreign keys; the upgrade is rolled back")


def _v1_to_v2(conn: Connection) -> str:
    runs = _move_group_columns(conn, RunModel.__tablename__, {"run_id": "id"}, RUN_GROUP_COLUMNS, RunGroupMetricModel)
    probes = _move_group_columns(
        conn,
        ProbePointModel.__tablename__,
        {"run_id": "run_id", "step": "step"},
        PROBE_GROUP_COLUMNS,
        ProbeGroupMetricModel,
    )
    _run_checks(conn)
    return (
        f"schema 1 -> 2: per-group numbers moved to long tables ({runs} run values, {probes} probe values); "
        "runs admit the stage1 role"
    )


# version -> the step that upgrades a file from it to the next version
STEPS: dict[int, Callable[[Connection], str]] = {1: _v1_to_v2}


def upgrade(engine: Engine) -> list[str]:
    """Bring the file to ``SCHEMA_VERSION``; returns one line per step taken (none when current).

    The tables this release adds must exist already (ablate.store.engine.create_schema).
    """
    done: list[str] = []
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:  # a no-op inside a transaction: before the first write begins one
            conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
        try:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
            elif inspect(conn).has_table(RunModel.__tablename__):
                # A write first takes SQLite's write lock before anything is read: a second worker
                # waits here, then reads the version the first one left.
                conn.execute(text(f"UPDATE {RunModel.__tablename__} SET id = id WHERE 1 = 0"))
            version = schema_version(conn)
            if version is not None and version < SCHEMA_VERSION:
                while version < SCHEMA_VERSION:
                    done.append(STEPS[version](conn))
                    version += 1
                stamp(conn, version)
            conn.commit()
        finally:
            if sqlite:
                conn.rollback()
                conn.exec_driver_sql("PRAGMA foreign_keys = ON")
    return done
