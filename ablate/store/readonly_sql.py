"""``ablate query --sql``: one read-only query over the study tables, checked by a SQL parser and run
read-only with a timeout.

Two layers, both needed:

1. :func:`check_sql` parses the text with sqlglot in the engine's dialect (sqlite / postgres) and
   accepts exactly one ``SELECT`` (or set operation, or ``WITH ... SELECT``), optionally behind a plain
   ``EXPLAIN`` (SQLite also ``EXPLAIN QUERY PLAN``), that

   - reads only the study tables (ablate's ``ablate_*`` tables and Optuna's own tables) or CTEs the
     query defines, resolved with the database's scoping rules, unqualified: no schema-qualified names,
     so no ``pg_catalog``, ``information_schema`` or ``sqlite_master``; no identifier at all may start
     with ``pg_`` or ``sqlite_`` (PostgreSQL calls ``f(x)`` for ``(x).f``);
   - calls only functions on an allow-list of pure ones (aggregates, window functions, math, string,
     date/time, JSON, casts, CASE/COALESCE); anything else (``pg_terminate_backend``, ``pg_read_file``,
     ``pg_sleep``, ``set_config``, ``load_extension``, ``random`` ...) is refused by name;
   - contains no data-changing or locking part anywhere (a ``DELETE ... RETURNING`` in a CTE,
     ``SELECT ... INTO``, ``FOR UPDATE``), no ``OPERATOR(...)`` and no composite field access.

   The database then runs the statement sqlglot regenerates from the checked tree (comments dropped),
   not the user's text, so a quirk in reading strings or comments cannot smuggle in SQL the check
   never saw.

2. :func:`execute_read_only` runs it in a transaction the database keeps read-only and always rolls
   back, with a timeout: PostgreSQL ``SET TRANSACTION READ ONLY`` plus ``SET LOCAL statement_timeout``
   (and ``standard_conforming_strings``, so the regenerated literals read as written, and
   ``pg_catalog`` first on the search path, so an allowed name always calls the built-in); SQLite
   ``PRAGMA query_only`` plus a progress handler that aborts once the deadline has passed. The pooled
   connection is reset afterwards (or discarded when it cannot be). The rows are streamed, one at a
   time, and reading stops at a row cap and a byte budget (``--sql-max-rows``, ``--sql-max-bytes``),
   so no query, however many or however large the rows it would return, can take this process's
   memory; the result then says it was cut (:class:`Cut`).

Every refusal and every database error is a :class:`SQLInputError` with a one-line message; the CLI
prints it as ``error: --sql: ...`` and exits 2. Importing this module does not import sqlglot.
"""

from __future__ import annotations

import itertools
import logging
import re
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from ablate.errors import SQLInputError
from ablate.store.schema import TABLE_NAMES
from ablate.store.sql_limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT_S

# Optuna's tables (optuna/storages/_rdb/models.py) and its Alembic revision table. Named here, not read
# from Optuna's metadata, because importing optuna's models costs half a second on every `--sql`;
# tests/test_readonly_sql.py checks this set against the installed Optuna.
OPTUNA_TABLES = frozenset(
    {
        "studies", "study_directions", "study_user_attributes", "study_system_attributes",
        "trials", "trial_params", "trial_values", "trial_intermediate_values", "trial_heartbeats",
        "trial_user_attributes", "trial_system_attributes", "version_info", "alembic_version",
    }
)  # fmt: skip
STUDY_TABLES = frozenset(TABLE_NAMES) | OPTUNA_TABLES

