"""Why per-step metrics go through MetricBuffer (docs/performance.md): time three ways to store one run's series.

    PYTHONPATH=. python bench/bench_store_writes.py [--steps 1000] [--repeats 3]

For a run of ``--steps`` steps with 5 metrics per step, side by side in one process:

  (a) ``MetricBuffer`` batched: one transaction + one executemany INSERT per 200 steps;
  (b) one commit per row (5 x steps transactions), the naive way;
  (c) Optuna ``trial.report(value, step)`` once per step into an Optuna RDB storage on a fresh SQLite
      file (Optuna keeps one intermediate value per step, so this writes 1 value per step, not 5).

(a) and (b) run on a temp SQLite file made by ``ablate.store`` (WAL, default synchronous=FULL) and,
when ``ABLATE_TEST_PG_URL`` is set, on a temporary database of that PostgreSQL server. Each way
is repeated (up to --repeats, within --budget-s) and its median wall time reported. Prints one JSON
document on stdout: the times, the transactions each way committed, and the ratios b/a and c/a
(c_over_a_per_value scales (c) up to 5 values per step). The whole run takes under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, event, insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate.store import (  # noqa: E402 - after the sys.path line, so the bench runs from a checkout
    MetricBuffer,
    StepMetricModel,
    dispose_engines,
    open_storage,
    register_study,
    start_run,
)
from bench.provenance import provenance  # noqa: E402

METRICS = ("loss", "grad_norm", "lr", "update_ratio", "loss_det")
FLUSH_EVERY = 200


def step_values(step: int) -> dict[str, float]:
    return {name: 1.0 / (step + 1 + i) for i, name in enumerate(METRICS)}


class CommitCounter:
    """Counts COMMITs on an engine through SQLAlchemy's own event, independent of the code under test."""

    def __init__(self, engine: Engine) -> None:
        self.n = 0
        event.listen(engine, "commit", self._on_commit)

    def _on_commit(self, _conn: object) -> None:
        self.n += 1


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def repeat(once: Callable[[], float], repeats: int, budget_s: float) -> list[float]:
    """Up to ``repeats`` timings of ``once``; stops early when the next would overrun ``budget_s``."""
    times = [once()]
    while len(times) < repeats and sum(times) + statistics.median(times) <= budget_s:
        times.append(once())
    return times


def bench_ablate(engine: Engine, steps: int, repeats: int, budget_s: float) -> dict[str, object]:
    """(a) and (b) on one engine; each repetition writes into a fresh run."""
    sid = register_study(engine, f"bench-{uuid.uuid4().hex[:8]}", "bench", "", "0" * 64, [], {})
    counter = CommitCounter(engine)
    trial = iter(range(10**6))
    commits: dict[str, int] = {}
    table = StepMetricModel.__table__

    def batched() -> float:
        rid = start_run(engine, sid, "trial", next(trial), 0, "none", None, "cpu")
        before = counter.n
        t = timed(lambda: _write_batched(engine, rid, steps))
        commits["a"] = counter.n - before
        return t

    def per_row() -> float:
        rid = start_run(engine, sid, "trial", next(trial), 0, "none", None, "cpu")
        before = counter.n

        def write() -> None:
            for step in range(steps):
                for name, value in step_values(step).items():
                    with engine.begin() as conn:
                        conn.execute(insert(table), {"run_id": rid, "step": step, "name": name, "value": value})

        t = timed(write)
        commits["b"] = counter.n - before
        return t

    times = {"a": repeat(batched, repeats, budget_s), "b": repeat(per_row, repeats, budget_s)}
    a, b = statistics.median(times["a"]), statistics.median(times["b"])
    return {
        "a_metric_buffer_s": round(a, 4),
        "b_commit_per_row_s": round(b, 4),
        "b_over_a": round(b / a, 1),
        "a_times_s": [round(t, 4) for t in times["a"]],
        "b_times_s": [round(t, 4) for t in times["b"]],
        "values_written": {"a": steps * len(METRICS), "b": steps * len(METRICS)},
        "commits": commits,
    }


def _write_batched(engine: Engine, run_id: int, steps: int) -> None:
    with MetricBuffer(engine, run_id, flush_every=FLUSH_EVERY) as buf:
        for step in range(steps):
            buf.add_step(step, step_values(step))


def bench_optuna(tmp: Path, steps: int, repeats: int, budget_s: float) -> dict[str, object]:
    """(c): trial.report per step into Optuna's own RDB storage on a fresh SQLite file."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp / 'optuna.db'}")
    counter = CommitCounter(storage.engine)
    study = optuna.create_study(study_name="bench", storage=storage)
    commits = 0

    def once() -> float:
        nonlocal commits
        trial = study.ask()
        before = counter.n

        def report() -> None:
            for step in range(steps):
                trial.report(step_values(step)["loss"], step)

        t = timed(report)
        commits = counter.n - before
        return t

    times = repeat(once, repeats, budget_s)
    storage.engine.dispose()
    return {
        "c_optuna_report_s": round(statistics.median(times), 4),
        "c_times_s": [round(t, 4) for t in times],
        "c_values_written": steps,
        "c_commits": commits,
        "optuna_version": optuna.__version__,
    }


@contextmanager
def temp_pg_database(url: str) -> Iterator[str]:
    """A throwaway database on the server of ``url`` (so the bench never leaves rows behind)."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(url)
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"ablate_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="at most this many timings per way")
    parser.add_argument("--budget-s", type=float, default=20.0, help="stop repeating a way once it would take longer")
    args = parser.parse_args(argv)
    made = provenance("bench_store_writes.py", argv)
    report: dict[str, object] = {
        **made,
        "steps": args.steps,
        "metrics_per_step": len(METRICS),
        "flush_every": FLUSH_EVERY,
        "max_repeats": args.repeats,
        "budget_s_per_way": args.budget_s,
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_storage(f"sqlite:///{Path(tmp) / 'results.db'}")
        with engine.connect() as conn:
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        sqlite = {"synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync)}
        sqlite |= bench_ablate(engine, args.steps, args.repeats, args.budget_s)
        sqlite |= bench_optuna(Path(tmp), args.steps, args.repeats, args.budget_s)
        a, c = sqlite["a_metric_buffer_s"], sqlite["c_optuna_report_s"]
        sqlite["c_over_a"] = round(c / a, 1)
        sqlite["c_over_a_per_value"] = round((c / args.steps) / (a / (args.steps * len(METRICS))), 1)
        report["sqlite"] = sqlite
        dispose_engines()
    pg_url = os.environ.get("ABLATE_TEST_PG_URL")
    if pg_url:
        with temp_pg_database(pg_url) as url:
            engine = open_storage(url)
            with engine.connect() as conn:
                fsync = conn.exec_driver_sql("SHOW fsync").scalar()
                sync_commit = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
            report["postgresql"] = {"fsync": fsync, "synchronous_commit": sync_commit} | bench_ablate(
                engine, args.steps, args.repeats, args.budget_s
            )
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
