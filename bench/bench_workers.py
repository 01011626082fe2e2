"""The quick study with 1 worker and with `--workers 2`, side by side in one run; prints JSON.

Each case runs `ablate study run SPEC --quiet --no-plots` as a user would (fresh SQLite file in a
temporary folder) and times it from start to the last worker's exit: ``one_worker`` (one process),
``workers_2`` (`--workers 2`: one command, two worker processes) and, with ``--by-hand``, two
processes started by hand (``two_workers``). Every worker takes its share of the cores
(ablate/threads.py); ``--oversubscribed`` adds the 2-process case with every worker forced to all
cores (torch's default), which is what made a study 10x slower on a busy machine. Every arm two
cases ran must give the same numbers (``identical``), and `--workers 2` must print the same per-fix
table as one worker (``same_table``): splitting work changes speed only.

    python bench/bench_workers.py                 # studies/quick.toml
    python bench/bench_workers.py --trials 3      # shorter
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ablate.threads import available_cores  # noqa: E402
from bench.provenance import provenance  # noqa: E402


def _study(spec: str, db: Path, workers: int, trials: int | None, threads: int | None, flag: int | None) -> float:
    """Wall time of ``workers`` processes started by hand, or of one `--workers FLAG` command."""
    cmd = [sys.executable, "-m", "ablate", "study", "run", spec, "--storage", f"sqlite:///{db}"]
    cmd += ["--quiet", "--no-plots"]
    cmd += ["--trials", str(trials)] if trials else []
    cmd += ["--threads", str(threads)] if threads else []
    cmd += ["--workers", str(flag)] if flag else []
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ABLATE_THREADS")}
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=db.parent, env=env, stdout=subprocess.DEVNULL) for _ in range(workers)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a worker failed ({codes}) on {db}")
    return time.perf_counter() - t0


def _per_arm(db: Path) -> dict[tuple, tuple]:
    """(fix, scale) -> (adapter_gain, dilution_train) of every ranked trial (references included)."""
    from ablate.store import open_storage, query

    engine = open_storage(f"sqlite:///{db}", create=False)
    frames = [query.trials_frame(engine), query.group_by_fix(engine)]
    rows = [r for r in frames[0].itertuples() if r.ranked]
    rows += [r for r in frames[1].itertuples() if r.fix in query.REFERENCE_LABELS.values()]
    return {(r.fix, repr(r.scale)): (round(r.adapter_gain, 9), round(r.dilution_train, 9)) for r in rows}


def _per_fix_table(db: Path) -> str:
    """The per-fix table `ablate query --group-by fix` prints (what `study run` prints at its end)."""
    cmd = [sys.executable, "-m", "ablate", "query", "--group-by", "fix", "--storage", f"sqlite:///{db}", "--wide"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "studies" / "quick.toml"))
    ap.add_argument("--trials", type=int, default=None, help="finished trials (default: the spec's)")
    ap.add_argument("--by-hand", action="store_true", help="add 2 processes started by hand")
    ap.add_argument("--oversubscribed", action="store_true", help="add 2 processes x all cores (slow)")
    args = ap.parse_args(argv)
    made = provenance("bench_workers.py", argv)

    cores = available_cores()
    spec = Path(args.spec).resolve()
    shown = str(spec.relative_to(ROOT)) if spec.is_relative_to(ROOT) else str(spec)  # no checkout path in the JSON
    doc: dict = {**made, "spec": shown, "cores": cores, "load_before": os.getloadavg()[0]}
    tables: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("one_worker", 1, None, None), ("workers_2", 1, None, 2)]
        if args.by_hand:
            cases.append(("two_workers", 2, None, None))
        if args.oversubscribed:
            cases.append(("two_workers_all_cores_each", 2, cores, None))
        for name, processes, threads, flag in cases:
            db = Path(tmp) / f"{name}.db"
            doc[f"{name}_s"] = round(_study(args.spec, db, processes, args.trials, threads, flag), 1)
            doc[f"{name}_arms"] = _per_arm(db)
            tables[name] = _per_fix_table(db)
        doc["load_after"] = os.getloadavg()[0]
    one = doc["one_worker_arms"]
    for name, *_ in cases[1:]:
        doc[f"{name}_over_one_wall"] = round(doc[f"{name}_s"] / doc["one_worker_s"], 3)
        other = doc[f"{name}_arms"]
        shared = sorted(set(one) & set(other))
        doc[f"{name}_arms_compared"] = len(shared)
        doc[f"{name}_identical"] = bool(shared) and all(one[k] == other[k] for k in shared)
    doc["same_table"] = tables["workers_2"] == tables["one_worker"]
    doc["per_fix_table"] = tables["workers_2"].splitlines()
    for name, *_ in cases:
        doc.pop(f"{name}_arms")
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
