"""Chaos run: a study with several workers that are killed and restarted at random; prints JSON.

For ``--rounds`` rounds it keeps ``--workers`` workers (`ablate study run SPEC`) alive, waits a
random 2-9 s and stops a random worker: SIGKILL (no handler runs), SIGTERM, Ctrl-C, or Ctrl-C
twice 50 ms apart. Then it lets workers run to the end without interference and checks what the
database holds:

- ``requested`` / ``finished``: the study's trial count, and the trials Optuna holds COMPLETE;
- ``duplicated``: finished trials that repeat another's parameter set, plus complete runs stored
  twice for one (role, trial, seed);
- ``stuck``: trials Optuna still holds RUNNING or WAITING;
- ``runs_orphaned``: ``ablate_runs`` rows still 'running';
- ``disagreements``: trials whose Optuna state and ``ablate query`` status differ, or that Optuna
  counts COMPLETE without a complete run for every seed;
- ``integrity``: SQLite's ``PRAGMA integrity_check`` ("ok"), or "n/a" on PostgreSQL;
- ``unexpected_exits``: worker exit codes other than 0, 130, 143 and the kills' own.

All but ``finished`` (and ``requested``) must be 0 / "ok".

    python bench/fault_inject.py                           # 12 rounds, 3 workers, SQLite
    python bench/fault_inject.py --rounds 30 --seed 1
    python bench/fault_inject.py --pack 4                 # 2 trials per pack (ablate/study/trial_pack.py)
    python bench/fault_inject.py --storage postgresql+psycopg://user@host/db
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.provenance import provenance  # noqa: E402

SPEC = """
name = "chaos"
[data]
batch_size = 2
train_size = 16
[training]
steps = {steps}
device = "cpu"
pack = {pack}
[probe]
batches = 2
every = {every}
gain_batches = 2
[search]
fixes = ["none", "fixed-scale", "tanh-gate", "zero-init", "layerscale"]
[study]
trials = {trials}
seeds = [0, 1]
sampler = "random"
"""

ACTIONS = (("SIGKILL", 0.55), ("SIGTERM", 0.15), ("SIGINT", 0.15), ("SIGINT x2", 0.15))
EXPECTED_EXITS = {0, 130, 143, -signal.SIGKILL}


def _start(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen, action: str) -> None:
    if action == "SIGKILL":
        proc.kill()
    elif action == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGINT)
        if action == "SIGINT x2":
            time.sleep(0.05)
            proc.send_signal(signal.SIGINT)


def _check(url: str, name: str, trials: int, seeds: int) -> dict:
    import optuna
    from sqlalchemy import text

    from ablate.store import open_storage, query
    from ablate.study.distinct import counted

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=url)
    all_trials = study.get_trials(deepcopy=False)
    finished = [t for t in counted(all_trials) if t.state == optuna.trial.TrialState.COMPLETE]
    points = Counter(tuple(sorted(t.params.items())) for t in finished)
    engine = open_storage(url)
    with engine.connect() as conn:
        runs = conn.execute(text("select role, trial_key, seed, status from ablate_runs")).all()
    complete_runs = Counter((r.role, r.trial_key, r.seed) for r in runs if r.status == "complete")
    frame = query.trials_frame(engine, name)
    ablate_status = {int(r.trial_number): str(r.status) for r in frame.itertuples()}
    optuna_status = {t.number: t.state.name.lower().replace("fail", "failed") for t in all_trials}
    disagree = [n for n, s in ablate_status.items() if optuna_status.get(n) != s]
    disagree += [t.number for t in finished if sum(complete_runs[("trial", t.number, s)] for s in range(seeds)) < seeds]
    integrity = "n/a"
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as con:
            integrity = con.execute("pragma integrity_check").fetchone()[0]
    return {
        "requested": trials,
        "finished": len(finished),
        "duplicated": sum(n - 1 for n in points.values()) + sum(n - 1 for n in complete_runs.values()),
        "stuck": sum(t.state.name in ("RUNNING", "WAITING") for t in all_trials),
        "runs_orphaned": sum(r.status == "running" for r in runs),
        "disagreements": len(set(disagree)),
        "integrity": integrity,
        "skipped_trials": sum("skipped" in t.user_attrs for t in all_trials),
        "failed_trials": sum(t.state.name == "FAIL" for t in all_trials),
        "failed_runs": sum(r.status == "failed" for r in runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--pack", type=int, default=1, help="training.pack (4 = 2 trials of 2 seeds per pack)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    ap.add_argument("--storage", default=None, help="SQLAlchemy URL (default: a fresh SQLite file)")
    args = ap.parse_args()
    made = provenance("fault_inject.py", None)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="ablate-chaos-"))
    spec = work / "chaos.toml"
    spec.write_text(SPEC.format(steps=args.steps, every=max(1, args.steps // 2), trials=args.trials, pack=args.pack))
    url = args.storage or f"sqlite:///{work / 'results.db'}"
    cmd = [sys.executable, "-m", "ablate", "study", "run", str(spec), "--storage", url, "--quiet", "--no-plots"]
    # One thread each: the workers share the machine's cores (ablate/threads.py would also do this).
    env = {**os.environ, "ABLATE_HEARTBEAT_S": "1", "ABLATE_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    live: list[subprocess.Popen] = []
    exits: Counter[int] = Counter()
    actions: Counter[str] = Counter()
    for _ in range(args.rounds):
        for p in [p for p in live if p.poll() is not None]:
            exits[p.returncode] += 1
            live.remove(p)
        live += [_start(cmd, work, env) for _ in range(args.workers - len(live))]
        time.sleep(rng.uniform(2.0, 9.0))  # workers need ~2-3 s to start: most kills land in work
        victim = rng.choice(live)
        action = rng.choices([a for a, _ in ACTIONS], weights=[w for _, w in ACTIONS])[0]
        _stop(victim, action)
        actions[action] += 1
        victim.wait(timeout=120)
    # The calm after: workers run undisturbed until the study is done; a worker that was in the
    # middle of stopping is replaced until every one of a round exits 0.
    final: list[int] = []
    for _ in range(3):
        for p in [p for p in live if p.poll() is not None]:
            exits[p.returncode] += 1
            live.remove(p)
        live += [_start(cmd, work, env) for _ in range(args.workers - len(live))]
        final = [p.wait(timeout=1800) for p in live]
        exits.update(final)
        live = []
        if not any(final):
            break
    result = {
        **made,
        "rounds": args.rounds,
        "workers": args.workers,
        "pack": args.pack,
        "kill_schedule_seed": args.seed,
        "actions": dict(actions),
        **_check(url, "chaos", args.trials, seeds=2),
        "unexpected_exits": sum(n for code, n in exits.items() if code not in EXPECTED_EXITS),
        "exit_codes": {str(k): v for k, v in sorted(exits.items())},
        "wall_s": round(time.perf_counter() - t0, 1),
        "storage": url.split(":")[0],
        "load_1min_at_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
