"""Two workers claiming the same leftover run at the same moment: exactly one gets it.

A reference run (baseline, control, Stage 1) is coordinated by ``start_run``'s lease, not by Optuna,
so its read-then-write must be atomic: a worker that read the row as 'failed' must not overwrite a
claim another worker made in between (CI saw two workers train one Stage 1 run, and the second's
``finish_run`` then failed on the complete row). The reader here pauses between its read and its
write, so without a lock both threads would take the row.
"""

from __future__ import annotations

import threading
import time

import pytest

from ablate.store import RunBusy, finish_run, open_storage, register_study, start_run
from ablate.store.schema import RunModel

READ_PAUSE_S = 0.5  # far longer than two threads take to start after a barrier


def _race(url: str, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    engine = open_storage(url)
    sid = register_study(engine, "s", "s", "x", "h" * 64, [{"metric": "loss_slope", "direction": "minimize"}])
    dead = start_run(engine, sid, "stage1", None, 0, "no-branch", None, "cpu", lease_s=3600)
    finish_run(engine, dead, "failed", None, error="interrupted")

    find = RunModel.find.__func__

    def slow_find(cls, *args, **kwargs):
        row = find(cls, *args, **kwargs)
        time.sleep(READ_PAUSE_S)
        return row

    monkeypatch.setattr(RunModel, "find", classmethod(slow_find))
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def claim() -> None:
        barrier.wait()
        try:
            outcomes.append(start_run(engine, sid, "stage1", None, 0, "no-branch", None, "cpu", lease_s=3600))
        except RunBusy as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcomes


def _check(outcomes: list[object]) -> None:
    assert len(outcomes) == 2
    claimed = [o for o in outcomes if isinstance(o, int)]
    busy = [o for o in outcomes if isinstance(o, RunBusy)]
    assert len(claimed) == 1 and len(busy) == 1, outcomes


def test_two_workers_claiming_one_leftover_run_on_sqlite(tmp_path, monkeypatch):
    _check(_race(f"sqlite:///{tmp_path / 'race.db'}", monkeypatch))


def test_two_workers_claiming_one_leftover_run_on_postgresql(fresh_pg_url, monkeypatch):
    _check(_race(fresh_pg_url, monkeypatch))
