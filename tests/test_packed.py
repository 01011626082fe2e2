"""Packed arms train exactly as they would alone: every fix type, the probe, the held-out gain, a study."""

import math
from dataclasses import replace

import pytest
import torch
from sqlalchemy import create_engine, text

from ablate.arms import train_arm, train_pack
from ablate.engine.arm import ArmConfig
from ablate.engine.fixes import fix_names
from ablate.engine.loop import RunConfig, step_flops
from ablate.engine.probe import probe_arms, run_probe
from ablate.errors import AblateInputError
from ablate.subjects.aaclip.arm import DataConfig, PackSetup, aaclip_arm

SMALL = aaclip_arm(data=DataConfig(batch_size=2, train_size=16), probe_batches=2, gain_batches=2, device="cpu")
RTOL = 1e-4  # float reordering only: the stacked batch and vmap sum in another order


def arms(fix: str, seeds=(0, 1, 2), scales=None, **run) -> list[ArmConfig]:
    base = replace(SMALL, run=RunConfig(steps=6, probe_every=3, flush_every=4, **run))
    scales = scales or [None] * len(seeds)
    return [replace(base.with_fix(fix, s), seed=seed) for seed, s in zip(seeds, scales)]


def assert_same(alone, packed) -> None:
    assert (alone.fix, alone.scale, alone.seed) == (packed.fix, packed.scale, packed.seed)
    assert alone.metrics.keys() == packed.metrics.keys()
    for name in alone.metrics:
        a, p = alone.metrics[name], packed.metrics[name]
        assert p == pytest.approx(a, rel=RTOL, abs=1e-7), name
    # a difference of two losses near 10: float32 error of the losses, not of the difference
    assert packed.adapter_gain_batches == pytest.approx(alone.adapter_gain_batches, rel=RTOL, abs=2e-5)
    assert [q.step for q in packed.probes] == [q.step for q in alone.probes]
    for qa, qp in zip(alone.probes, packed.probes):
        for g in qa.groups:
            ra, rp = qa.groups[g].per_batch_ratios, qp.groups[g].per_batch_ratios
            assert rp == pytest.approx(ra, rel=RTOL), g
            assert qp.groups[g].norm_with == pytest.approx(qa.groups[g].norm_with, rel=RTOL)
        assert qp.norm_inflation == pytest.approx(qa.norm_inflation, rel=RTOL)
        assert qp.feature_cosine == pytest.approx(qa.feature_cosine, rel=RTOL)
        assert qp.loss_with == pytest.approx(qa.loss_with, rel=RTOL)


@pytest.mark.parametrize("fix", fix_names(include_reference=True))
def test_packed_training_equals_unpacked_for_every_fix(fix):
    cfgs = arms(fix)
    alone = [train_arm(c) for c in cfgs]
    packed = train_pack(cfgs)
    for a, p in zip(alone, packed):
        assert_same(a, p)
        assert p.packed_arms == 3 and a.packed_arms == 1
    # The arms really differ (their own seeds, data order, held-out batches): no arm copies another.
    assert len({round(p.metrics["loss"][-1], 6) for p in packed}) == 3


def test_packed_arms_may_differ_in_scale_and_keep_their_gates():
    cfgs = arms("learnable-alpha", seeds=(0, 1), scales=[0.05, 0.5])
    alone = [train_arm(c) for c in cfgs]
    packed = train_pack(cfgs)
    for a, p in zip(alone, packed):
        assert_same(a, p)
    assert packed[0].metrics["gate/alpha"][0] != pytest.approx(packed[1].metrics["gate/alpha"][0], rel=0.5)
    fixed = arms("fixed-scale", seeds=(0, 0), scales=[1e-6, 1.0])
    near, far = train_pack(fixed)
    assert abs(near.grad_ratio_init - 1) < 1e-4 < abs(far.grad_ratio_init - 1)


def test_frozen_control_packed_has_zero_gain():
    cfgs = [replace(c, frozen=True) for c in arms("no-branch", seeds=(0, 1))]
    for a, p in zip([train_arm(c) for c in cfgs], train_pack(cfgs)):
        assert_same(a, p)
        assert p.adapter_gain_batches == [0.0, 0.0]


def test_packed_probe_with_dropout_equals_unpacked():
    """Probe dropout on: each arm replays its own dropout draws, packed or alone."""
    cfgs = arms("none", seeds=(3, 4))
    setup = PackSetup(cfgs)
    packed = probe_arms(setup.model, setup.probe_batches, setup.device, setup.labels, dropout=True)
    for arm, p in zip(setup.arms, packed):
        a = run_probe(
            arm.model, arm.probe_batches, arm.device, arm.fix_name, arm.scale, dropout=True, rng_seed=arm.cfg.seed
        )
        assert p.groups["layers"].per_batch_ratios == pytest.approx(a.groups["layers"].per_batch_ratios, rel=RTOL)
        assert p.loss_with == pytest.approx(a.loss_with, rel=RTOL)
    # Dropout really is on: the same arm probed without it gives other numbers.
    plain = run_probe(setup.arms[0].model, setup.arms[0].probe_batches, setup.device, "none", None, rng_seed=3)
    assert plain.loss_with != pytest.approx(packed[0].loss_with, rel=1e-6)


def test_packs_refuse_arms_of_different_structure():
    with pytest.raises(AblateInputError) as err:
        PackSetup([*arms("none", seeds=(0,)), *arms("tanh-gate", seeds=(1,))])
    assert err.value.field == "pack"
    with pytest.raises(AblateInputError):
        PackSetup([*arms("none", seeds=(0,)), *arms("none", seeds=(1,), lr=1e-3)])


