"""Do reads stay fast as a study grows? Time ``ablate query``, every ``ablate plot`` kind and
``ablate report`` on 100, 1,000 and 10,000-trial databases, as subprocesses of the real CLI (imports
included), and print JSON (``--out FILE`` also writes it, e.g. to bench/results/reads.json, where the
docs' performance page reads it).

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/bench_reads.py [--sizes 100 1000 10000] [--repeats 3]

Each database is built by ``bench/read_db.py`` through ablate's own writers (1 seed, 300 steps x 5
metrics and 7 probe points per run, about 2% failed or pruned trials, the Optuna study beside it),
on SQLite and, when PostgreSQL is available (``$ABLATE_TEST_PG_URL``, else a throwaway server
started by ``.ci/start_postgres.sh`` in its own directory and stopped at the end), on PostgreSQL.
Every command form runs ``--repeats`` times; the JSON has the median wall time, the peak RSS of the
command's process (GNU time's ``%M``), the growth factor from 1,000 to 10,000 trials, and whether the
targets hold (10,000 trials within 3x the time at 1,000, under 500 MB), for every command form: each
plot kind alone (``plot --kind K``), all of them together, and the report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ablate.plot.extract import PLOT_KINDS  # noqa: E402
from bench.provenance import provenance  # noqa: E402
from bench.read_db import build  # noqa: E402 - after the sys.path line, so the bench runs from a checkout

FORMS: dict[str, list[str]] = {
    "query": [],
    "query --format json": ["--format", "json"],
    "query --group-by fix": ["--group-by", "fix"],
    "query --runs": ["--runs"],
    "query --studies": ["--studies"],
}
TIME_FACTOR, MEMORY_MB = 3.0, 500.0


GNU_TIME = "/usr/bin/time"


def run_once(args: list[str], out_dir: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one CLI process; stdout goes to a file, as when piped.

    The peak RSS comes from GNU time (``%M``): a child's own ``ru_maxrss`` seen by ``os.wait4`` here
    would include this process's memory, which the child shares until it executes Python.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rss_file = out_dir / "maxrss"
    cmd = [sys.executable, "-m", "ablate", *args]
    if Path(GNU_TIME).exists():
        cmd = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *cmd]
    with open(out_dir / "stdout", "wb") as out, open(out_dir / "stderr", "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=out, stderr=err, env=env, check=False)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (out_dir / "stderr").read_text()[-500:]
        raise RuntimeError(f"ablate {' '.join(args)} exited {proc.returncode}: {tail}")
    if not rss_file.exists():
        return wall, float("nan")
    return wall, int(rss_file.read_text().split()[-1]) / 1024  # %M is in KiB


def command_forms(url: str, work: Path) -> dict[str, list[str]]:
    """Every command form timed, by name: the query forms, each plot kind alone, all of them, the report."""
    commands = {name: ["query", "--storage", url, *extra] for name, extra in FORMS.items()}
    for kind in PLOT_KINDS:  # each figure alone: a kind that grows with the study shows itself
        commands[f"plot --kind {kind}"] = ["plot", "--storage", url, "--kind", kind, "--out", str(work / "plots")]
    commands["plot (all kinds)"] = ["plot", "--storage", url, "--out", str(work / "plots")]
    commands["report"] = ["report", "bench", "--storage", url, "--out", str(work / "report")]
    return commands


def time_commands(urls: dict[str, str], repeats: int, work: Path) -> dict[str, dict[str, dict[str, object]]]:
    """{size: {form: timing}}. The sizes take turns, repeat by repeat (1,000 then 10,000 then 1,000 ...),
    so a change of the machine's load during the run falls on both and the growth stays comparable."""
    forms = {size: command_forms(url, work / size) for size, url in urls.items()}
    times: dict[str, dict[str, list[tuple[float, float]]]] = {size: {} for size in urls}
    for name in next(iter(forms.values())):
        for _ in range(repeats):
            for size in urls:
                times[size].setdefault(name, []).append(run_once(forms[size][name], work))
    return {
        size: {
            name: {
                "s": round(statistics.median(t for t, _ in runs), 3),
                "peak_rss_mb": round(max(m for _, m in runs), 1),
                "times_s": [round(t, 3) for t, _ in runs],
            }
            for name, runs in by_name.items()
        }
        for size, by_name in times.items()
    }


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        return ""


