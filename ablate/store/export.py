"""``ablate db export OUT.db``: the results, or the chosen studies, as one self-contained SQLite file
that every read command, Optuna's tools and ``ablate report`` accept.

- From SQLite, the copy is taken through SQLite's backup API: a consistent snapshot of the file and
  of its write-ahead log, even while workers write (a byte copy of ``results.db`` would miss what the
  log still holds).
- Chosen studies (``--study``), and any study from PostgreSQL, are copied row by row into a new file:
  ablate's tables created from this release's schema, Optuna's by Optuna itself, then every row of
  those studies with its ids kept, read in one snapshot (PostgreSQL: a REPEATABLE READ, read-only
  transaction; SQLite: the backup).

The file is written beside ``OUT.db`` under a temporary name and renamed into place at the end, so
an interrupted export leaves no half-written file; an existing ``OUT.db`` is refused.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, inspect, select

from ablate.store.engine import display_url, is_sqlite
from ablate.store.schema import Base, RunModel, StudyModel

# Optuna's tables that hold the file's own versions, not a study's rows: the new file has its own.
OPTUNA_VERSION_TABLES = ("version_info", "alembic_version")
_BATCH = 5_000  # rows per insert (one executemany)


@dataclass
class Exported:
    path: Path
    studies: list[str]
    rows: dict[str, int] = field(default_factory=dict)  # per table, rows written (row copies only)
    method: str = "backup"  # "backup" (SQLite's backup API, every study) or "rows" (the chosen studies)
    left_out: list[str] = field(default_factory=list)  # tables of the source not tied to a study


def _sqlite_path(engine: Engine) -> str:
    return str(Path(engine.url.database or "").expanduser())


def _backup(source: Engine, dest: Path) -> None:
    """SQLite's online backup of the whole file (its log included) into ``dest``."""
    src = sqlite3.connect(_sqlite_path(source), timeout=30)
    out = sqlite3.connect(str(dest))
    try:
        src.backup(out)
        out.execute("PRAGMA journal_mode = DELETE")  # one file to share, no -wal beside it
    finally:
        out.close()
        src.close()


def _study_names(conn: Connection, wanted: Sequence[str] | None) -> list[tuple[int, str, str]]:
    """(ablate id, name, Optuna study name) of the chosen studies; LookupError names a missing one."""
    from ablate.errors import did_you_mean
    from ablate.store.catalog import has_studies_table

    if not has_studies_table(conn):
        raise LookupError(f"no ablate studies in {display_url(conn.engine)}")
    rows = conn.execute(
        select(StudyModel.id, StudyModel.name, StudyModel.optuna_study_name).order_by(StudyModel.id)
    ).all()
    if not wanted:
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]
    names = [str(r[1]) for r in rows]
    missing = [n for n in wanted if n not in names]
    if missing:
        hints = ", ".join(f"{n!r}{did_you_mean(n, names)}" for n in missing)
        raise LookupError(f"no study named {hints} in {display_url(conn.engine)}; studies: {', '.join(names)}")
    chosen = list(dict.fromkeys(wanted))
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows if str(r[1]) in chosen]


def _row_filter(name: str, src: Table, tables: dict[str, Table], ids: list[int], optuna_names: list[str]) -> Any:
    """The WHERE clause that keeps the chosen studies' rows of ``src``; None copies every row; False
    leaves the table out."""
    cols = src.c
    if name == StudyModel.__tablename__:
        return cols.id.in_(ids)
    if name.startswith("ablate_"):
        if "study_id" in cols:
            return cols.study_id.in_(ids)
        if "run_id" in cols:
            runs = tables[RunModel.__tablename__]
            return cols.run_id.in_(select(runs.c.id).where(runs.c.study_id.in_(ids)))
        return None  # ablate_schema: facts about the file
    studies = tables.get("studies")
    if studies is None:
        return False
    optuna_ids = select(studies.c.study_id).where(studies.c.study_name.in_(optuna_names))
    if name == "studies":
        return cols.study_name.in_(optuna_names)
    if "study_id" in cols:
        return cols.study_id.in_(optuna_ids)
    if "trial_id" in cols and "trials" in tables:
        trials = tables["trials"]
        return cols.trial_id.in_(select(trials.c.trial_id).where(trials.c.study_id.in_(optuna_ids)))
    return False


