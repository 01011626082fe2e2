"""Engine set-up: one SQLAlchemy URL for SQLite (local workers) or PostgreSQL (many machines).

Why here: every caller (CLI, study workers, notebooks, tests) must get the same connection settings,
above all SQLite's WAL journal and busy timeout, without which several local workers writing to
``results.db`` fail with "database is locked" (docs/workers-and-faults.md).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from ablate.store.schema import ADDED_RUN_COLUMNS, TABLES, Base, RunModel

T = TypeVar("T")

DEFAULT_STORAGE = "sqlite:///results.db"
STORAGE_ENV = "ABLATE_STORAGE"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10
# Connections one process may hold on PostgreSQL: ablate's engine at most PG_POOL_SIZE (the main
# thread and the run heartbeat's), Optuna's storage at most OPTUNA_PG_POOL_SIZE (ablate/study/runner.py
# _rdb_storage). 3 per worker, so 32 workers (96) fit the server's default max_connections = 100. A
# thread that finds the pool busy waits for a connection (the work between is milliseconds).
PG_POOL_SIZE = 2
OPTUNA_PG_POOL_SIZE = 1
PG_POOL_TIMEOUT_S = 120

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def storage_url(explicit: str | None = None) -> str:
    """The storage to use: an explicit ``--storage`` wins, then ``$ABLATE_STORAGE``, then the default."""
    if explicit:
        return explicit
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def find_storage(start: str | Path | None = None) -> str:
    """The storage a notebook opens: ``$ABLATE_STORAGE``, else ``results.db`` in ``start`` (default:
    the working directory) or in its parent. Jupyter starts a notebook in its own folder, so from
    ``notebooks/`` the repository's ``results.db`` is one folder up. ValueError names where it looked.
    """
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    here = Path(start or Path.cwd()).resolve()
    looked = [here / "results.db", here.parent / "results.db"]
    for path in looked:
        if path.is_file():
            return f"sqlite:///{path}"
    raise ValueError(
        f"no results.db in {looked[0].parent} or {looked[1].parent}; run `ablate study run "
        f"studies/quick.toml` in the repository root, or set {STORAGE_ENV} to a storage URL"
    )


def display_url(url: str | URL | Engine) -> str:
    """The URL as it may be printed: passwords masked."""
    if isinstance(url, Engine):
        url = url.url
    if isinstance(url, str):
        try:
            url = make_url(url)
        except ArgumentError:
            return url
    return url.render_as_string(hide_password=True)


def normalize_url(url: str) -> URL:
    """Parse and check a storage URL; map plain ``postgresql://`` to the psycopg (v3) driver.

    Raises ValueError with one line naming the storage for anything that is not SQLite or PostgreSQL.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(
            f"invalid storage URL {url!r}: expected e.g. sqlite:///results.db or postgresql://user@host/db"
        ) from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgres":  # the libpq spelling
        backend = "postgresql"
    if backend == "postgresql":
        if driver not in ("", "psycopg"):
            raise ValueError(
                f"unsupported PostgreSQL driver {driver!r} in storage {display_url(parsed)!r}: "
                "use postgresql:// or postgresql+psycopg://"
            )
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise ValueError(f"unsupported SQLite driver {driver!r} in storage {url!r}: use sqlite:///path.db")
        path = _sqlite_file(parsed)
        if path is not None:  # absolute, so a later chdir cannot point pooled connections elsewhere
            parsed = parsed.set(database=str(path.expanduser().resolve()))
        return parsed
    raise ValueError(f"unsupported storage {display_url(parsed)!r}: use sqlite:///path.db or postgresql://user@host/db")


