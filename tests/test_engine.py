"""The model, probe and training run on the tiny CPU config (numbers, not smoke)."""

from dataclasses import replace

import pytest
import torch

from ablate.arms import probe_arm, train_arm
from ablate.engine.arm import ArmConfig
from ablate.engine.loop import RunConfig
from ablate.engine.probe import run_probe
from ablate.subjects.aaclip.arm import ArmSetup, DataConfig, aaclip_arm
from ablate.subjects.aaclip.data.synthetic import SyntheticAnomalyDataset
from ablate.subjects.aaclip.loss import stage2_loss
from ablate.subjects.aaclip.model import AAClipConfig, build_model

SMALL = aaclip_arm(data=DataConfig(batch_size=2, train_size=16), probe_batches=3, gain_batches=4, device="cpu")
GROUPS = ("layers", "proj", "all")


def small(fix: str, scale=None, steps: int = 4, **run) -> ArmConfig:
    return replace(SMALL, run=RunConfig(steps=steps, probe_every=2, flush_every=3, **run)).with_fix(fix, scale)


@pytest.mark.parametrize("fix", ["zero-init", "tanh-gate", "no-branch"])
def test_exact_unit_ratio_when_branch_output_is_zero(fix):
    p = probe_arm(small(fix))
    assert p.grad_ratio == 1.0 and p.grad_ratio_ci == (1.0, 1.0)
    for g in GROUPS:
        assert p.groups[g].per_batch_ratios == [1.0] * 3
        assert p.groups[g].norm_with == p.groups[g].norm_without
    assert p.loss_with == p.loss_without and p.feature_cosine == pytest.approx(1.0)
    assert p.verdict == "OK"


def test_fixed_scale_tends_to_one_as_scale_shrinks():
    far = abs(probe_arm(small("fixed-scale", 1.0)).grad_ratio - 1.0)
    near = abs(probe_arm(small("fixed-scale", 1e-6)).grad_ratio - 1.0)
    assert near < 1e-4
    assert near < far


def test_full_scale_branch_changes_gradient_and_forward():
    p = probe_arm(small("none"))
    assert p.grad_ratio != 1.0
    assert p.norm_inflation > 1.0
    assert p.feature_cosine < 0.999
    assert all(0.0 < p.groups[g].share < 1.0 for g in GROUPS)
    lo, hi = p.grad_ratio_ci
    assert lo <= p.grad_ratio <= hi
    assert p.group == "layers" and p.grad_ratio == p.groups["layers"].ratio


def test_group_split_sums_to_the_whole():
    """||g_all||^2 = ||g_layers||^2 + ||g_proj||^2 per batch, with and without the branch."""
    p = probe_arm(small("none"))
    setup = ArmSetup(small("none"))
    from ablate.engine.probe import _arm
    from ablate.engine.subject import watched_groups

    groups = watched_groups(setup.model)
    assert set(groups) == set(GROUPS)
    assert {id(q) for q in groups["all"]} == {id(q) for q in groups["layers"]} | {id(q) for q in groups["proj"]}
    assert not {id(q) for q in groups["layers"]} & {id(q) for q in groups["proj"]}
    row, _ = _arm(setup.model, groups, setup.probe_batches[0], setup.device, [0])
    g_layers, g_proj, g_all = (float(v) for v in row[3:6])
    assert g_all**2 == pytest.approx(g_layers**2 + g_proj**2, rel=1e-5)
    # the projections carry almost all of the gradient, which is why the whole-group ratio hides the layers
    assert g_layers < 0.3 * g_proj
    assert p.groups["all"].ratio != p.groups["layers"].ratio


def test_probe_interval_is_a_t_interval_on_log_ratios():
    import math

    from ablate.stats import t_ppf

    p = probe_arm(replace(small("none"), probe_batches=5))
    logs = [math.log(r) for r in p.groups["layers"].per_batch_ratios]
    m = sum(logs) / 5
    sd = math.sqrt(sum((x - m) ** 2 for x in logs) / 4)
    half = t_ppf(0.975, 4) * sd / math.sqrt(5)
    assert p.grad_ratio == pytest.approx(math.exp(m))
    assert p.grad_ratio_ci == pytest.approx((math.exp(m - half), math.exp(m + half)))