def _create_tables(dest_url: str, with_optuna: bool) -> None:
    engine = create_engine(dest_url)
    try:
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()
    if with_optuna:
        import optuna

        storage = optuna.storages.RDBStorage(dest_url)  # Optuna's own schema and version rows
        storage.engine.dispose()


def _copy_rows(source: Connection, dest_url: str, chosen: list[tuple[int, str, str]], result: Exported) -> None:
    names = set(inspect(source).get_table_names())
    _create_tables(dest_url, with_optuna="studies" in names and "trials" in names)
    dest_engine = create_engine(dest_url)
    try:
        dest_meta = MetaData()
        dest_meta.reflect(dest_engine)
        src_meta = MetaData()
        src_meta.reflect(source, only=[t for t in dest_meta.tables if t in names])
        ids, optuna_names = [c[0] for c in chosen], [c[2] for c in chosen]
        result.left_out = sorted(names - set(dest_meta.tables))
        with dest_engine.begin() as out:
            out.exec_driver_sql("PRAGMA foreign_keys = OFF")  # ids are copied as they are; parents first anyway
            for table in dest_meta.sorted_tables:
                src = src_meta.tables.get(table.name)
                if src is None or table.name in OPTUNA_VERSION_TABLES:
                    continue
                where = _row_filter(table.name, src, src_meta.tables, ids, optuna_names)
                if where is False:
                    result.left_out.append(table.name)
                    continue
                columns = [c for c in src.c if c.name in table.c]
                stmt = select(*columns) if where is None else select(*columns).where(where)
                count = 0
                rows = source.execution_options(stream_results=True, yield_per=_BATCH).execute(stmt)
                for part in rows.mappings().partitions(_BATCH):
                    out.execute(table.insert(), [dict(r) for r in part])
                    count += len(part)
                result.rows[table.name] = count
    finally:
        dest_engine.dispose()


def export_database(source: Engine, out: str | Path, studies: Sequence[str] | None = None) -> Exported:
    """Write ``out`` (a new SQLite file): every study, or those named in ``studies``.

    ValueError when ``out`` exists or its folder does not; LookupError for a study the source lacks.
    """
    path = Path(out).expanduser()
    if path.exists():
        raise ValueError(f"{out} exists; give a new file (the export never overwrites one)")
    if not path.parent.is_dir():
        raise ValueError(f"folder {str(path.parent)!r} does not exist")
    if is_sqlite(source) and Path(_sqlite_path(source)).resolve() == path.resolve():
        raise ValueError(f"{out} is the database being exported")
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    snapshot = path.with_name(f".{path.name}.snapshot-{os.getpid()}")
    try:
        if is_sqlite(source):
            with source.connect() as conn:
                chosen = _study_names(conn, studies)
            if not studies:
                _backup(source, partial)
                os.replace(partial, path)
                return Exported(path, [c[1] for c in chosen])
            _backup(source, snapshot)  # one consistent snapshot to copy the chosen studies from
            snap = create_engine(f"sqlite:///{snapshot}")
            try:
                with snap.connect() as conn:
                    result = Exported(path, [c[1] for c in chosen], method="rows")
                    _copy_rows(conn, f"sqlite:///{partial}", chosen, result)
            finally:
                snap.dispose()
        else:
            with source.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                chosen = _study_names(conn, studies)
                result = Exported(path, [c[1] for c in chosen], method="rows")
                _copy_rows(conn, f"sqlite:///{partial}", chosen, result)
        os.replace(partial, path)
        return result
    finally:
        for leftover in (partial, snapshot):
            if leftover.exists():
                leftover.unlink()