def is_memory_sqlite(url: str) -> bool:
    """True for a SQLite URL with no file (``sqlite://``, ``:memory:``): it vanishes with the process."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False
    return parsed.drivername.partition("+")[0] == "sqlite" and _sqlite_file(parsed) is None


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_file(url: URL) -> Path | None:
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA foreign_keys = ON")
    finally:
        cur.close()


def make_engine(url: str) -> Engine:
    """A cached Engine for ``url`` (one per distinct URL in this process).

    SQLite: WAL journal, a 30 s busy timeout and foreign keys on every connection (set by a connect
    event, so pooled connections all have them). The parent directory must exist. PostgreSQL: psycopg 3,
    pre-ping, a connect timeout so an unreachable server fails in seconds, and a small pool
    (PG_POOL_SIZE) so many workers fit the server's connection limit. Nothing connects here.
    """
    parsed = normalize_url(url)
    key = parsed.render_as_string(hide_password=False)
    with _lock:
        engine = _engines.get(key)
        if engine is not None:
            return engine
        if parsed.get_backend_name() == "sqlite":
            path = _sqlite_file(parsed)
            if path is not None and not path.parent.is_dir():
                raise ValueError(f"storage {url!r}: directory {str(path.parent)!r} does not exist")
            try:
                engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            except (ArgumentError, NoSuchModuleError) as exc:
                raise ValueError(f"invalid storage {url!r}: {exc}") from exc
            event.listen(engine, "connect", _on_sqlite_connect)
        else:
            try:
                engine = create_engine(
                    parsed,
                    pool_pre_ping=True,
                    pool_size=PG_POOL_SIZE,
                    max_overflow=0,
                    pool_timeout=PG_POOL_TIMEOUT_S,
                    connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
                )
            except (ArgumentError, NoSuchModuleError) as exc:
                raise ValueError(f"invalid storage {display_url(parsed)!r}: {exc}") from exc
        _engines[key] = engine
        return engine


def checkpoint_sqlite(url: str | URL | Engine, timeout_s: float = 2.0) -> bool:
    """Move everything in a SQLite file's write-ahead log into the file and empty the log
    (``PRAGMA wal_checkpoint(TRUNCATE)``), so that ``results.db`` alone holds the whole study and a
    copy of that one file loses nothing. True when done, or when there is nothing to do (PostgreSQL,
    no file); False when another process still reads or writes the file (its own exit checkpoints).

    Its own connection with a short busy timeout: a worker that finishes while others still run must
    not hold their writes up for the pool's 30 s.
    """
    import sqlite3

    parsed = url.url if isinstance(url, Engine) else normalize_url(url) if isinstance(url, str) else url
    path = _sqlite_file(parsed) if parsed.get_backend_name() == "sqlite" else None
    if path is None or not path.expanduser().exists():
        return True
    conn = sqlite3.connect(str(path.expanduser()), timeout=timeout_s)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return busy == 0


def dispose_engines() -> None:
    """Close every cached engine's pooled connections and forget them (tests, forked workers)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


# The last: two workers stamping Optuna's fresh schema with its alembic revision (SQLite's wording;
# PostgreSQL's is "duplicate key value").
_SCHEMA_RACE = (
    "already exists",
    "duplicate key value",
    "database is locked",
    "UNIQUE constraint failed: alembic_version",
)


def retry_schema_race(create: Callable[[], T], attempts: int = 6) -> T:
    """Run a call that creates tables, retrying while another process is creating the same ones.

    Schema creation (ours, and Optuna's on first use) takes no lock: workers started together on an
    empty database race, and the losers see "table ... already exists" (SQLite) or a unique
    violation on a type (PostgreSQL). Once the winner has committed, the same call succeeds.
    """
    for attempt in range(attempts):
        try:
            return create()
        except DBAPIError as exc:
            if attempt == attempts - 1 or not any(s in str(exc) for s in _SCHEMA_RACE):
                raise
            time.sleep(0.25 * (attempt + 1))
    raise AssertionError("unreachable")


def create_schema(engine: Engine) -> None:
    """Create the ablate_* tables that do not exist yet; never touches any other table.

    Concurrent workers may race on a fresh database (see :func:`retry_schema_race`). A storage that
    cannot be opened raises ValueError naming it.
    """
    try:
        retry_schema_race(lambda: Base.metadata.create_all(engine, checkfirst=True))
    except DBAPIError as exc:
        raise ValueError(f"cannot open storage {display_url(engine)!r}: {_first_line(exc)}") from exc


def _missing_columns(engine: Engine) -> dict[str, list[str]]:
    """Per existing ablate_* table, the columns this version has and the file lacks."""
    insp = inspect(engine)
    present = set(insp.get_table_names())
    out = {}
    for table in TABLES:
        if table.name not in present:
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        missing = [c.name for c in table.columns if c.name not in have]
        if missing:
            out[table.name] = missing
    return out