# Functions sqlglot does not model (its Anonymous nodes) that may be called, by lowercase name: pure
# functions of their arguments (plus the current time), in SQLite or PostgreSQL. Not here on purpose:
# random/randomblob/zeroblob/repeat (not pure or a memory bomb), load_extension, every pg_* and
# sqlite_* function, current_setting/set_config, nextval/setval, lo_*, dblink*, *_to_xml (runs SQL
# given as text), version(), current_user and friends.
PURE_FUNCTIONS = frozenset(
    """
    count sum avg min max total every bool_and bool_or stddev stddev_samp stddev_pop variance var_samp
    var_pop corr covar_pop covar_samp regr_slope regr_intercept regr_r2 percentile_cont percentile_disc
    mode group_concat string_agg array_agg json_agg jsonb_agg json_object_agg jsonb_object_agg
    json_group_array json_group_object
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
    abs round floor ceil ceiling sqrt cbrt exp ln log log10 log2 power pow sign mod div trunc greatest
    least pi degrees radians sin cos tan asin acos atan atan2 width_bucket
    lower upper length char_length character_length octet_length substr substring trim ltrim rtrim
    btrim replace instr strpos position concat concat_ws left right lpad rpad split_part reverse initcap
    printf format quote hex unhex unicode char chr ascii regexp_replace regexp_match starts_with md5
    translate likely unlikely likelihood glob like
    coalesce nullif ifnull iif typeof
    date time datetime julianday strftime unixepoch timediff now current_date current_time
    current_timestamp localtime localtimestamp transaction_timestamp statement_timestamp date_trunc
    date_part extract age to_char to_timestamp to_date make_date make_time make_timestamp make_interval
    justify_days justify_hours justify_interval isfinite date_bin
    json json_extract json_array_length jsonb_array_length json_type json_typeof jsonb_typeof json_valid
    json_array json_object json_quote json_each json_tree jsonb_each json_each_text jsonb_each_text
    json_array_elements jsonb_array_elements json_array_elements_text jsonb_array_elements_text
    json_object_keys jsonb_object_keys json_extract_path json_extract_path_text jsonb_extract_path
    jsonb_extract_path_text to_json to_jsonb row_to_json array_to_json json_build_object
    jsonb_build_object json_build_array jsonb_build_array jsonb_pretty jsonb_path_query
    jsonb_path_query_first jsonb_path_exists json_strip_nulls jsonb_strip_nulls
    generate_series unnest array_length cardinality array_to_string string_to_array array_position
    """.split()
)

# sqlglot's own classes for the functions (and function-like syntax: CAST, CASE, ->, ->>, ARRAY[...])
# it models, by class name; a name this sqlglot lacks is skipped.
PURE_FUNCTION_CLASSES = """
    Count Sum Avg Min Max Stddev StddevSamp StddevPop Variance VariancePop Corr CovarPop CovarSamp
    PercentileCont PercentileDisc Mode Median LogicalAnd LogicalOr ArrayAgg GroupConcat JSONArrayAgg
    JSONObjectAgg
    RowNumber Rank DenseRank PercentRank CumeDist Ntile Lag Lead FirstValue LastValue NthValue
    Abs Round Floor Ceil Sqrt Cbrt Exp Ln Log Pow Sign Mod Trunc Greatest Least Degrees Radians Sin Cos
    Tan Asin Acos Atan Atan2 Pi
    Lower Upper Length Substring Trim Replace StrPosition Concat ConcatWs Left Right Pad SplitPart
    Reverse Initcap Format Hex Unhex Unicode Chr Ascii RegexpReplace RegexpLike RegexpILike MD5 Overlay
    StartsWith
    And Or Xor ArrayOverlaps JSONBPathExists JSONArrayContains JSONBDeleteAtPath RegexpFullMatch
    Coalesce Nullif If Case Cast TryCast Typeof Collate Exists Array ArraySize ArrayToString
    StringToArray ArrayContainsAll ArrayContainedBy ArrayContains Unnest Explode GenerateSeries
    ExplodingGenerateSeries
    CurrentDate CurrentTime CurrentTimestamp Localtime Localtimestamp Extract DateTrunc TimestampTrunc
    TimeToStr TsOrDsToTimestamp StrToTime StrToDate Date Time Datetime ToChar
    JSONExtract JSONExtractScalar JSONBExtract JSONBExtractScalar JSONBContains JSONBContainsTopKey
    JSONBContainsAnyTopKeys JSONBContainsAllTopKeys JSONType JSONObject JSONArray ParseJSON
""".split()

_SYSTEM_PREFIXES = ("pg_", "sqlite_")
_SQLGLOT_DIALECT = {"sqlite": "sqlite", "postgresql": "postgres"}


def study_tables() -> frozenset[str]:
    """The tables ``--sql`` may read: ablate's (from its schema) and Optuna's."""
    return STUDY_TABLES


# ------------------------------------------------------------------------------------------- check