def test_each_seed_draws_its_own_probe_batches():
    a, b = ArmSetup(small("none")), ArmSetup(replace(small("none"), seed=1))
    assert not torch.equal(a.probe_batches[0].images, b.probe_batches[0].images)
    assert not torch.equal(a.gain_batches[0].images, b.gain_batches[0].images)
    assert not torch.equal(a.gain_batches[0].images, a.probe_batches[0].images)


@pytest.mark.parametrize("fix", ["learnable-alpha", "tanh-gate", "layerscale"])
def test_learnable_scalars_get_gradient(fix):
    setup = ArmSetup(small(fix))
    model = setup.model
    model.train(False)
    loss, _ = model.compute_loss(setup.probe_batches[0])
    loss.backward()
    join_grads = [p.grad for p in model.join.parameters()]
    assert join_grads and all(g is not None and g.abs().sum() > 0 for g in join_grads)
    if fix == "tanh-gate":  # gate at 0: the branch's own weights get exactly zero gradient
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.branch.q_proj.parameters())


def test_zero_init_branch_qkv_have_zero_gradient_at_step0():
    setup = ArmSetup(small("zero-init"))
    loss, _ = setup.model.compute_loss(setup.probe_batches[0])
    loss.backward()
    branch = setup.model.branch
    for lin in (branch.q_proj, branch.k_proj, branch.v_proj):
        assert lin.weight.grad is None or lin.weight.grad.abs().sum() == 0
    assert branch.out_proj.weight.grad.abs().sum() > 0


def test_same_seed_identical_numbers_twice():
    a, b = train_arm(small("learnable-alpha")), train_arm(small("learnable-alpha"))
    assert a.metrics == b.metrics
    assert [p.to_dict() for p in a.probes] == [p.to_dict() for p in b.probes]
    assert a.loss_slope == b.loss_slope and a.adapter_gain_batches == b.adapter_gain_batches
    c = train_arm(replace(small("learnable-alpha"), seed=1))
    assert c.metrics["loss"] != a.metrics["loss"]


def test_arms_with_same_seed_share_adapter_init():
    m1 = build_model(AAClipConfig(fix="none"), ["wood"], seed=5)
    m2 = build_model(AAClipConfig(fix="no-branch"), ["wood"], seed=5)
    ps = [q for g in m1.adapter_groups().values() for q in g]
    qs = [q for g in m2.adapter_groups().values() for q in g]
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)


def test_training_records_series_and_probes_and_restores_grads():
    seen = []
    r = train_arm(small("learnable-alpha", steps=5), on_flush=lambda rows: seen.append([s for s, _ in rows]))
    assert seen == [[0, 1, 2], [3, 4]]  # flush_every=3: one block per flush
    assert set(r.metrics) == {
        "loss",
        *(f"grad_norm_{g}" for g in (*GROUPS, "branch")),
        *(f"upd_{g}" for g in (*GROUPS, "branch")),
        "gate/alpha",
    }
    assert all(len(v) == 5 for v in r.metrics.values())
    assert [p.step for p in r.probes] == [0, 2, 4, 5]
    assert r.metrics["gate/alpha"][0] != 0.1  # alpha moved after the first step
    assert all(u > 0 for g in GROUPS for u in r.metrics[f"upd_{g}"])
    for t in range(5):
        la, pr, al = (r.metrics[f"grad_norm_{g}"][t] for g in GROUPS)
        assert al**2 == pytest.approx(la**2 + pr**2, rel=1e-5)
    assert r.grad_ratio_init == r.probes[0].grad_ratio
    assert r.steps_per_s > 0 and r.wall_s > 0


