"""What a study costs beyond its training: the timers, the reused probe passes, and the benchmarks'
breakdowns (bench/bench_study_overhead.py, bench/study_numbers.py, bench/gpu_bench.py) on CPU."""

from __future__ import annotations

import sqlite3
import time

import pytest

from ablate import timers
from bench.study_numbers import differences, numbers
from tests.study_helpers import MINI, copy_db


def test_spans_are_exclusive_so_the_parts_add_up():
    timers.reset()
    t = time.perf_counter()
    with timers.span("outer"):
        time.sleep(0.05)
        with timers.span("inner"):
            time.sleep(0.1)
        time.sleep(0.05)
    wall = time.perf_counter() - t
    got = timers.snapshot()
    timers.reset()
    assert got["seconds"]["inner"] == pytest.approx(0.1, abs=0.05)
    assert got["seconds"]["outer"] == pytest.approx(0.1, abs=0.05)  # the inner 0.1 s is not counted twice
    assert got["seconds"]["outer"] + got["seconds"]["inner"] == pytest.approx(wall, abs=0.01)
    assert got["calls"] == {"outer": 1.0, "inner": 1.0}


def test_reused_probe_passes_change_no_number_of_a_study(tmp_path, monkeypatch):
    """A study with the probe's passes without the branch reused equals one that runs every pass; and
    bench/study_numbers.py sees a change in the last bit of one stored probe number."""
    from ablate.engine import loop
    from ablate.engine.probe import BypassedPasses
    from ablate.spec import parse_spec
    from ablate.study.runner import run_study

    spec = parse_spec(MINI)
    dbs = {}
    for name, memo in (("reused", BypassedPasses()), ("fresh", BypassedPasses(capacity=0))):
        monkeypatch.setattr(loop, "BYPASSED", memo)
        dbs[name] = tmp_path / f"{name}.db"
        out = run_study(spec, MINI, storage=f"sqlite:///{dbs[name]}", n_trials=3)
        assert out.n_trials == 3 and out.failed == 0
        assert (memo.hits > 0) == (name == "reused")  # every fix's step-0 pass is its seed's baseline pass
    reused, fresh = numbers(dbs["reused"]), numbers(dbs["fresh"])
    assert differences(reused, fresh) == []
    assert len(reused["runs"]) == 2 * 3 + 3 * 2  # Stage 1, baseline and control per seed; 3 trials x 2 seeds
    changed = copy_db(dbs["fresh"], tmp_path / "changed.db")
    with sqlite3.connect(changed) as conn:
        (loss,) = conn.execute("SELECT loss_without FROM ablate_probe_points WHERE id = 1").fetchone()
        conn.execute("UPDATE ablate_probe_points SET loss_without = ? WHERE id = 1", (loss * (1 + 2**-50),))
    assert any("ablate_probe_points" in d for d in differences(fresh, numbers(changed)))


def test_gpu_bench_breaks_down_a_trial_and_a_study_on_cpu():
    """bench/gpu_bench.py with the tiny backbone on CPU: the real-scale script's breakdowns add up."""
    from bench import gpu_bench

    doc = gpu_bench.main(
        ["--device", "cpu", "--backbone", "tiny", "--steps", "2", "--pack", "2", "--fixes", "none"]
        + ["--trial-steps", "4", "--trials-packed", "1", "--study-steps", "2", "--study-stage1-steps", "1"]
    )
    trial = doc["trial"]["breakdown_s"]
    assert set(trial) == {"data", "flops", "probe", "gain", "train_steps"}
    assert trial["probe"] > 0 and trial["gain"] > 0 and trial["train_steps"] > 0
    assert sum(trial.values()) == pytest.approx(doc["trial"]["wall_s"], rel=0.05, abs=0.02)
    study = doc["study"]
    parts = study["breakdown_s"]
    for name in ("build", "stage1", "train_steps", "probe", "gain", "db", "optuna"):
        assert parts[name] > 0, name
    assert "imports" not in parts and parts["waiting"] == 0
    # Everything but the runner's own bookkeeping is inside a span.
    assert 0 <= parts["rest"] < 0.2 * study["wall_s"]
    assert sum(parts.values()) == pytest.approx(study["wall_s"], rel=0.01, abs=0.02)


@pytest.mark.parametrize("fix", ["none", "no-branch"])
def test_the_gain_runs_the_shared_upstream_once_with_the_same_numbers(fix):
    """loss_after: the forward up to a group's first use runs once; every pass equals compute_loss's."""
    import torch

    from ablate.engine.loop import held_out_gain
    from ablate.engine.subject import watched_groups
    from ablate.subjects.aaclip.arm import PackSetup
    from tests.test_packed import arms

    setup = PackSetup(arms(fix))
    model, batch = setup.model, setup.gain_batches[0]
    model.train(False)
    with torch.no_grad():
        whole, _ = model.compute_loss(batch)
        for group in ("layers", "proj"):
            split = model.loss_after(batch, group)
            assert torch.equal(split()[0], whole) and torch.equal(split()[0], whole)
    groups = watched_groups(model)
    init = [p.detach().clone() for p in groups["layers"]]
    with torch.no_grad():
        for p in groups["all"]:  # as if trained: both groups moved
            p.add_(0.01 * torch.randn_like(p))
    args = (model, groups["layers"], init, setup.gain_batches, setup.device, [0, 1, 2])
    split_gain, plain = held_out_gain(*args, group="layers"), held_out_gain(*args)
    assert split_gain == plain and any(g != 0 for batch_gains in plain for g in batch_gains)


def test_packing_and_loop_benchmarks_run_and_compare_equal_numbers():
    """bench/bench_packed.py and bench/bench_overhead.py on a few steps: they run against the current
    code, and packed arms trained the numbers the same arms trained apart did."""
    from bench import bench_overhead, bench_packed

    packed = bench_packed.main(["--steps", "3", "--rounds", "1", "--seeds", "2"])
    assert len(packed["unpacked_s"]) == len(packed["packed_s"]) == 1
    assert packed["max_rel_loss_diff"] < 1e-5 and packed["speedup"] > 0
    loop = bench_overhead.main(["--steps", "3", "--rounds", "1"])
    assert len(loop["bare_s"]) == len(loop["harness_loop_s"]) == 1 and loop["overhead_ratio"] > 0


def test_engine_benchmark_probes_every_fix():
    from ablate.engine.fixes import fix_names
    from bench import bench_engine

    doc = bench_engine.main(["--batches", "1", "--steps", "2"])
    assert set(doc["probe_s"]) == set(fix_names()) and all(s > 0 for s in doc["probe_s"].values())
    assert set(doc["train"]) == {"none", "no-branch"}


def test_attention_slices_benchmark_steps_both_sides_alike():
    from bench import bench_attention_slices

    doc = bench_attention_slices.main(["--rounds", "1", "--steps", "2"])
    assert doc["identical"] is True
    assert doc["whole"]["total_s"] > 0 and doc["sliced"]["total_s"] > 0 and doc["steps_per_side"] == 2