def _refuse_older(engine: Engine, missing: dict[str, list[str]], addable: bool) -> None:
    for name, cols in missing.items():
        bad = [c for c in cols if not (addable and name == RunModel.__tablename__ and c in ADDED_RUN_COLUMNS)]
        if bad:
            raise ValueError(
                f"storage {display_url(engine)!r} was written by an older ablate: {name} lacks "
                f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; use a new database file"
            )


def check_schema(engine: Engine, readable: bool = False) -> None:
    """Refuse a database whose ablate_* tables predate columns this version reads and writes.

    ``create_all`` adds missing tables, never missing columns, so an older file would otherwise fail
    mid-study with an SQL error. The nullable columns of ``ADDED_RUN_COLUMNS`` are the exception:
    :func:`upgrade_schema` adds them, and with ``readable=True`` (read-only commands, which never
    write) their absence is allowed, since the queries read them as NULL. There is no other
    migration: the message says to start a new file.
    """
    _refuse_older(engine, _missing_columns(engine), addable=readable)


def upgrade_schema(engine: Engine) -> list[str]:
    """Add the ``ADDED_RUN_COLUMNS`` an older ablate_runs table lacks (nullable columns of the type
    the schema declares, so its rows read as not evaluated, of no recorded worker); returns what was
    added. Another worker adding the same column at the same moment is not an error."""
    missing = _missing_columns(engine)
    _refuse_older(engine, missing, addable=True)
    added = []
    table = RunModel.__tablename__
    for column in missing.get(table, []):
        sql_type = RunModel.__table__.c[column].type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
            added.append(column)
        except DBAPIError as exc:
            if column not in {c["name"] for c in inspect(engine).get_columns(table)}:
                raise ValueError(f"cannot add {column} to {table}: {_first_line(exc)}") from exc
    return added


def open_storage(url: str | None = None, create: bool = True) -> Engine:
    """Resolve the storage (explicit > $ABLATE_STORAGE > default), make its engine, ensure the schema.

    With ``create=False`` (read-only commands such as ``ablate query``) a missing SQLite file is an
    error instead of silently creating an empty database, and the schema is left as it is.
    """
    resolved = storage_url(url)
    engine = make_engine(resolved)
    if not create:
        path = _sqlite_file(engine.url) if is_sqlite(engine) else None
        if path is not None and not path.expanduser().exists():
            raise ValueError(f"storage {resolved!r} does not exist (no file {str(path)!r})")
        try:
            with engine.connect():
                pass
        except SQLAlchemyError as exc:
            raise ValueError(f"cannot open storage {display_url(engine)!r}: {_first_line(exc)}") from exc
        check_schema(engine, readable=True)
        check_version(engine)
        return engine
    from ablate.store import migrate

    try:
        with engine.connect() as conn:
            fresh = migrate.schema_version(conn) is None
    except SQLAlchemyError as exc:
        raise ValueError(f"cannot open storage {display_url(engine)!r}: {_first_line(exc)}") from exc
    create_schema(engine)
    upgrade_schema(engine)
    if fresh:
        migrate.stamp_new(engine)
    else:
        migrate.upgrade(engine)
    return engine


def check_version(engine: Engine) -> None:
    """Refuse (ValueError, one line) a file an older ablate wrote: reads never write to it."""
    from ablate.store import migrate
    from ablate.store.schema import SCHEMA_VERSION

    with engine.connect() as conn:
        version = migrate.schema_version(conn)
    if version is not None and version < SCHEMA_VERSION:
        raise ValueError(
            f"storage {display_url(engine)!r} has schema {version} (written by an older ablate); upgrade it "
            f"once with `ablate db upgrade --storage {display_url(engine)}` (every number is kept)"
        )


def upgrade_storage(url: str | None = None) -> list[str]:
    """``ablate db upgrade``: bring an existing database to this release's layout; one line per step."""
    from ablate.store import migrate

    engine = make_engine(storage_url(url))
    path = _sqlite_file(engine.url) if is_sqlite(engine) else None
    if path is not None and not path.expanduser().exists():
        raise ValueError(f"storage {storage_url(url)!r} does not exist (no file {str(path)!r})")
    with engine.connect() as conn:
        if migrate.schema_version(conn) is None:
            raise ValueError(f"storage {display_url(engine)!r} holds no ablate tables")
    create_schema(engine)
    steps = [f"added column {c}" for c in upgrade_schema(engine)]
    return steps + migrate.upgrade(engine)
