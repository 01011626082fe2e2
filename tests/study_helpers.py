"""Small study specs and helpers shared by the study, CLI, notebook and dashboard tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

MINI = textwrap.dedent(
    """
    name = "mini"
    [data]
    batch_size = 2
    train_size = 16
    [training]
    steps = 6
    device = "cpu"
    [probe]
    batches = 2
    every = 3
    gain_batches = 2
    [search]
    fixes = ["none", "fixed-scale", "tanh-gate"]
    [study]
    trials = 4
    seeds = [0, 1]
    """
)


def write_spec(dir_: Path, text: str = MINI, name: str = "mini.toml") -> Path:
    path = dir_ / name
    path.write_text(text)
    return path


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def copy_db(src: Path, dst: Path) -> Path:
    """Copy a SQLite database including what still sits in its WAL file (a byte copy would lose it)."""
    import sqlite3

    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`ablate ARGS` through the real entry point in-process: (exit code, stdout, stderr)."""
    import pytest

    from ablate.cli import main

    with pytest.raises(SystemExit) as info:
        main(list(args))
    cap = capsys.readouterr()
    return info.value.code, cap.out, cap.err


def db_dump(db: Path) -> str:
    """A digest of every row and schema statement of a SQLite file (equal digests: nothing changed)."""
    import hashlib
    import sqlite3

    with sqlite3.connect(db) as con:
        return hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()


def refused_line(capsys, db: Path, args: list[str]) -> str:
    """Run ``ablate ARGS`` in-process and check the refusal rule: exit 2, one ``error: ...`` line on
    stderr, no traceback, nothing on stdout, the database unchanged. Returns the line."""
    before = db_dump(db)
    code, out, err = run_cli(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: "), lines[0]
    assert out == ""
    assert db_dump(db) == before
    return lines[0]


def run_cli_captured(*args: str) -> tuple[int, str, str]:
    """`ablate ARGS` in-process without pytest's capsys (for module-scoped fixtures): (code, stdout, stderr)."""
    import contextlib
    import io

    from ablate.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def table_rows(url: str, table: str, where: str = "") -> list[tuple]:
    """Every row of ``table`` (columns in name order, rows sorted), read through SQLAlchemy, so that
    one backend's rows compare with another's value by value."""
    from sqlalchemy import MetaData, Table, create_engine, select, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            t = Table(table, MetaData(), autoload_with=conn)
            stmt = select(*sorted(t.c, key=lambda c: c.name))
            rows = [tuple(r) for r in conn.execute(stmt.where(text(where)) if where else stmt)]
    finally:
        engine.dispose()
    return sorted(rows, key=repr)


def plant_study(
    url: str,
    name: str,
    arms: list[dict],
    seeds: tuple[int, ...] = (0, 1, 2),
    objectives: tuple[str, ...] = ("adapter_gain", "dilution_train"),
    spec_extra: str = "",
    meta: dict | None = None,
) -> int:
    """A study written straight through the store with planted numbers (no training, no Optuna
    tables): each arm is {"role", "trial" (trial number or None), "fix", "scale", "values": {seed:
    {run column: value}}}, every run complete; ``meta``: the versions register_study records.
    Returns the study's id."""
    import hashlib

    from ablate.objectives import OBJECTIVES
    from ablate.store import finish_run, open_storage, register_study, start_run

    spec = f'name = "{name}"\n[study]\nseeds = {list(seeds)}\n{spec_extra}'
    engine = open_storage(url)
    study_id = register_study(
        engine, name, name, spec, hashlib.sha256(spec.encode()).hexdigest(),
        [{"metric": m, "direction": OBJECTIVES[m].direction} for m in objectives], meta,
    )  # fmt: skip
    for arm in arms:
        for seed, values in arm["values"].items():
            run_id = start_run(
                engine, study_id, arm["role"], arm.get("trial"), seed, arm["fix"], arm.get("scale"), "cpu"
            )
            finish_run(engine, run_id, "complete", values)
    return study_id
