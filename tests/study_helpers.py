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
