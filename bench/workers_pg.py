"""Many local workers on one PostgreSQL: trials per minute and connections in use; prints JSON.

For each worker count (default 4, 8 and 16) it runs ``ablate study run SPEC --workers N`` on a
fresh database of a throwaway server (.ci/start_postgres.sh, in its own folder) with 2-step runs,
and polls ``pg_stat_activity`` every 0.1 s for the connections the study's database has open. Each
worker may hold 3 (ablate/store/engine.py PG_POOL_SIZE + OPTUNA_PG_POOL_SIZE), so the peak stays
at or under 3 x N; ``connection_errors`` counts worker lines about refused connections.

    python bench/workers_pg.py                      # 4, 8, 16 workers, 2 x N trials each
    python bench/workers_pg.py --workers 8 --max-connections 30
    python bench/workers_pg.py --url postgresql+psycopg://user@host/postgres   # an existing server
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_PG = ROOT / ".ci" / "start_postgres.sh"

# 2-step runs, one fix per trial shape: the workers' cost is mostly start-up and database traffic.
SPEC = """
name = "{name}"
[data]
batch_size = 2
train_size = 16
[training]
steps = 2
device = "cpu"
[probe]
batches = 2
every = 2
gain_batches = 2
[search]
fixes = ["fixed-scale", "layerscale", "learnable-alpha", "tanh-gate"]
[study]
trials = {trials}
seeds = [0, 1]
sampler = "random"
frozen_control = false
"""
CONNECTION_ERRORS = ("too many clients", "remaining connection slots", "connection refused", "QueuePool limit")


@contextlib.contextmanager
def server_dir() -> Iterator[Path]:
    """A state folder for a throwaway server, directly in the temporary folder: as root the server
    runs as the user `postgres`, who must be able to reach it (a root-only parent would stop it)."""
    path = Path(tempfile.mkdtemp(prefix="ablate-pg-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_server(state_dir: str | Path, max_connections: int) -> str:
    """Start (or reuse) a throwaway server in ``state_dir`` with this max_connections; its URL."""
    env = {**os.environ, "ABLATE_PG_DIR": str(state_dir), "ABLATE_PG_OPTS": f"-c max_connections={max_connections}"}
    proc = subprocess.run(["bash", str(START_PG)], env=env, capture_output=True, text=True, timeout=180)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or "=" not in last:
        raise RuntimeError(f"could not start PostgreSQL: {proc.stderr.strip()[-500:]}")
    return last.split("=", 1)[1].strip().strip("'\"")


def stop_server(state_dir: str | Path) -> None:
    env = {**os.environ, "ABLATE_PG_DIR": str(state_dir)}
    subprocess.run(["bash", str(START_PG), "stop"], env=env, capture_output=True, timeout=180)


def fresh_database(server_url: str) -> str:
    """A new empty database on the server; its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = f"ablate_w_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


class ConnectionPeak(threading.Thread):
    """Polls how many connections the database has open (this poller's own left out); ``peak``."""

    def __init__(self, url: str, every_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self.dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self.database = parsed.database
        self.every_s = every_s
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._halt.is_set():
                (n,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (self.database,),
                ).fetchone()
                self.peak = max(self.peak, int(n))
                self._halt.wait(self.every_s)

    def stop(self) -> int:
        self._halt.set()
        self.join(timeout=10)
        return self.peak


def run_workers(url: str, workers: int, trials: int, folder: Path) -> dict:
    """One study with ``workers`` local workers; its wall time, trials, connection peak and errors."""
    name = f"w{workers}"
    spec = folder / f"{name}.toml"
    spec.write_text(SPEC.format(name=name, trials=trials))
    cmd = [sys.executable, "-m", "ablate", "study", "run", str(spec), "--storage", url, "--workers", str(workers)]
    env = {**os.environ, "ABLATE_THREADS": "1", "PYTHONPATH": str(ROOT)}
    poller = ConnectionPeak(url)
    poller.start()
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, "--no-plots", "--quiet"], cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = poller.stop()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        trials_now = optuna.load_study(study_name=name, storage=url).trials
    except KeyError:  # the command failed before creating the study: its stderr says why
        trials_now = []
    complete = [t for t in trials_now if t.state.name == "COMPLETE"]
    return {
        "workers": workers,
        "exit_code": proc.returncode,
        "trials_complete": len(complete),
        "trials_wanted": trials,
        "wall_s": round(wall, 1),
        "trials_per_min": round(len(complete) / wall * 60, 2),
        "peak_connections": peak,
        "connection_budget": 3 * workers,
        "connection_errors": sum(proc.stderr.count(s) for s in CONNECTION_ERRORS),
        "stderr_tail": proc.stderr.strip().splitlines()[-3:],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--trials-per-worker", type=int, default=2)
    ap.add_argument("--max-connections", type=int, default=100, help="of the throwaway server")
    ap.add_argument("--url", default=None, help="an existing server (a fresh database is made on it)")
    args = ap.parse_args(argv)
    doc: dict = {"load_before": os.getloadavg()[0], "cores": os.cpu_count(), "cases": []}
    with tempfile.TemporaryDirectory(prefix="ablate-workers-pg-") as tmp, server_dir() as state:
        server = args.url or start_server(state, args.max_connections)
        doc["max_connections"] = None if args.url else args.max_connections
        try:
            for n in args.workers:
                doc["cases"].append(run_workers(fresh_database(server), n, n * args.trials_per_worker, Path(tmp)))
        finally:
            if not args.url:
                stop_server(state)
    doc["load_after"] = os.getloadavg()[0]
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