@contextmanager
def _quiet_sqlglot() -> Iterator[None]:
    """sqlglot logs a warning when it falls back to an opaque Command (EXPLAIN ANALYZE, GRANT, ...);
    the refusal says it in one line, so the warning would only be noise on stderr."""
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _forbidden_nodes(exp: Any) -> dict[type, str]:
    names = {
        "DML": None, "DDL": None, "Drop": None, "Alter": None, "TruncateTable": None, "Command": None,
        "Set": "SET", "Copy": "COPY", "Pragma": "PRAGMA", "Transaction": "BEGIN", "Commit": "COMMIT",
        "Rollback": "ROLLBACK", "Use": "USE", "Attach": "ATTACH", "Detach": "DETACH", "Grant": "GRANT",
        "Revoke": "REVOKE", "Kill": "KILL", "Analyze": "ANALYZE", "LoadData": "LOAD DATA",
        "Into": "SELECT ... INTO", "Lock": "FOR UPDATE / FOR SHARE", "Returning": "RETURNING",
        "Operator": "OPERATOR(...)", "Dot": "field access (x).y",
    }  # fmt: skip
    return {getattr(exp, n): label for n, label in names.items() if hasattr(exp, n)}


def _pure_classes(exp: Any) -> tuple[type, ...]:
    return tuple(getattr(exp, n) for n in PURE_FUNCTION_CLASSES if hasattr(exp, n))


def _name(ident: Any, dialect: str) -> str:
    """How the database compares a name: SQLite ignores case; PostgreSQL folds unquoted names."""
    text = ident.this if hasattr(ident, "this") else str(ident)
    return text if dialect == "postgres" and getattr(ident, "quoted", False) else text.lower()


def _function_name(node: Any, exp: Any, dialect: str) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name)
    try:
        text = node.sql(dialect=dialect)
    except Exception:  # pragma: no cover - only for the message
        text = ""
    m = re.match(r"\s*([A-Za-z_][\w.]*)\s*\(", text)
    return m.group(1).lower() if m else node.sql_name().lower()


def _is_cte(table: Any, name: str, exp: Any, dialect: str) -> bool:
    """Whether ``table`` (a FROM item named ``name``) is a CTE visible where it stands.

    PostgreSQL: a CTE sees the CTEs before it in its WITH list (all of them with RECURSIVE, itself
    included); the query body sees all. SQLite: every CTE of the WITH list is visible in each of them
    (a self-reference that is not a valid recursion is an error, never the real table). Outer WITH
    lists are visible from inner queries in both.
    """
    child, node = table, table.parent
    while node is not None:
        if isinstance(node, exp.With):
            ctes = list(node.expressions)
            names = [_name(c.args["alias"].this, dialect) for c in ctes]
            if dialect == "postgres" and not node.args.get("recursive"):
                names = names[: next((i for i, c in enumerate(ctes) if c is child), 0)]
            if name in names:
                return True
        else:
            with_ = node.args.get("with_") or node.args.get("with")  # sqlglot 30 names it with_
            if isinstance(with_, exp.With) and child is not with_:
                if name in (_name(c.args["alias"].this, dialect) for c in with_.expressions):
                    return True
        child, node = node, node.parent
    return False


_GAP = r"(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*"  # blanks and comments
_EXPLAIN = re.compile(rf"{_GAP}EXPLAIN\b(?P<plan>{_GAP}QUERY{_GAP}PLAN\b)?{_GAP}", re.IGNORECASE | re.DOTALL)
_QUERY_START = re.compile(r"(?:SELECT|WITH)\b", re.IGNORECASE)


def _split_explain(sql: str, dialect: str) -> tuple[str, str]:
    """("EXPLAIN " / "EXPLAIN QUERY PLAN " / "", the query after it).

    Only the prefix is read here; the query after it is parsed and checked like any other, and the
    prefix sent to the database is one of the two constants, never the user's text.
    """
    m = _EXPLAIN.match(sql)
    if m is None:
        return "", sql
    plan = m.group("plan") is not None
    if (plan and dialect != "sqlite") or not _QUERY_START.match(sql, m.end()):
        raise SQLInputError(
            "EXPLAIN is allowed only plain, before a SELECT or WITH query"
            + (" (EXPLAIN QUERY PLAN too)" if dialect == "sqlite" else "")
            + "; EXPLAIN ANALYZE and options are refused (ANALYZE runs the statement)"
        )
    return ("EXPLAIN QUERY PLAN " if plan else "EXPLAIN "), sql[m.end() :]


