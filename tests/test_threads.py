"""Each worker takes a share of the cores: the rule, the local-worker count, and the flag."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ablate.threads import LocalWorkers, choose_threads


def test_rule_order_flag_then_env_then_share_of_cores():
    env = {"ABLATE_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert choose_threads(2, 4, env, cores=16) == (2, "--threads")
    assert choose_threads(None, 4, env, cores=16) == (3, "$ABLATE_THREADS")
    assert choose_threads(None, 4, {"OMP_NUM_THREADS": "5"}, cores=16) == (5, "$OMP_NUM_THREADS")
    assert choose_threads(None, 4, {"OMP_NUM_THREADS": "zero"}, cores=16)[0] == 4  # junk is ignored
    assert choose_threads(None, 1, {}, cores=2) == (2, "2 cores / 1 local worker")
    assert choose_threads(None, 2, {}, cores=2) == (1, "2 cores / 2 local workers")
    assert choose_threads(None, 3, {}, cores=2)[0] == 1  # never below one


def test_local_workers_count_live_processes_and_forget_dead_ones(tmp_path):
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from ablate.threads import LocalWorkers\n"
            f"with LocalWorkers(Path({str(tmp_path)!r})):\n"
            "    print('in', flush=True); sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "in"
        with LocalWorkers(tmp_path) as me:
            assert me.live() == 2
            (tmp_path / "999999999.pid").write_text("999999999")  # a worker that died without cleaning up
            assert me.live() == 2 and not (tmp_path / "999999999.pid").exists()
            other.communicate("\n", timeout=30)
            assert me.live() == 1
        assert list(tmp_path.glob("*.pid")) == []
    finally:
        other.kill()


def test_two_study_workers_take_one_thread_each_on_two_cores(tmp_path, monkeypatch):
    """The runner re-reads the count before every run: with another live worker registered, a study
    on 2 cores runs with 1 thread; alone it takes both."""
    import torch

    from ablate.spec import parse_spec
    from ablate.study import run_study
    from ablate.study.runner import StudyReporter
    from ablate.threads import available_cores
    from tests.study_helpers import MINI

    if available_cores() < 2:
        pytest.skip("needs 2 cores")
    monkeypatch.delenv("ABLATE_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("ablate.threads.available_cores", lambda: 2)
    monkeypatch.setattr("ablate.threads.REGISTRY_DIR", tmp_path / "reg")
    labels = []

    class Labels(StudyReporter):
        def run_start(self, label: str, steps: int) -> None:
            labels.append(label)

    text = MINI.replace("trials = 4", "trials = 1").replace("seeds = [0, 1]", "seeds = [0]")
    before = torch.get_num_threads()
    try:
        (tmp_path / "reg").mkdir()
        with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) as sleeper:
            (tmp_path / "reg" / f"{sleeper.pid}.pid").write_text(str(sleeper.pid))
            run_study(parse_spec(text), text, f"sqlite:///{tmp_path / 'a.db'}", reporter=Labels())
            assert torch.get_num_threads() == 1
            sleeper.kill()
        time.sleep(0.1)
        run_study(parse_spec(text), text, f"sqlite:///{tmp_path / 'b.db'}", reporter=Labels())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    # 4 runs a study: Stage 1, baseline, control, one trial
    assert len(labels) == 8 and all(label.endswith("(1 thread)") for label in labels[:4]), labels
    assert all(label.endswith("(2 threads)") for label in labels[4:]), labels
