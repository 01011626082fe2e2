"""A database written by ablate 0.1.0 is upgraded to this release's layout and reads back the same numbers.

tests/data/release_0_1_0/release.db was written by the release before the per-group numbers moved to
long tables (commit 2e8273b, `ablate study run release.toml`); the JSON files beside it are what that
release's `ablate query` printed for it (runs, per fix, trials, classes) and its probe frame.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine, inspect

from ablate.cli import main
from ablate.store import open_storage
from ablate.store import query as q
from ablate.store.engine import dispose_engines, upgrade_storage
from ablate.store.migrate import schema_version
from ablate.store.schema import SCHEMA_VERSION

RELEASE = Path(__file__).parent / "data" / "release_0_1_0"
RENAMED = {"frozen-adapters (control)": "frozen (control)"}
FRAMES = {
    "runs": q.runs_frame,
    "fixes": q.group_by_fix,
    "trials": q.trials_frame,
    "classes": q.class_metrics_frame,
    "probes": q.probe_frame,
}


def _same_as_release(url: str) -> None:
    """Every value the old release printed is read back unchanged (the new frames may add columns)."""
    engine = open_storage(url, create=False)
    for name, frame in FRAMES.items():
        old = json.loads((RELEASE / f"{name}.json").read_text())
        new = q.json_records(frame(engine, "release-0.1.0"))
        assert len(new) == len(old), name
        if name == "fixes":  # 0.2 ranks the fixes and names the control as every view does: match by fix
            old = sorted(({**a, "fix": RENAMED.get(a["fix"], a["fix"])} for a in old), key=lambda r: r["fix"])
            new = sorted(new, key=lambda r: r["fix"])
        for a, b in zip(old, new, strict=True):
            assert {k: b[k] for k in a} == a, name


def _old_copy(tmp_path: Path) -> str:
    path = tmp_path / "release.db"
    shutil.copy(RELEASE / "release.db", path)
    return f"sqlite:///{path}"


def test_reads_refuse_an_old_file_without_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _old_copy(tmp_path)
    before = (tmp_path / "release.db").read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["query", "--storage", url])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ablate db upgrade" in err[0] and "schema 1" in err[0]
    assert (tmp_path / "release.db").read_bytes() == before


def test_upgrade_keeps_every_number_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = _old_copy(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["db", "upgrade", "--storage", url])
    assert exc.value.code == 0
    assert "schema 1 -> 2" in capsys.readouterr().out
    _same_as_release(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        assert schema_version(conn) == SCHEMA_VERSION
    cols = {c["name"] for c in inspect(engine).get_columns("ablate_runs")}
    assert "train_grad_ratio_layers" not in cols and "train_grad_ratio" in cols
    assert upgrade_storage(url) == []  # a second upgrade does nothing


def test_a_fresh_file_not_yet_stamped_is_not_mistaken_for_an_old_one(tmp_path: Path) -> None:
    """A worker that opens a fresh file between another worker's CREATE TABLE and its stamp must read
    it as this release's layout (the CI race: it used to "upgrade" it and collide on the stamp); an
    old file whose ablate_schema table exists without a record (a crash mid-upgrade) is still 1."""
    from ablate.store.engine import create_schema, make_engine

    fresh = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    create_schema(fresh)  # tables, no stamp: the moment between the two steps
    with fresh.connect() as conn:
        assert schema_version(conn) == SCHEMA_VERSION
    assert upgrade_storage(str(fresh.url)) == []

    url = _old_copy(tmp_path)
    create_schema(make_engine(url))  # adds ablate_schema (empty) and the long tables, as a crash would leave
    with create_engine(url).connect() as conn:
        assert schema_version(conn) == 1


def test_study_run_upgrades_the_file_and_refuses_to_mix_releases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """study run upgrades an old file; the old study is not continued by this release (its AA-CLIP
    numbers differ: docs/parity.md), and a new study runs beside it in the same file."""
    url = _old_copy(tmp_path)
    spec = tmp_path / "release.toml"
    shutil.copy(RELEASE / "release.toml", spec)
    with pytest.raises(SystemExit) as exc:
        main(["study", "run", str(spec), "--storage", url, "--trials", "4", "--no-plots", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "was run by ablate 0.1.0" in err[0] and "--name" in err[0]
    _same_as_release(url)  # upgraded, nothing added to the old study
    with pytest.raises(SystemExit) as exc:
        main(["study", "run", str(spec), "--storage", url, "--name", "again", "--trials", "1", "--no-plots", "-q"])
    assert exc.value.code == 0
    engine = open_storage(url, create=False)
    new = q.trials_frame(engine, "again")
    assert len(new) == 1 and new["ranked"].all() and new["train_grad_ratio_layers"].notna().all()
    roles = set(q.runs_frame(engine, "again")["role"])
    assert roles == {"stage1", "baseline", "control", "trial"}  # the stage1 role fits the upgraded table
    _same_as_release(url)


def _copy_to(src_url: str, dst_url: str) -> None:
    """The old file's tables and rows, as they are, in another database (schema 1 on PostgreSQL)."""
    src, dst = create_engine(src_url), create_engine(dst_url)
    meta = MetaData()
    meta.reflect(src)
    for table in meta.tables.values():
        for column in table.columns:
            column.type = column.type.as_generic()  # SQLite's DATETIME -> DateTime, ...
    meta.create_all(dst)
    with src.connect() as a, dst.begin() as b:
        for table in meta.sorted_tables:
            rows = [dict(r) for r in a.execute(table.select()).mappings()]
            if rows:
                b.execute(table.insert(), rows)
    dst.dispose()


def test_upgrade_keeps_every_number_postgresql(tmp_path: Path, fresh_pg_url: str) -> None:
    _copy_to(_old_copy(tmp_path), fresh_pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with pytest.raises(ValueError, match="ablate db upgrade"):
        open_storage(fresh_pg_url, create=False)
    assert any(step.startswith("schema 1 -> 2") for step in upgrade_storage(fresh_pg_url))
    _same_as_release(fresh_pg_url)
    dispose_engines()
