"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ENV = "ABLATE_TEST_PG_URL"


ROOT = Path(__file__).resolve().parents[1]
START_PG = ROOT / ".ci" / "start_postgres.sh"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a PostgreSQL test database.

    Uses ``$ABLATE_TEST_PG_URL`` when set; otherwise starts a throwaway server with
    ``.ci/start_postgres.sh`` (stopped again at the end) when PostgreSQL is installed; else skips.
    """
    url = os.environ.get(PG_ENV)
    if url:
        yield url
        return
    if not shutil.which("bash") or not START_PG.exists():
        pytest.skip(f"{PG_ENV} is not set and {START_PG} is missing")
    proc = subprocess.run(["bash", str(START_PG)], capture_output=True, text=True, timeout=120)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or "=" not in last:
        pytest.skip(f"could not start PostgreSQL: {proc.stderr.strip().splitlines()[-1:]}")
    try:
        yield last.split("=", 1)[1].strip().strip("'\"")
    finally:
        subprocess.run(["bash", str(START_PG), "stop"], capture_output=True, timeout=120)


@pytest.fixture
def fresh_pg_url(pg_url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL test server for one test; dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    name = f"ablate_t_{uuid.uuid4().hex[:12]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mini_study_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small finished study (3 fixes, 4 trials x 2 seeds, 6 steps) in a SQLite file, built once.

    Tests that read it must not write to it; copy the file first.
    """
    from ablate.spec import parse_spec
    from ablate.study import run_study
    from tests.study_helpers import MINI

    path = tmp_path_factory.mktemp("mini") / "results.db"
    run_study(parse_spec(MINI), MINI, f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def cli_study(tmp_path_factory: pytest.TempPathFactory):
    """`ablate study run` through the CLI, as a researcher runs it from the folder it works in
    (2 trials x 2 seeds of the mini spec, figures drawn into plots/mini): ``(folder, url, code,
    stdout, stderr)``. Tests that write copy the file first (shutil.copyfile: it holds everything)."""
    from tests.study_helpers import MINI, run_cli_captured, sqlite_url, write_spec

    folder = tmp_path_factory.mktemp("cli_study")
    spec = write_spec(folder, MINI.replace("trials = 4", "trials = 2"))
    url = sqlite_url(folder / "results.db")
    here = os.getcwd()
    os.chdir(folder)  # the figures go to plots/mini, as from a researcher's folder
    try:
        code, out, err = run_cli_captured("study", "run", str(spec), "--storage", url)
    finally:
        os.chdir(here)
    return folder, url, code, out, err