def test_probe_leaves_training_state_untouched():
    setup = ArmSetup(small("none"))
    model = setup.model
    model.train(True)
    loss, _ = model.compute_loss(setup.probe_batches[0])
    loss.backward()
    params = [q for g in model.adapter_groups().values() for q in g]
    before = [p.grad.clone() for p in params]
    run_probe(model, setup.probe_batches, setup.device, "none", None)
    assert model.training
    assert all(torch.equal(p.grad, g) for p, g in zip(params, before))


def test_loss_prefers_the_right_answer():
    ds = SyntheticAnomalyDataset(32, seed=0)
    batch = ds.batch([0, 1, 2, 3])
    masks, labels = batch.masks, batch.labels
    # logits on a 4x4 grid favouring the true class everywhere vs the opposite
    down = torch.nn.functional.adaptive_avg_pool2d(masks.unsqueeze(1), 4).squeeze(1)
    good = torch.stack([10 * (1 - 2 * down), 10 * (2 * down - 1)], dim=1)
    det_good = torch.stack([10 * (1 - 2 * labels.float()), 10 * (2 * labels.float() - 1)], dim=1)
    assert stage2_loss([good], det_good, masks, labels) < stage2_loss([-good], -det_good, masks, labels)


def test_real_scale_backbone_shape():
    # Structure only (no forward pass): ViT-L-14-336 run at 518 px, as in AA-CLIP.
    from ablate.subjects.aaclip.backbone import BACKBONES, build_clip

    spec = BACKBONES["vit-l-14-336@518"]
    clip = build_clip(spec)
    visual = clip.visual
    assert visual.grid_size == (37, 37) and visual.positional_embedding.shape == (37 * 37 + 1, 1024)
    assert len(visual.transformer.resblocks) == 24 and clip.transformer.width == 768
    assert spec.levels == (6, 12, 18, 24) and spec.adapter_layers == 6
    assert not any(p.requires_grad for p in clip.parameters())


def test_frozen_control_keeps_block_adapters_and_scores_zero_gain():
    setup = ArmSetup(replace(small("no-branch", steps=6), frozen=True))
    init = [q.detach().clone() for q in setup.model.adapter_groups()["layers"]]
    r = train_arm(setup.cfg, built=setup)
    after = setup.model.adapter_groups()["layers"]
    assert all(torch.equal(a, b) for a, b in zip(init, after))  # never updated ...
    assert all(v > 0 for v in r.metrics["grad_norm_layers"])  # ... though its gradient is measured
    assert r.metrics["upd_layers"] == [0.0] * 6 and all(u > 0 for u in r.metrics["upd_proj"])
    assert r.adapter_gain == 0.0 and r.adapter_gain_batches == [0.0] * 4
    assert r.frozen == ("layers",)


def test_adapter_gain_is_the_held_out_loss_difference_and_restores_weights():
    setup = ArmSetup(small("no-branch", steps=8, lr=5e-3))
    r = train_arm(setup.cfg, built=setup)
    model = setup.model
    trained = [q.detach().clone() for q in model.adapter_groups()["layers"]]
    model.train(False)
    with torch.no_grad():
        as_trained = [float(model.compute_loss(b)[0]) for b in setup.gain_batches]
    assert r.adapter_gain == pytest.approx(sum(r.adapter_gain_batches) / 4)
    assert all(torch.equal(a, b) for a, b in zip(trained, model.adapter_groups()["layers"]))
    fresh = ArmSetup(small("no-branch", steps=8, lr=5e-3)).model  # same seed: the initial weights
    for q, init in zip(model.adapter_groups()["layers"], fresh.adapter_groups()["layers"]):
        q.data.copy_(init.data)
    with torch.no_grad():
        reset = [float(model.compute_loss(b)[0]) for b in setup.gain_batches]
    assert r.adapter_gain_batches == pytest.approx([x - y for x, y in zip(reset, as_trained)], rel=1e-4, abs=1e-5)