def check_sql(sql: str, dialect: str) -> str:
    """The SQL to run for ``sql`` if it is one read-only query over the study tables, else SQLInputError.

    ``dialect`` is the SQLAlchemy dialect name ("sqlite" or "postgresql"). The returned text is
    sqlglot's rendering of the checked tree (see the module docstring).
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError, SqlglotError, TokenError

    from ablate.store.sql_errors import parse_error_message, tokenize_error_message

    read = _SQLGLOT_DIALECT.get(dialect)
    if read is None:
        raise SQLInputError(f"--sql supports SQLite and PostgreSQL, not {dialect}")
    try:
        with _quiet_sqlglot():
            prefix, body = _split_explain(sql, read)
            parsed = sqlglot.parse(body, read=read)
    except ParseError as e:
        raise SQLInputError(parse_error_message(e.errors[0] if e.errors else {"description": str(e)})) from None
    except TokenError as e:
        raise SQLInputError(tokenize_error_message(str(e))) from None
    except SqlglotError as e:
        raise SQLInputError(f"cannot parse the SQL: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise SQLInputError("the SQL is nested too deeply to check") from None
    # Empty statements (";;") are None; a comment after the last ';' is a bare Semicolon node.
    statements = [s for s in parsed if s is not None and not isinstance(s, getattr(exp, "Semicolon", ()))]
    if not statements:
        raise SQLInputError("empty SQL")
    if len(statements) > 1:
        raise SQLInputError(f"only one SQL statement is allowed, found {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, exp.Query):
        kind = tree.key.upper() if tree.key != "command" else str(tree.this).upper()
        raise SQLInputError(f"only a read-only query (SELECT, or WITH ... SELECT) is allowed, not {kind}")
    _check_tree(tree, exp, read)
    try:
        text = tree.sql(
            dialect=read, comments=False, normalize_functions="lower", unsupported_level=sqlglot.ErrorLevel.RAISE
        )
    except SqlglotError as e:
        raise SQLInputError(f"cannot run this SQL: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise SQLInputError("the SQL is nested too deeply to check") from None
    return prefix + text


def _check_tree(tree: Any, exp: Any, dialect: str) -> None:
    forbidden = _forbidden_nodes(exp)
    pure = _pure_classes(exp)
    tables = study_tables()
    for node in tree.walk():
        if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
            raise SQLInputError(f"the schema-qualified function {node.sql(dialect=dialect)} is not allowed")
        for cls, label in forbidden.items():
            if isinstance(node, cls):
                what = label or node.key.upper()
                raise SQLInputError(f"{what} is not allowed: the query must only read")
        if isinstance(node, exp.CTE) and not isinstance(node.this, (exp.Query, exp.Values)):
            raise SQLInputError(f"the CTE {node.alias} must be a SELECT, not {node.this.key.upper()}")
        if isinstance(node, exp.Identifier) and str(node.this).lower().startswith(_SYSTEM_PREFIXES):
            raise SQLInputError(f"the name {node.this} is not allowed (pg_* and sqlite_* are system objects)")
        if isinstance(node, exp.Func):
            if isinstance(node, exp.Anonymous):
                ok = str(node.name).lower() in PURE_FUNCTIONS
            else:
                ok = isinstance(node, pure)
            if not ok:
                name = _function_name(node, exp, dialect)
                raise SQLInputError(
                    f"the function {name}() is not allowed: --sql calls only pure functions "
                    "(aggregates, window, math, string, date/time, JSON, CAST, CASE, COALESCE)"
                )
        if isinstance(node, exp.Column) and (node.args.get("db") or node.args.get("catalog")):
            raise SQLInputError(f"schema-qualified column {node.sql(dialect=dialect)} is not allowed")
        if isinstance(node, exp.Table):
            _check_table(node, exp, dialect, tables)


def _check_table(node: Any, exp: Any, dialect: str, tables: frozenset[str]) -> None:
    if node.args.get("db") or node.args.get("catalog"):
        raise SQLInputError(
            f"schema-qualified table {node.sql(dialect=dialect)} is not allowed: use the study tables' plain names"
        )
    ident = node.this
    if isinstance(ident, exp.Func):
        return  # a table function (json_each, generate_series, ...): checked as a function
    if not isinstance(ident, exp.Identifier):
        raise SQLInputError(f"FROM {node.sql(dialect=dialect)} is not supported by --sql")
    name = _name(ident, dialect)
    if name in tables or _is_cte(node, name, exp, dialect):
        return
    raise SQLInputError(
        f"the table {ident.this} is not a study table: --sql reads ablate_* and Optuna's tables "
        "(and CTEs the query defines)"
    )


# ----------------------------------------------------------------------------------------- execute


@dataclass(frozen=True)
class Cut:
    """Why the rows of a ``--sql`` result stop short of the whole result."""

    option: str  # the option whose limit stopped it: --sql-max-rows or --sql-max-bytes
    reason: str  # one phrase, e.g. "the result has more than 100,000 rows"
    kept: int  # rows returned (the first ones of the result)

    def note(self) -> str:
        return f"result cut: {self.reason}; printed the first {self.kept:,} rows ({self.option})"


@dataclass(frozen=True)
class SQLRows:
    """A ``--sql`` result: column names, the rows read, and why reading stopped early (None: all rows)."""

    columns: list[str]
    rows: list[tuple[Any, ...]]
    cut: Cut | None


def row_bytes(row: tuple[Any, ...]) -> int:
    """The memory a fetched row holds in Python (the tuple and its values), the unit of --sql-max-bytes."""
    return sys.getsizeof(row) + sum(map(sys.getsizeof, row))


def _check_limits(timeout_s: float, max_rows: int, max_bytes: int) -> None:
    if not timeout_s > 0:
        raise SQLInputError(f"the timeout must be a positive number of seconds, got {timeout_s}")
    if not (isinstance(max_rows, int) and max_rows > 0):
        raise SQLInputError(f"the row cap must be a positive number of rows, got {max_rows}")
    if not (isinstance(max_bytes, int) and max_bytes > 0):
        raise SQLInputError(f"the byte budget must be a positive number of bytes, got {max_bytes}")


def _collect(rows: Iterator[Any], kept: list[tuple[Any, ...]], max_rows: int, max_bytes: int) -> Cut | None:
    """Append rows to ``kept`` until the result ends (None) or a limit stops it (the Cut).

    Reads one row past ``max_rows`` to know whether the result is longer; a row that would take the
    rows held past ``max_bytes`` is not kept. Either way nothing after it is read.
    """
    held = 0
    for row in rows:
        if len(kept) == max_rows:
            return Cut("--sql-max-rows", f"the result has more than {max_rows:,} rows", len(kept))
        size = row_bytes(row)
        if held + size > max_bytes:
            return Cut(
                "--sql-max-bytes", f"the first {len(kept) + 1:,} rows take more than {max_bytes:,} bytes", len(kept)
            )
        kept.append(tuple(row))
        held += size
    return None


def _pg_row_guard(sql: str, max_bytes: int, marker: str) -> str:
    """``sql`` with every row's text size checked on the server before it is sent.

    Rows arrive one at a time (libpq single-row mode), but one row can still be up to 1 GB (an
    ``lpad`` or ``string_agg`` of that size): a row whose text form is longer than ``max_bytes`` makes
    the server raise an error carrying ``marker`` instead, so the client never receives it. The cast of
    a non-constant string to boolean is how plain SQL raises an error; the subquery keeps the
    query's own column names and order.
    """
    row = "ablate_sql_row"
    size = f"octet_length(CAST({row}.* AS text))"
    return (
        f"SELECT {row}.* FROM ({sql}) AS {row} WHERE CASE WHEN {size} <= {max_bytes} THEN true "
        f"ELSE CAST('{marker} ' || {size} AS boolean) END"
    )


def execute_read_only(
    engine: Engine,
    sql: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> SQLRows:
    """The first rows of ``sql``, run in a read-only transaction that is always rolled back and stopped
    after ``timeout_s`` seconds. ``sql`` must already be checked (:func:`check_sql`).

    Rows are streamed, one at a time, and reading stops at ``max_rows`` rows or when the rows held
    would take more than ``max_bytes`` bytes (:func:`row_bytes`); the result then says where and why
    (``SQLRows.cut``). Memory stays bounded whatever the query would return: on PostgreSQL the server
    refuses to send a row larger than the budget (:func:`_pg_row_guard`); on SQLite, which runs in this
    process, no value may be longer than the budget divided by the number of columns (SQLite's
    ``SQLITE_LIMIT_LENGTH``, which also bounds the strings a query builds on the way). A row beyond
    either bound cuts the result there, like the other limits.
    """
    _check_limits(timeout_s, max_rows, max_bytes)
    sqlite = engine.dialect.name == "sqlite"
    # check_sql gives a SELECT / WITH query, or one behind its EXPLAIN prefix (a plan: small, and not
    # allowed in a subquery); anything else only comes from a caller that skipped the check, and runs
    # as it is, so the read-only transaction refuses it.
    wrap = _QUERY_START.match(sql) is not None
    with engine.connect() as conn:
        fairy = conn.connection  # the pooled DBAPI connection; SQL text goes to the driver as-is
        raw = fairy.driver_connection
        fairy.rollback()  # start clean (e.g. after a pool pre-ping that opened a transaction)
        expired = [False]
        old_length_limit = None
        cur = fairy.cursor()
        kept: list[tuple[Any, ...]] = []
        columns: list[str] = []
        cut = None
        marker = f"ablate-row-over-budget-{uuid.uuid4().hex}"
        value_cap, ncols = max_bytes, 0
        try:
            if sqlite:
                cur.execute("PRAGMA query_only = ON")
                deadline = time.monotonic() + timeout_s

                def past_deadline() -> int:
                    if time.monotonic() > deadline:
                        expired[0] = True
                        return 1  # SQLite aborts the statement: "interrupted"
                    return 0

                raw.set_progress_handler(past_deadline, 1000)
            else:
                cur.execute("SET TRANSACTION READ ONLY")
                cur.execute(f"SET LOCAL statement_timeout = {max(1, round(timeout_s * 1000))}")
                cur.execute("SET LOCAL standard_conforming_strings = on")
                # Built-in functions win over same-named ones elsewhere, whatever the role's search_path.
                cur.execute("SELECT set_config('search_path', 'pg_catalog, ' || current_setting('search_path'), true)")
            try:
                if sqlite:
                    if wrap:  # the column count, from a run that stops before its first row
                        ncols = len(cur.execute(f"SELECT * FROM ({sql}) LIMIT 0").description or ())
                        value_cap = max(1, max_bytes // max(1, ncols))
                    if hasattr(raw, "setlimit"):  # Python >= 3.11; only ever lowered
                        value_cap = min(value_cap, raw.getlimit(sqlite3.SQLITE_LIMIT_LENGTH))
                        old_length_limit = raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, value_cap)
                    cur.execute(sql)
                    columns = [d[0] for d in cur.description] if cur.description else []
                    cut = _collect(iter(cur), kept, max_rows, max_bytes) if cur.description else None
                else:
                    stream = cur.stream(_pg_row_guard(sql, max_bytes, marker) if wrap else sql)
                    try:
                        rows = iter(stream)
                        first = next(rows, None)
                        columns = [d.name for d in cur.description] if cur.description else []
                        if first is not None:
                            cut = _collect(itertools.chain([first], rows), kept, max_rows, max_bytes)
                    finally:
                        stream.close()  # past a limit: psycopg cancels the query and drains what was sent
            except engine.dialect.loaded_dbapi.Error as exc:
                if expired[0] or getattr(exc, "sqlstate", None) == "57014":  # 57014: query_canceled
                    raise SQLInputError(
                        f"the query ran past its {timeout_s:g} s timeout and was stopped (--sql-timeout)"
                    ) from None
                if marker in str(exc):
                    reason = f"row {len(kept) + 1:,} alone is larger than the {max_bytes:,}-byte budget"
                    cut = Cut("--sql-max-bytes", reason, len(kept))
                elif getattr(exc, "sqlite_errorname", None) == "SQLITE_TOOBIG":
                    # Not "row N+1": Python's sqlite3 reads a row ahead and drops the row it had read
                    # when the next one fails, so the value may be in either.
                    reason = (
                        f"a value after the first {len(kept):,} rows is longer than {value_cap:,} bytes "
                        f"(the {max_bytes:,}-byte budget over {ncols} columns)"
                    )
                    cut = Cut("--sql-max-bytes", reason, len(kept))
                else:
                    text = str(exc).strip()
                    raise SQLInputError(f"SQL error: {text.splitlines()[0] if text else type(exc).__name__}") from None
        finally:
            try:
                if sqlite:
                    raw.set_progress_handler(None, 0)
                    if old_length_limit is not None:
                        raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, old_length_limit)
                cur.close()
                fairy.rollback()
                if sqlite:
                    reset = fairy.cursor()
                    reset.execute("PRAGMA query_only = OFF")
                    reset.close()
            except Exception:
                conn.invalidate()  # never hand a read-only (or broken) connection back to the pool
                raise
    return SQLRows(columns, kept, cut)


def run_read_only(
    engine: Engine,
    sql: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> SQLRows:
    """Check ``sql`` (:func:`check_sql`) and run it (:func:`execute_read_only`)."""
    _check_limits(timeout_s, max_rows, max_bytes)
    return execute_read_only(engine, check_sql(sql, engine.dialect.name), timeout_s, max_rows, max_bytes)
