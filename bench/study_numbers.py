"""Every number a study reports, minus its timings, to check that a speed change changed no number.

    python bench/study_numbers.py before.db after.db          # exit 1 and the differences if any
    python bench/study_numbers.py --dump results.db > n.json  # the numbers themselves

The numbers: the per-fix table (``ablate query --group-by fix --wide``), every run row
(``ablate query --runs --format json``) without the fields that time the run, and a digest of
every stored series (per-step metrics, probe points and their per-group numbers, per-group run
numbers, per-class evaluation, Stage 1 weights) and of Optuna's trial values, parameters and
attributes. Two runs of the same code and spec on the same machine and thread count give
identical numbers (the study is deterministic), so any difference is a change in what is computed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

# Run-row fields that measure time or the process, not the arm.
TIMING_FIELDS = ("wall_s", "steps_per_s", "peak_mem_mb", "mfu", "started_at", "finished_at", "worker_pid")
# Stored tables and the columns that are timestamps (left out of the digests).
TABLES = {
    "ablate_step_metrics": ("run_id, step, name", ()),
    "ablate_probe_points": ("run_id, step", ("id",)),
    "ablate_probe_groups": ("run_id, step, group_name, name", ()),
    "ablate_run_groups": ("run_id, group_name, name", ()),
    "ablate_class_metrics": ("run_id, class_name, metric", ()),
    "ablate_blobs": ("run_id, name", ("id", "created_at", "data")),
    "trial_values": ("trial_id, objective", ("trial_value_id",)),
    "trial_params": ("trial_id, param_name", ("param_id",)),
    "trial_user_attributes": ("trial_id, key", ("trial_user_attribute_id",)),
}


def _cli(db: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "ablate", "query", *args, "--storage", f"sqlite:///{db}"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def _digest(conn: sqlite3.Connection, table: str, order: str, skip: tuple[str, ...]) -> dict[str, Any]:
    columns = [r[1] for r in conn.execute(f"pragma table_info({table})") if r[1] not in skip]
    rows = conn.execute(f"select {', '.join(columns)} from {table} order by {order}").fetchall()
    h = hashlib.sha256(repr(rows).encode())
    return {"rows": len(rows), "sha256": h.hexdigest()}


def numbers(db: str | Path) -> dict[str, Any]:
    """The study's numbers in ``db`` (an SQLite file holding one study)."""
    db = Path(db).resolve()
    runs = json.loads(_cli(db, "--runs", "--format", "json"))
    for row in runs:
        for key in TIMING_FIELDS:
            row.pop(key, None)
    conn = sqlite3.connect(db)
    try:
        tables = {t: _digest(conn, t, order, skip) for t, (order, skip) in TABLES.items()}
    finally:
        conn.close()
    table = _cli(db, "--group-by", "fix", "--wide").splitlines()
    return {"per_fix_table": table, "runs": runs, "tables": tables}


def differences(a: dict[str, Any], b: dict[str, Any], limit: int = 20) -> list[str]:
    """What differs between two ``numbers`` documents (empty: identical)."""
    out = []
    if a["per_fix_table"] != b["per_fix_table"]:
        out.append("per-fix table differs")
    if len(a["runs"]) != len(b["runs"]):
        out.append(f"{len(a['runs'])} vs {len(b['runs'])} run rows")
    for ra, rb in zip(a["runs"], b["runs"]):
        who = f"run {ra.get('run_id')} ({ra.get('role')} {ra.get('fix')} seed {ra.get('seed')})"
        for key in sorted(set(ra) | set(rb)):
            if ra.get(key) != rb.get(key):
                out.append(f"{who}: {key} {ra.get(key)!r} vs {rb.get(key)!r}")
    for name in TABLES:
        if a["tables"][name] != b["tables"][name]:
            out.append(f"{name}: {a['tables'][name]} vs {b['tables'][name]}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db", nargs="+", help="one SQLite file with --dump, else two to compare")
    ap.add_argument("--dump", action="store_true", help="print the numbers of one database")
    args = ap.parse_args(argv)
    if args.dump:
        print(json.dumps(numbers(args.db[0]), indent=1))
        return 0
    if len(args.db) != 2:
        ap.error("give two databases to compare (or --dump and one)")
    diff = differences(numbers(args.db[0]), numbers(args.db[1]))
    print(json.dumps({"identical": not diff, "differences": diff}, indent=1))
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