def test_step_flops_count_every_arm_and_the_mfu_uses_them(monkeypatch):
    one = PackSetup(arms("none", seeds=(0,)))
    three = PackSetup(arms("none"))
    f1 = step_flops(one.model, one.train_batch(0), one.device)
    f3 = step_flops(three.model, three.train_batch(0), three.device)
    assert f1 > 0 and f3 == pytest.approx(3 * f1, rel=1e-6)
    # Without the branch the step does less work.
    nb = PackSetup(arms("no-branch", seeds=(0,)))
    assert step_flops(nb.model, nb.train_batch(0), nb.device) < f1
    # CPU has no peak in the table: MFU is NaN unless the user gives one.
    r = train_arm(arms("none", seeds=(0,))[0])
    assert math.isnan(r.mfu) and r.step_flops == pytest.approx(f1)
    monkeypatch.setenv("ABLATE_PEAK_TFLOPS", "0.001")
    r = train_arm(arms("none", seeds=(0,))[0])
    assert r.mfu == pytest.approx(r.step_flops * r.steps_per_s / 1e9, rel=1e-9)


def test_counting_flops_does_not_disturb_training():
    cfg = arms("none", seeds=(0,))[0]
    counted = train_arm(cfg)
    uncounted = train_arm(replace(cfg, run=replace(cfg.run, count_flops=False)))
    assert counted.metrics["loss"] == uncounted.metrics["loss"]
    assert math.isnan(uncounted.step_flops)


def test_study_with_packed_seeds_stores_what_an_unpacked_study_stores(tmp_path):
    from ablate.spec import parse_spec
    from ablate.study.runner import run_study
    from tests.study_helpers import MINI

    values = {}
    for pack in (1, 2):
        spec_text = MINI.replace('device = "cpu"', f'device = "cpu"\npack = {pack}')
        url = f"sqlite:///{tmp_path / f'p{pack}.db'}"
        out = run_study(parse_spec(spec_text), spec_text, storage=url, n_trials=3)
        assert out.n_trials == 3 and out.failed == 0
        with create_engine(url).connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT role, trial_key, seed, fix, status, packed_arms, loss_slope, adapter_gain, "
                    "train_grad_ratio FROM ablate_runs ORDER BY role, trial_key, seed"
                )
            ).all()
        values[pack] = rows
    # Stage 1, baseline and control per seed, 3 trials x 2 seeds
    assert len(values[1]) == len(values[2]) == 2 * 3 + 3 * 2
    for a, b in zip(values[1], values[2]):
        assert a[:5] == b[:5] and a[4] == "complete"
        assert (a[5], b[5]) == ((None, None) if a[0] == "stage1" else (1, 2))  # Stage 1 runs once per seed
        for x, y in zip(a[6:], b[6:]):
            assert y == pytest.approx(x, rel=1e-3, abs=1e-6) if x is not None else y is None


def test_runs_view_shows_mfu_only_where_a_run_has_one():
    import pandas as pd

    from ablate import views

    base = {"run_id": 1, "role": "trial", "trial_number": 0, "seed": 0, "fix": "none", "status": "complete"}
    cpu = pd.DataFrame([{**base, "mfu": float("nan")}])
    gpu = pd.DataFrame([{**base, "mfu": 0.266}, {**base, "run_id": 2, "mfu": float("nan")}])
    assert "mfu" not in views.runs_view(cpu).headers
    shown = views.runs_view(gpu)
    assert list(shown["mfu"]) == ["0.266", "-"]  # 3 significant digits, '-' for unknown


def test_probe_reuses_a_pass_without_the_branch_only_when_everything_it_reads_is_equal():
    """On the initial weights a fix's pass without its branch is its seed's baseline pass: reused, same numbers."""
    from dataclasses import asdict

    from ablate.engine.probe import BypassedPasses

    base = PackSetup(arms("no-branch"))
    fix = PackSetup(arms("none"), like=base)
    fresh = probe_arms(fix.model, fix.probe_batches, fix.device, fix.labels)
    memo = BypassedPasses()
    alone = probe_arms(base.model, base.probe_batches, base.device, base.labels)
    assert [asdict(p) for p in probe_arms(base.model, base.probe_batches, base.device, base.labels, memo=memo)] == [
        asdict(p) for p in alone
    ]
    reused = probe_arms(fix.model, fix.probe_batches, fix.device, fix.labels, memo=memo)
    assert memo.hits == 1
    assert [asdict(p) for p in reused] == [asdict(p) for p in fresh]  # every number, bit for bit
    assert reused[0].loss_with != reused[0].loss_without  # the branch does change the pass
    # A no-branch pack served from the memo gets its own numbers too (the frozen control's case).
    again = probe_arms(base.model, base.probe_batches, base.device, base.labels, memo=memo)
    assert memo.hits == 2 and [asdict(p) for p in again] == [asdict(p) for p in alone]
    # Not reused: other seeds, probe dropout (training mode), or one adapter weight moved.
    other = PackSetup(arms("none", seeds=(0, 1, 5)), like=base)
    probe_arms(other.model, other.probe_batches, other.device, other.labels, memo=memo)
    probe_arms(fix.model, fix.probe_batches, fix.device, fix.labels, dropout=True, memo=memo)
    with torch.no_grad():
        fix.model.adapters[0].parameters().__next__().view(-1)[0] += 1e-3
    moved = probe_arms(fix.model, fix.probe_batches, fix.device, fix.labels, memo=memo)
    assert memo.hits == 2
    assert moved[0].loss_without != reused[0].loss_without
