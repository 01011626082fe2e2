"""The model, probe and training run on the tiny CPU config (numbers, not smoke)."""

from dataclasses import replace

import pytest
import torch

from ablate.data.synthetic import SyntheticAnomalyDataset
from ablate.model.aaclip import AAClipConfig, build_model
from ablate.train.arm import ArmConfig, ArmSetup, DataConfig, probe_arm, train_arm
from ablate.train.loss import stage2_loss
from ablate.train.probe import run_probe
from ablate.train.run import RunConfig

SMALL = ArmConfig(data=DataConfig(batch_size=2, train_size=16), probe_batches=3, device="cpu")


def small(fix: str, scale=None, steps: int = 4, **run) -> ArmConfig:
    return replace(SMALL, run=RunConfig(steps=steps, probe_every=2, flush_every=3, **run)).with_fix(fix, scale)


@pytest.mark.parametrize("fix", ["zero-init", "tanh-gate", "no-branch"])
def test_exact_unit_ratio_when_branch_output_is_zero(fix):
    p = probe_arm(small(fix))
    assert p.grad_ratio == 1.0
    assert p.per_batch_ratios == [1.0] * 3
    assert p.grad_norm_with == p.grad_norm_without
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
    assert 0.0 < p.grad_share < 1.0
    lo, hi = p.grad_ratio_ci
    assert lo <= p.grad_ratio <= hi


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
    assert a.loss_slope == b.loss_slope
    c = train_arm(replace(small("learnable-alpha"), seed=1))
    assert c.metrics["loss"] != a.metrics["loss"]


def test_arms_with_same_seed_share_adapter_init():
    m1 = build_model(AAClipConfig(fix="none"), ["wood"], seed=5)
    m2 = build_model(AAClipConfig(fix="no-branch"), ["wood"], seed=5)
    for p, q in zip(m1.adapter_parameters(), m2.adapter_parameters()):
        assert torch.equal(p, q)


def test_training_records_series_and_probes_and_restores_grads():
    seen = []
    r = train_arm(small("learnable-alpha", steps=5), on_flush=lambda rows: seen.append([s for s, _ in rows]))
    assert seen == [[0, 1, 2], [3, 4]]  # flush_every=3: one block per flush
    assert set(r.metrics) == {
        "loss",
        "grad_norm_adapter",
        "grad_norm_branch",
        "upd_adapter",
        "upd_branch",
        "gate/alpha",
    }
    assert all(len(v) == 5 for v in r.metrics.values())
    assert [p.step for p in r.probes] == [0, 2, 4, 5]
    assert r.metrics["gate/alpha"][0] != 0.1  # alpha moved after the first step
    assert all(u > 0 for u in r.metrics["upd_adapter"])
    assert r.grad_ratio_init == r.probes[0].grad_ratio
    assert r.steps_per_s > 0 and r.wall_s > 0


def test_probe_leaves_training_state_untouched():
    setup = ArmSetup(small("none"))
    model = setup.model
    model.train(True)
    loss, _ = model.compute_loss(setup.probe_batches[0])
    loss.backward()
    before = [p.grad.clone() for p in model.adapter_parameters()]
    run_probe(model, setup.probe_batches, setup.device, "none", None)
    assert model.training
    assert all(torch.equal(p.grad, g) for p, g in zip(model.adapter_parameters(), before))


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
    from ablate.model.backbone import BACKBONES, build_clip

    spec = BACKBONES["vit-l-14-336@518"]
    clip = build_clip(spec)
    visual = clip.visual
    assert visual.grid_size == (37, 37) and visual.positional_embedding.shape == (37 * 37 + 1, 1024)
    assert len(visual.transformer.resblocks) == 24 and clip.transformer.width == 768
    assert spec.levels == (6, 12, 18, 24) and spec.adapter_layers == 6
    assert not any(p.requires_grad for p in clip.parameters())