@contextmanager
def postgres() -> Iterator[tuple[str | None, str]]:
    """(a server URL or None, a note): $ABLATE_TEST_PG_URL, else a throwaway server of our own."""
    url = os.environ.get("ABLATE_TEST_PG_URL")
    if url:
        yield url, "server from $ABLATE_TEST_PG_URL"
        return
    script = ROOT / ".ci" / "start_postgres.sh"
    # Its own directory: the test suite's server (another checkout, another session) is never reused
    # nor stopped by the bench.
    env = {**os.environ, "ABLATE_PG_DIR": os.environ.get("ABLATE_BENCH_PG_DIR", f"/tmp/ablate-pg-bench-{os.getpid()}")}
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=180, env=env)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or "=" not in last:
        yield None, f"PostgreSQL skipped: could not start a server ({(proc.stderr.strip().splitlines() or ['?'])[-1]})"
        return
    try:
        yield last.split("=", 1)[1].strip().strip("'\""), "throwaway local server (fsync off), .ci/start_postgres.sh"
    finally:
        subprocess.run(["bash", str(script), "stop"], capture_output=True, timeout=180, env=env)
        shutil.rmtree(env["ABLATE_PG_DIR"], ignore_errors=True)


@contextmanager
def pg_database(server: str) -> Iterator[str]:
    import psycopg
    from sqlalchemy.engine import make_url

    from ablate.store import dispose_engines

    base = make_url(server)
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"ablate_reads_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_backend(make_url, sizes: list[int], repeats: int, optuna: bool) -> dict[str, object]:
    """Build every size on one backend, then time them side by side; ``make_url(size)`` is a context
    manager giving a URL."""
    result: dict[str, object] = {}
    with ExitStack() as stack:
        urls, built = {}, {}
        for n in sizes:
            url = stack.enter_context(make_url(n))
            print(f"bench_reads: building {n} trials ({url.split(':')[0]}) ...", file=sys.stderr)
            urls[str(n)], built[str(n)] = url, build(url, trials=n, optuna=optuna)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        print(f"bench_reads: timing {', '.join(urls)} trials, side by side ...", file=sys.stderr)
        timed = time_commands(urls, repeats, work)
        for n in urls:
            result[n] = {"build": built[n], "commands": timed[n]}
    if {"1000", "10000"} <= set(result):
        small, big = result["1000"]["commands"], result["10000"]["commands"]
        growth = {name: round(big[name]["s"] / small[name]["s"], 2) for name in small}
        result["growth_1000_to_10000"] = growth
        result["targets_met"] = {
            f"within_{TIME_FACTOR:g}x": all(g <= TIME_FACTOR for g in growth.values()),
            f"under_{MEMORY_MB:g}_mb": all(c["peak_rss_mb"] < MEMORY_MB for c in big.values()),
        }
    return result


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-pg", action="store_true", help="SQLite only")
    p.add_argument("--no-optuna", action="store_true", help="build without Optuna's tables")
    p.add_argument("--out", help="also write the JSON to this file (e.g. bench/results/reads.json)")
    args = p.parse_args(argv)
    report: dict[str, object] = {
        **provenance("bench_reads.py", argv, env="PYTHONPATH=. OMP_NUM_THREADS=1"),
        "load_before": uptime(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "database": "N trials x 1 seed, 300 steps x 5 metrics (+ gate/* for gated fixes), 7 probe points per run",
    }
    t0 = time.perf_counter()

    @contextmanager
    def sqlite_url(n: int) -> Iterator[str]:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / f'reads_{n}.db'}"

    report["sqlite"] = bench_backend(sqlite_url, args.sizes, args.repeats, not args.no_optuna)
    if args.no_pg:
        report["postgresql"] = "skipped (--no-pg)"
    else:
        with postgres() as (server, note):
            if server is None:
                report["postgresql"] = note
            else:
                report["postgresql"] = {"server": note} | bench_backend(
                    lambda n: pg_database(server), args.sizes, args.repeats, not args.no_optuna
                )
    report["load_after"] = uptime()
    report["total_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
