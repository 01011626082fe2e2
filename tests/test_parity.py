"""The AA-CLIP subject computes what AA-CLIP computes: one test per element of docs/parity.md.

Each reference below is written here from AA-CLIP's published definition (numpy, scipy or plain
loops, from the frozen CLIP's weights), not taken from the code under test: no ablate forward pass,
hook or helper feeds a reference. AA-CLIP's choices (optimiser settings, prompts, class names) are
written out literally, from the authors' code (Mwxinnn/AA-CLIP: train.py, dataset/constants.py), so
that changing one of them fails a test; docs/parity.md lists which test catches which change.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from ablate.arms import train_arm, train_pack
from ablate.engine.device import autocast
from ablate.engine.loop import RunConfig
from ablate.errors import AblateInputError
from ablate.spec import parse_spec
from ablate.subjects.aaclip.arm import (
    ArmSetup,
    DataConfig,
    PackSetup,
    aaclip_arm,
    load_text_adapter,
    new_text_adapter,
)
from ablate.subjects.aaclip.data import augment as aug
from ablate.subjects.aaclip.data.image_dataset import load_mask
from ablate.subjects.aaclip.data.names import aaclip_names
from ablate.subjects.aaclip.data.order import batch_indices
from ablate.subjects.aaclip.data.synthetic import SyntheticAnomalyDataset
from ablate.subjects.aaclip.evaluate import evaluate
from ablate.subjects.aaclip.loss import segmentation_loss, stage2_loss
from ablate.subjects.aaclip.model import AAClipConfig
from ablate.subjects.aaclip.scoring import BatchScores, Scoring, aaclip_map, image_scores
from ablate.subjects.aaclip.sizes import parameter_counts
from ablate.subjects.aaclip.stage1 import (
    Stage1Config,
    read_checkpoint,
    stage1_loss,
    to_bytes,
    value_attention_block,
)

TINY = aaclip_arm(
    data=DataConfig(batch_size=2, train_size=8),
    run=RunConfig(steps=3, probe_every=-1, count_flops=False),
    probe_batches=2,
    gain_batches=2,
    device="cpu",
)


# AA-CLIP's prompt ensemble (its dataset/constants.py, PROMPTS) and class names (REAL_NAMES), per data
# set as ablate names the data sets (spec data.dataset): facts, written out so a change fails a test.
AACLIP_NORMAL = ("{}", "a {}", "the {}")
AACLIP_ABNORMAL = ("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage")
AACLIP_TEMPLATES = ("{}.", "a photo of {}.")
AACLIP_REAL_NAMES = {
    "mvtec": {
        "bottle": "dark bottle",
        "cable": "top view of three cables",
        "capsule": "black and orange capsule",
        "carpet": "gray carpet",
        "grid": "metal or plastic mesh",
        "hazelnut": "single brown hazelnut",
        "leather": "brown leather",
        "metal_nut": "metal nut which has four notched edges",
        "pill": "oval white pill with small red speckles and the letters 'FF' engraved",
        "screw": "screw",
        "tile": "speckled tile surface",
        "transistor": "a three-legged transistor placed vertically",
        "toothbrush": "toothbrush head",
        "wood": "wood surface",
        "zipper": "a black zipper",
    },
    "visa": {
        "candle": "candle",
        "pcb3": "infrared sensor pcb module",
        "capsules": "capsules",
        "pipe_fryum": "pipe-shaped fryum",
        "pcb4": "battery charging pcb module",
        "macaroni2": "scattered yellow macaroni",
        "pcb2": "integrated circuits board",
        "chewinggum": "chewing gum",
        "macaroni1": "orange macaroni",
        "cashew": "cashew nut",
        "fryum": "wheel-shaped fryum snack",
        "pcb1": "dual ultrasonic distance sensor pcb module",
    },
    "mpdd": {
        "connector": "metal clamps with black adjustment knobs",
        "tubes": "scattered metal objects",
        "metal_plate": "blue rectangular metal plate with a notch on one side",
        "bracket_white": "white, elongated triangular metal bracket with a smooth, matte finish",
        "bracket_brown": "brown L-shaped metal bracket with smooth, glossy finish and multiple mounting holes "
        "along its arms",
        "bracket_black": "black ornamental metal bracket with spiral design attached to a rectangular frame",
    },
    "btad": {
        "01": "Bright concentric rings in neon yellow and blue tones against a dark blue background, resembling "
        "a stylized wave or energy field radiating outward.",
        "02": "vertical fabric lines in warm, dusty pink and beige tones",
        "03": "oval concentric circular rings in gradient shades of blue and white",
    },
    "brain": {"Brain": "scan"},
    "liver": {"Liver": "scan"},
    "retina": {"Retina": "scan"},
    "colon_clinicdb": {"Colon_clinicDB": "colon endoscopy image"},
    "colon_colondb": {"Colon_colonDB": "colon endoscopy image"},
    "colon_kvasir": {"Kvasir": "colon endoscopy image"},
    "colon_cvc300": {"CVC-300": "colon endoscopy image"},
}


def with_subject(cfg, **kw):  # noqa: ANN001, ANN201 - the AA-CLIP settings of an arm, replaced
    model = kw.pop("model", None)
    sub = replace(cfg.subject, **kw)
    return replace(cfg, subject=replace(sub, model=model) if model is not None else sub)


@pytest.fixture(scope="module")
def tiny() -> ArmSetup:
    return ArmSetup(TINY)


# --- references written from the definitions ---------------------------------------------------
def upsample_align_corners(a: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of [h, w] to [size, size] with the corner pixels' centres aligned."""
    h, w = a.shape
    ys, xs = np.arange(size) * (h - 1) / (size - 1), np.arange(size) * (w - 1) / (size - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bottom = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def reference_map(levels: list[np.ndarray], size: int, ksize: int, sigma: float) -> np.ndarray:
    """AA-CLIP's test map of one image: per level (s1 + 1 - s0) / 2, Gaussian blur (kernel ksize:
    radius ksize // 2, mirror padding), bilinear align_corners upsampling, sum over levels."""
    total = np.zeros((size, size))
    for lg in levels:  # lg [2, h, w]
        d = (lg[1] + 1.0 - lg[0]) / 2.0
        blurred = ndimage.gaussian_filter(d, sigma, mode="mirror", truncate=(ksize // 2) / sigma)
        total += upsample_align_corners(blurred, size)
    return total


def reference_focal_dice(logits: np.ndarray, mask: np.ndarray, smooth: float = 1e-5) -> float:
    """AA-CLIP's per-level segmentation loss of a batch from its definition."""
    b, c, _, _ = logits.shape
    size = mask.shape[-1]
    up = np.stack([[upsample_align_corners(logits[i, k], size) for k in range(c)] for i in range(b)])
    e = np.exp(up - up.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    onehot = np.stack([1 - mask, mask], 1)
    key = np.clip(onehot, smooth / (c - 1), 1 - smooth)
    pt = (key * p).sum(1) + smooth
    focal = float((-((1 - pt) ** 2) * np.log(pt)).mean())

    def dice(pred: np.ndarray, target: np.ndarray) -> float:
        inter = (pred * target).reshape(b, -1).sum(1)
        coef = (2 * inter + 1) / (pred.reshape(b, -1).sum(1) + target.reshape(b, -1).sum(1) + 1)
        return float(1 - coef.sum() / b)

    return focal + dice(p[:, 0], 1 - mask) + dice(p[:, 1], mask)


def reference_block(block: torch.nn.Module, x: torch.Tensor, values_only: bool = False, over: str = "tokens"):
    """One pre-LN CLIP block on [n, L, D] from its weights: x + attention(ln_1 x), then + mlp(ln_2 x).
    ``values_only``: AA-CLIP's surgery attention (q = k = v, its ``Attention`` with DPAM), attending
    over the tokens of each image or, ``over = "batch"``, over the images at each token position (its
    block gets [tokens, batch, width] and its attention takes the first axis as the batch)."""
    attn = block.attn
    n, length, width = x.shape
    heads = attn.num_heads
    d = width // heads
    qkv = block.ln_1(x) @ attn.in_proj_weight.T + attn.in_proj_bias
    q, k, v = (t.reshape(n, length, heads, d).permute(0, 2, 1, 3) for t in qkv.split(width, dim=-1))
    if values_only:
        q = k = v
    if over == "batch":  # attend along the images: swap the image and token axes
        q, k, v = (t.transpose(0, 2) for t in (q, k, v))
    out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
    if over == "batch":
        out = out.transpose(0, 2)
    y = x + attn.out_proj(out.permute(0, 2, 1, 3).reshape(n, length, width))
    return y + block.mlp(block.ln_2(y))


def reference_adapter(x: torch.Tensor, weight: torch.Tensor, w: float = 0.1) -> torch.Tensor:
    """AA-CLIP's residual adapter: a = LeakyReLU(W x) (slope 0.01, no bias), x <- w a |x|/|a| + (1 - w) x."""
    a = F.leaky_relu(x @ weight.T, 0.01)
    return w * a * x.norm(dim=-1, keepdim=True) / a.norm(dim=-1, keepdim=True) + (1 - w) * x


def reference_stream(clip, images, adapters=(), surgery=0, over="batch") -> list[torch.Tensor]:
    """The token stream [n, L, D] after every image block of ``clip`` (and its adapter, when one of
    ``adapters`` follows it), from the weights: patches (conv1), class token, position embedding,
    ln_pre, then the blocks; the last ``surgery`` blocks run AA-CLIP's value-value attention."""
    visual = clip.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    out = []
    for i, block in enumerate(blocks):
        surgical = i >= len(blocks) - surgery
        x = reference_block(block, x, values_only=surgical, over=over if surgical else "tokens")
        if i < len(adapters):
            x = reference_adapter(x, adapters[i])
        out.append(x)
    return out


# --- row 1: the per-level map, blurred, upsampled, summed -------------------------------------------
@pytest.mark.parametrize("domain, ksize, sigma", [("industrial", 7, 1.0), ("medical", 9, 1.5)])
def test_row1_the_map_is_the_blurred_logit_difference_summed_over_levels(domain, ksize, sigma):
    g = torch.Generator().manual_seed(0)
    levels = [torch.randn(3, 2, 12, 12, generator=g) * 8 for _ in range(4)]  # planted 100 x cosines
    got = aaclip_map(levels, (50, 50), domain)
    for i in range(3):
        ref = reference_map([lg[i].double().numpy() for lg in levels], 50, ksize, sigma)
        np.testing.assert_allclose(got[i].double().numpy(), ref, rtol=1e-5, atol=1e-4)
    # not the softmax probability map it replaces: values far outside [0, 1], linear in the logits
    assert float(got.max()) > 1.5 and float(got.min()) < -0.5
    doubled = aaclip_map([2 * lg for lg in levels], (50, 50), domain)
    np.testing.assert_allclose((doubled - 4 * 0.5).numpy(), (2 * (got - 4 * 0.5)).numpy(), atol=1e-3)


# --- row 2: the image score, normalised over the class -----------------------------------------------
def reference_image_scores(pix: dict, mmax: np.ndarray, det: np.ndarray, cls: np.ndarray, medical: bool):
    out = np.zeros(len(det))
    for c in set(cls.tolist()):
        i = cls == c
        lo, hi = pix[c]
        pm = (mmax[i] - lo) / (hi - lo)
        dn = (det[i] - det[i].min()) / (det[i].max() - det[i].min())
        out[i] = pm if medical else 0.5 * pm + 0.5 * dn
    return out


class _Planted(torch.nn.Module):
    """A subject whose scores are planted: each image's map and detection score given."""

    n_arms = 1

    def __init__(self, maps: torch.Tensor, det: torch.Tensor) -> None:
        super().__init__()
        self.maps, self.det, self.at = maps, det, 0

    def anomaly_scores(self, batch, scoring):
        n = len(batch.labels)
        m, d = self.maps[self.at : self.at + n], self.det[self.at : self.at + n]
        self.at += n
        return BatchScores(m, (2 * m - 4) / 4, m.flatten(1).amax(1), d)


def test_row2_the_image_score_is_min_max_normalised_per_class_then_averaged():
    from ablate.subjects.aaclip.data.synthetic import Batch

    g = torch.Generator().manual_seed(1)
    n, size = 24, 8
    cls = torch.tensor([0, 1] * (n // 2))
    labels = torch.tensor([(i // 2) % 2 for i in range(n)])
    # class 0: map maxima on a wide scale that ranks badly, detection on a narrow one that ranks well:
    # the raw mean follows the map, the normalised mean weighs both alike.
    maps = torch.rand(n, size, size, generator=g) * 40.0 - 20.0
    det = 0.5 + 0.01 * labels.float() + 0.001 * torch.rand(n, generator=g)
    masks = torch.zeros(n, size, size)
    masks[labels.bool(), 0, 0] = 1
    batches = [
        Batch(torch.zeros(4, 3, 2, 2), masks[i : i + 4], labels[i : i + 4], cls[i : i + 4]) for i in range(0, n, 4)
    ]
    for domain in ("industrial", "medical"):
        res = evaluate(
            _Planted(maps, det), batches, torch.device("cpu"), ["a", "b"], scoring=Scoring("aaclip", domain)
        )[0]
        pix = {c: (float(maps[cls == c].min()), float(maps[cls == c].max())) for c in (0, 1)}
        ref = reference_image_scores(
            pix, maps.flatten(1).amax(1).numpy(), det.numpy(), cls.numpy(), domain == "medical"
        )
        for c, name in enumerate(["a", "b"]):
            i = (cls == c).numpy()
            want = roc_auc_score(labels.numpy()[i], ref[i])
            assert res.per_class[name]["image_auroc"] == pytest.approx(want, abs=1e-9)
        for c, name in enumerate(["a", "b"]):  # pixels: scikit-learn's, over every pixel of the class
            i = cls == c
            want = roc_auc_score(masks[i].flatten().numpy(), maps[i].flatten().numpy())
            assert res.per_class[name]["pixel_auroc"] == pytest.approx(want, abs=1e-9)
        if domain == "industrial":
            assert res.per_class["a"]["image_auroc"] > 0.8  # the detection score counts as much as the map
            raw = 0.5 * (maps.flatten(1).amax(1) + det)
            assert roc_auc_score(labels.numpy()[cls == 0], raw[cls == 0].numpy()) < 0.8  # unnormalised: it would not
    # image_scores itself, with a class whose scores are all equal (AA-CLIP would divide by zero): 0
    s = image_scores(Scoring(), torch.tensor([1.0, 1.0]), torch.tensor([0.2, 0.2]), torch.tensor([0, 0]),
                     torch.tensor([0.0]), torch.tensor([1.0]))  # fmt: skip
    assert s.tolist() == [0.5, 0.5]


# --- the metrics: scikit-learn's, per class over every pixel, on maps past the old +-24 clamp ----------
def _saturated_set(domain: str, n: int = 24, size: int = 32):
    """Planted AA-CLIP maps of two classes, most pixels' mean logit difference past +-24: medical-like
    (large anomalies, both bands high and wide) or industrial-like (small defects)."""
    from ablate.subjects.aaclip.data.synthetic import Batch

    g = torch.Generator().manual_seed(11)
    cls = torch.tensor([0, 1] * (n // 2))
    masks = torch.zeros(n, size, size)
    for i in range(n):
        if i % 3:
            side = 14 if domain == "medical" else 4
            y, x = torch.randint(0, size - side, (2,), generator=g).tolist()
            masks[i, y : y + side, x : x + side] = 1
    noise = F.avg_pool2d(torch.randn(n, 1, size + 4, size + 4, generator=g), 5, stride=1)[:, 0] * 5
    if domain == "medical":
        diff = 31.0 + 9.0 * noise + 7.0 * masks + 2.0 * cls[:, None, None]
    else:
        diff = 26.0 + 6.0 * noise + 8.0 * masks
    maps = (4 * diff + 4) / 2  # the summed map of 4 levels whose mean logit difference is diff
    det = torch.rand(n, generator=g)
    batches = [Batch(torch.zeros(4, 3, 2, 2), masks[i : i + 4], (masks[i : i + 4].flatten(1).amax(1) > 0).long(),
                     cls[i : i + 4]) for i in range(0, n, 4)]  # fmt: skip
    return maps, det, masks, cls, batches, diff


@pytest.mark.parametrize("domain", ["medical", "industrial"])
def test_pixel_metrics_are_sklearns_on_saturated_maps(domain):
    from sklearn.metrics import average_precision_score

    maps, det, masks, cls, batches, diff = _saturated_set(domain)
    assert float((diff.abs() > 24).float().mean()) > 0.5
    cpu = torch.device("cpu")
    exact = evaluate(_Planted(maps, det), batches, cpu, ["a", "b"], scoring=Scoring("aaclip", domain))[0]
    binned = evaluate(_Planted(maps, det), batches, cpu, ["a", "b"], scoring=Scoring("aaclip", domain),
                      pixel_metrics="binned")[0]  # fmt: skip
    for c, name in enumerate(["a", "b"]):
        y, s = masks[cls == c].flatten().numpy(), maps[cls == c].flatten().numpy()
        auroc, ap = roc_auc_score(y, s), average_precision_score(y, s)
        assert abs(exact.per_class[name]["pixel_auroc"] - auroc) < 1e-6
        assert abs(exact.per_class[name]["pixel_ap"] - ap) < 1e-6
        assert abs(binned.per_class[name]["pixel_auroc"] - auroc) < 1e-3  # bins over the class's own range
        assert abs(binned.per_class[name]["pixel_ap"] - ap) < 1e-3
        # the clamp this replaces: every pixel past +-24 one tie, a difference of whole points
        clamped = roc_auc_score(y, diff[cls == c].clamp(-24, 24).flatten().numpy())
        assert abs(clamped - auroc) > 0.01
    assert (exact.pixel_metrics, exact.bins, binned.pixel_metrics) == ("exact", None, "binned")


# --- the optimisers of both stages ------------------------------------------------------------------
def test_both_stages_train_with_aaclips_adam(monkeypatch):
    """AA-CLIP's train.py: Adam with betas (0.5, 0.999) in both stages, lr 1e-5 on the text adapter
    (Stage 1) and 5e-4 on the image adapter (Stage 2): the spec's defaults, seen where the optimisers
    are made."""
    made = []
    real = torch.optim.Adam

    class Recording(real):
        def __init__(self, params, **kw):
            params = list(params)
            made.append((sum(p.numel() for p in params), kw))
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", Recording)
    arm = parse_spec('name = "s"').arm("no-branch", None, 0)
    run = replace(arm.run, steps=1, probe_every=-1, count_flops=False)
    stage1 = replace(arm.subject.stage1, steps=1, batch_size=2)
    cfg = with_subject(replace(TINY, run=run, fix="no-branch"), stage1=stage1)
    train_arm(cfg)
    counts = parameter_counts(cfg.subject.model)
    (n1, stage1_kw), (n2, stage2_kw) = made
    assert n1 == counts["text_adapter"] and (stage1_kw["lr"], stage1_kw["betas"]) == (1e-5, (0.5, 0.999))
    assert n2 == counts["all"] and (stage2_kw["lr"], stage2_kw["betas"]) == (5e-4, (0.5, 0.999))


# --- row 3: the feature levels, the segmentation logits and the detection token ---------------------
def test_row3_levels_logits_and_the_detection_token_are_aaclips_from_the_weights():
    """AA-CLIP's Stage 2 forward, rebuilt from the weights: adapters after blocks 0..k-1, the levels'
    patch tokens through ln_post and their projection, 100 x cosine with [t_normal, t_abnormal]; the
    detection token the mean of the normalised projected last-level tokens (not normalised again)."""
    setup = ArmSetup(replace(TINY, fix="no-branch"))  # AA-CLIP itself: no branch
    model = setup.model
    assert model.branch is None
    batch = setup.probe_batches[0]
    with torch.no_grad():
        out = model(batch.images, batch.class_idx)
        adapters = [a.fc.weight for a in model.adapters]  # AA-CLIP's image adapter: after blocks 0, 1
        stream = reference_stream(model.clip, batch.images, adapters)
        text = model.text_embeds[batch.class_idx]  # [n, E, 2] (row 11 checks these)
        levels = [stream[lv - 1] for lv in (2, 4, 6, 8)]  # the tiny backbone's levels (AA-CLIP: 6/12/18/24)
        for k, (lvl, proj) in enumerate(zip(levels, model.seg_proj)):
            f = F.normalize(model.clip.visual.ln_post(lvl[:, 1:]) @ proj.weight.T, dim=-1)
            want = (100 * f @ text).transpose(1, 2).reshape(out.seg_logits[k].shape)
            assert torch.allclose(out.seg_logits[k], want, atol=1e-4), k
        tokens = model.clip.visual.ln_post(levels[-1][:, 1:])
        det = F.normalize(tokens @ model.det_proj.weight.T, dim=-1).mean(1)
        want = torch.stack([(det * text[:, :, 0]).sum(-1), (det * text[:, :, 1]).sum(-1)], dim=-1)
    assert torch.allclose(out.det_cosine, want, atol=1e-5)
    assert float(torch.linalg.vector_norm(det, dim=-1).max()) < 1.0  # the mean is not normalised again


# --- row 4: detection loss on raw cosines ------------------------------------------------------------
def test_row4_the_detection_loss_is_cross_entropy_on_the_raw_cosines(tiny):
    batch = tiny.probe_batches[0]
    with torch.no_grad():
        out = tiny.model(batch.images, batch.class_idx)
    assert torch.equal(out.det_logits, out.det_cosine)  # AA-CLIP: no x100
    cos = out.det_cosine.double()
    want = np.mean([-math.log(math.exp(c[y]) / (math.exp(c[0]) + math.exp(c[1])))
                    for c, y in zip(cos.tolist(), batch.labels.tolist())])  # fmt: skip
    got = stage2_loss([], out.det_logits, batch.masks, batch.labels)
    assert float(got) == pytest.approx(want, rel=1e-6)
    scaled = ArmSetup(with_subject(TINY, model=replace(TINY.subject.model, detection_logit_scale=100.0)), like=tiny)
    with torch.no_grad():
        o100 = scaled.model(batch.images, batch.class_idx)
    assert torch.allclose(o100.det_logits, 100.0 * o100.det_cosine)


# --- rows 5 and 6: segmentation loss (upsample logits, then softmax; focal smoothing 1e-5) ---------------
def test_rows5_6_the_segmentation_loss_upsamples_logits_then_softmax_with_focal_smoothing():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 2, 6, 6, generator=g) * 30  # 100 x cosines: near-saturated probabilities
    masks = torch.zeros(3, 40, 40)
    masks[0, 5:20, 8:30] = 1
    masks[2, 30:, :] = 1
    got = float(segmentation_loss(logits, masks)[0])
    want = reference_focal_dice(logits.double().numpy(), masks.double().numpy())
    assert got == pytest.approx(want, rel=1e-5)
    # the order matters: softmax at the patch grid, then align_corners=False upsampling (the old way)
    old = F.interpolate(torch.softmax(logits, 1), size=(40, 40), mode="bilinear", align_corners=False)
    new = torch.softmax(F.interpolate(logits, size=(40, 40), mode="bilinear", align_corners=True), 1)
    assert float((old - new).abs().max()) > 0.1
    # smoothing, not a clamp: a confidently wrong pixel costs -(1 - 2e-5)^2 log(2e-5) at most
    sure = torch.tensor([[[[-50.0]], [[50.0]]]])  # abnormal with certainty, the mask says normal
    focal = float(segmentation_loss(sure, torch.zeros(1, 1, 1))[0]) - 2 * (1 - 1 / 2)
    assert focal == pytest.approx(-((1 - 2e-5) ** 2) * math.log(2e-5), rel=1e-4)


# --- row 7: bias-free Xavier projections and the parameter counts ---------------------------------------
def test_row7_projections_are_bias_free_xavier_and_the_counts_are_aaclips(tiny):
    counts = parameter_counts(AAClipConfig(backbone="vit-l-14-336@518", fix="no-branch"))
    assert counts == {"layers": 6 * 1024**2, "proj": 5 * 1024 * 768, "all": 10_223_616, "text_adapter": 2_359_296}
    model = tiny.model
    for lin in [*model.seg_proj, model.det_proj]:
        assert lin.bias is None
        fan_out, fan_in = lin.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))  # Xavier uniform
        assert float(lin.weight.detach().abs().max()) <= bound
        assert float(lin.weight.detach().std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    groups = model.adapter_groups()
    tiny_counts = parameter_counts(tiny.cfg.subject.model)
    assert sum(p.numel() for p in groups["layers"]) == tiny_counts["layers"]
    assert sum(p.numel() for p in groups["proj"]) == tiny_counts["proj"]
    assert sum(p.numel() for p in new_text_adapter(tiny.cfg.subject.model).parameters()) == tiny_counts["text_adapter"]


# --- row 8: the activation ----------------------------------------------------------------------------
def test_row8_the_backbone_runs_gelu_unless_quick_gelu_is_asked_for(tiny):
    assert any(isinstance(m, torch.nn.GELU) for m in tiny.model.clip.modules())
    spec = parse_spec('name = "s"')
    assert spec.arm("none", None, 0).subject.model.quick_gelu is False
    quick = parse_spec('name = "s"\n[model]\nquick_gelu = true\n').arm("none", None, 0)
    setup = ArmSetup(with_subject(TINY, model=quick.subject.model))
    assert any(type(m).__name__ == "QuickGELU" for m in setup.model.clip.modules())


# --- row 9: Stage 1, the text adapter -------------------------------------------------------------------
def test_row9_the_text_adapter_forward_is_aaclips(tiny):
    import open_clip

    clip = tiny.model.clip
    torch.manual_seed(4)
    adapter = new_text_adapter(tiny.cfg.subject.model)
    tokens = open_clip.tokenize(["a photo of a damaged carpet.", "wood."])
    with torch.no_grad():
        got = adapter.encode(clip, tokens)
        x = clip.token_embedding(tokens) + clip.positional_embedding
        for i, block in enumerate(clip.transformer.resblocks):
            x = block(x, attn_mask=clip.attn_mask)
            if i < 3:
                a = F.leaky_relu(x @ adapter.adapters[i].fc.weight.T, 0.01)
                a = a * x.norm(dim=-1, keepdim=True) / a.norm(dim=-1, keepdim=True)
                x = 0.1 * a + 0.9 * x
        eot = clip.ln_final(x)[torch.arange(2), tokens.argmax(-1)]
        want = F.leaky_relu(eot @ adapter.proj[0].weight.T, 0.01)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("over", ["batch", "tokens"])
def test_row9_value_attention_attends_as_aaclips_surgery(tiny, over):
    block = tiny.model.clip.visual.transformer.resblocks[-1]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 5, block.ln_1.normalized_shape[0], generator=g)
    with torch.no_grad():
        got = value_attention_block(block, x, over)
        want = reference_block(block, x, values_only=True, over=over)
        plain = reference_block(block, x)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # not the block's own attention


def test_row9_the_stage1_loss_is_the_last_levels_segmentation_plus_orthogonality():
    g = torch.Generator().manual_seed(6)
    feats = F.normalize(torch.randn(2, 16, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(2, 8, 2, generator=g), dim=1)
    masks = torch.zeros(2, 12, 12)
    masks[1, 2:6, 3:9] = 1
    loss, seg, orth = stage1_loss(feats, text, masks, 4, 0.1)
    logits = (100 * feats @ text).transpose(1, 2).reshape(2, 2, 4, 4)
    want_seg = reference_focal_dice(logits.double().numpy(), masks.double().numpy())
    want_orth = float(((text[:, :, 0] * text[:, :, 1]).sum(1).mean()) ** 2)
    assert float(seg) == pytest.approx(want_seg, rel=1e-5)
    assert float(orth) == pytest.approx(want_orth, rel=1e-6)
    assert float(loss) == pytest.approx(want_seg + 0.1 * want_orth, rel=1e-5)


def test_row9_stage1_trains_the_text_side_every_arm_of_the_seed_uses():
    cfg = with_subject(TINY, stage1=Stage1Config(epochs=2, batch_size=4))
    setup = ArmSetup(cfg)
    s1 = setup.stage1
    assert s1.steps == 2 * 2 and len(s1.metrics["loss"]) == 4  # 2 epochs of ceil(8 / 4) batches
    assert all(math.isfinite(v) for v in s1.metrics["loss"])
    fresh = ArmSetup(TINY, like=setup)  # Stage 1 off: the frozen CLIP's text side
    assert not torch.allclose(setup.model.text_embeds, fresh.model.text_embeds)
    again = ArmSetup(with_subject(cfg, stage1=None), like=setup, text_adapter=s1.state)
    assert torch.equal(again.model.text_embeds, setup.model.text_embeds)
    # trained: the weights moved from their initialisation
    torch.manual_seed(cfg.seed + 3_000_017)
    init = new_text_adapter(cfg.subject.model).state_dict()
    assert any(not torch.equal(init[k], s1.state[k]) for k in init)


def test_row9_packed_arms_keep_each_seeds_own_text_side():
    cfgs = [replace(TINY, seed=s, fix="none") for s in (0, 1)]
    weights = []
    for c in cfgs:
        torch.manual_seed(100 + c.seed)
        weights.append(new_text_adapter(c.subject.model).state_dict())
    pack = PackSetup(cfgs, text_adapters=weights)
    packed = train_pack(cfgs, built=pack)
    for c, w, p in zip(cfgs, weights, packed):
        alone = train_arm(c, built=ArmSetup(c, like=pack.arms[0], text_adapter=w))
        assert p.metrics["loss"] == pytest.approx(alone.metrics["loss"], rel=1e-4)
    assert not torch.allclose(pack.model.text_embeds[0], pack.model.text_embeds[1])


def test_row9_checkpoints_load_in_ablates_and_aaclips_layout_and_refuse_wrong_shapes(tmp_path, tiny):
    torch.manual_seed(7)
    adapter = new_text_adapter(tiny.cfg.subject.model)
    state = adapter.state_dict()
    assert set(read_checkpoint(to_bytes(state), adapter)) == set(state)
    # AA-CLIP saves {"text_adapter": ModuleList state, ...}: i.fc.0.weight, the projection last
    aaclip = {f"{i}.fc.0.weight": state[f"adapters.{i}.fc.weight"] for i in range(3)}
    aaclip["3.fc.0.weight"] = state["proj.0.weight"]
    path = tmp_path / "text_adapter.pth"
    torch.save({"epoch": 5, "text_adapter": aaclip, "text_optimizer": {}}, path)
    loaded = load_text_adapter(tiny.cfg.subject.model, str(path))
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    wrong = {k: torch.zeros(v.shape[0] // 2, v.shape[1]) for k, v in state.items()}
    torch.save({"text_adapter": wrong}, tmp_path / "wrong.pt")
    with pytest.raises(AblateInputError) as info:
        load_text_adapter(tiny.cfg.subject.model, str(tmp_path / "wrong.pt"))
    assert info.value.field == "model.text_adapter" and "shape" in info.value.message
    with pytest.raises(AblateInputError) as info:
        load_text_adapter(tiny.cfg.subject.model, str(tmp_path / "none.pt"))
    assert info.value.field == "model.text_adapter"


# --- row 10: augmentation and epochs ---------------------------------------------------------------------
def test_row10_geometric_augmentation_moves_image_and_mask_together():
    mask = torch.zeros(32, 32)
    mask[6:14, 9:25] = 1
    img = torch.randn(3, 32, 32)
    img[0] = 5.0 * mask  # a channel planted from the mask (in normalised space, where fill is 0)
    changed = 0
    for seed in range(40):
        out, m = aug.geometric(img, mask, torch.Generator().manual_seed(seed))
        assert out.shape == img.shape and m.shape == mask.shape
        assert torch.equal(out[0], 5.0 * m)  # nearest sampling: exactly where the mask went
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        changed += not torch.equal(m, mask)
    assert changed >= 30  # 1 - 0.5^4 of draws move something


def test_row10_each_transform_follows_its_definition(monkeypatch):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 20, 20, generator=g)
    mask = (torch.rand(20, 20, generator=g) > 0.7).float()

    def forced(coins, values):
        coins, values = iter(coins), iter(values)
        monkeypatch.setattr(aug, "_coin", lambda _g, _p: next(coins))
        monkeypatch.setattr(aug, "_uniform", lambda _g, lo, hi: next(values))

    # translation by whole pixels (tx = round(u), |u| <= 0.15 side), zero fill: torchvision's affine
    # transform (what AA-CLIP's RandomAffine runs) and the reference shift agree exactly
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    forced([False, True, False, False], [2.6, -3.2])
    out, m = aug.geometric(img, mask, g)
    both = torch.cat([img, mask[None]])
    ref = torch.zeros(4, 20, 20)
    ref[:, 0:17, 3:20] = both[:, 3:20, 0:17]  # right 3, up 3
    assert torch.equal(torch.cat([out, m[None]]), ref)
    for tx, ty in ((3, -3), (-2, 5), (0, 0), (-4, -1)):
        tv = TF.affine(both, 0.0, [tx, ty], 1.0, [0.0, 0.0], interpolation=InterpolationMode.NEAREST, fill=0)
        assert torch.equal(aug.shift(both, tx, ty), tv)
    # both flips
    forced([False, False, True, True], [])
    out, m = aug.geometric(img, mask, g)
    assert torch.equal(out, img.flip(-1).flip(-2)) and torch.equal(m, mask.flip(-1).flip(-2))
    # rotation by +30 degrees, nearest neighbour, counter-clockwise about the centre, zero fill
    forced([True, False, False, False], [30.0])
    _, m = aug.geometric(img, mask, g)
    ys, xs = np.mgrid[0:20, 0:20]
    c, t = 9.5, math.radians(30)
    sx = np.cos(t) * (xs - c) - np.sin(t) * (ys - c) + c
    sy = np.sin(t) * (xs - c) + np.cos(t) * (ys - c) + c
    sxi, syi = np.floor(sx + 0.5).astype(int), np.floor(sy + 0.5).astype(int)
    inside = (sxi >= 0) & (sxi < 20) & (syi >= 0) & (syi < 20)
    ref_m = np.where(inside, mask.numpy()[syi.clip(0, 19), sxi.clip(0, 19)], 0)
    assert (m.numpy() == ref_m).mean() > 0.97  # rounding of exact half-pixel positions aside
    # colour jitter: brightness x f, contrast towards the grey mean, saturation towards grey
    forced([True, True, True], [1.3, 0.6, 1.4])
    out = aug.colour_jitter(img, g)
    grey = lambda x: 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]  # noqa: E731
    x = (img * 1.3).clamp(0, 1)
    x = (0.6 * x + 0.4 * grey(x).mean()).clamp(0, 1)
    x = (1.4 * x + (1 - 1.4) * grey(x)).clamp(0, 1)
    assert torch.allclose(out, x, atol=1e-6)


def test_row10_training_is_in_epochs_reshuffled_and_held_out_images_are_never_augmented(tiny):
    n, bs = 10, 4  # 3 batches an epoch, the last one short
    epoch0 = [batch_indices(7, n, bs, s) for s in range(3)]
    epoch1 = [batch_indices(7, n, bs, s) for s in range(3, 6)]
    assert [len(b) for b in epoch0] == [4, 4, 2]
    assert sorted(sum(epoch0, [])) == list(range(n)) == sorted(sum(epoch1, []))
    assert epoch0 != epoch1
    data = tiny.dataset
    assert data.augment == "aaclip"
    b = tiny.train_batch(0)
    idx = batch_indices(0, 8, 2, 0)
    assert not torch.equal(b.images, data.batch(idx).images)  # augmented ...
    assert torch.equal(b.images, data.batch(idx, 0).images)  # ... reproducibly
    first = tiny.probe_batches[0]
    ref = SyntheticAnomalyDataset(64, 0, augment="aaclip")
    start = 1_000_000
    assert torch.equal(first.images, ref.batch(list(range(start, start + 2))).images)  # held out: plain


# --- row 11: class names ---------------------------------------------------------------------------------
def test_row11_every_class_name_is_aaclips_and_chosen_by_the_data_sets_name():
    from ablate.subjects.aaclip.data.folders import Source
    from ablate.subjects.aaclip.data.names import datasets, names_table
    from ablate.subjects.aaclip.data.sources import FolderConfig

    assert set(datasets()) == set(AACLIP_REAL_NAMES)
    for dataset, names in AACLIP_REAL_NAMES.items():
        assert aaclip_names(dataset) == names, dataset
    assert sum(len(v) for v in AACLIP_REAL_NAMES.values()) == 43  # 15 + 12 MVTec AD / VisA, 16 others
    assert aaclip_names("manifest") == aaclip_names(None) == {}
    # chosen by the data set's name; MVTec AD and VisA also by their own layouts
    assert names_table("mvtec", None) == "mvtec" and names_table("visa", None) == "visa"
    assert names_table("mvtec", "mpdd") == "mpdd" and names_table("manifest", "brain") == "brain"
    assert names_table("manifest", None) is None
    f = FolderConfig(train=Source("visa", "/x"), real_names=(("pcb1", "my board"),))
    assert f.prompt_name("pcb1", "visa") == "my board"  # the spec's real_names win
    assert f.prompt_name("pcb2", "visa") == "integrated circuits board"
    assert f.prompt_name("connector", "mpdd") == "metal clamps with black adjustment knobs"
    assert (
        f.prompt_name("Brain", "brain") == "scan"
        and f.prompt_name("CVC-300", "colon_cvc300") == "colon endoscopy image"
    )
    assert f.prompt_name("pcb2", None) == "pcb2" and f.prompt_name("metal_nut", None) == "metal nut"
    assert f.prompt_name("connector", "mvtec") == "connector"  # another data set's table does not apply


def test_row11_prompt_states_and_templates_are_aaclips():
    from ablate.subjects.aaclip.prompts import class_prompts

    normal, abnormal = class_prompts("dark bottle")
    # AA-CLIP's order: each state, then each template ("{}." first)
    assert normal == [t.format(s.format("dark bottle")) for s in AACLIP_NORMAL for t in AACLIP_TEMPLATES]
    assert abnormal == [t.format(s.format("dark bottle")) for s in AACLIP_ABNORMAL for t in AACLIP_TEMPLATES]
    assert normal[:3] == ["dark bottle.", "a photo of dark bottle.", "a dark bottle."]
    assert abnormal[-1] == "a photo of a dark bottle with damage."


# --- row 12: masks resized NEAREST ------------------------------------------------------------------------
def test_row12_masks_are_resized_nearest_then_binarised(tmp_path):
    from PIL import Image

    g = np.random.default_rng(0)
    src = (g.random((37, 53)) > 0.8).astype(np.uint8) * 255
    src[10, :] = 1  # a faint one-pixel line: non-zero is a defect
    path = tmp_path / "m.png"
    Image.fromarray(src).save(path)
    got = load_mask(str(path), 24).numpy()
    # nearest neighbour: output pixel i reads input pixel floor((i + 0.5) * in / out)
    rows = np.floor((np.arange(24) + 0.5) * 37 / 24).astype(int)
    cols = np.floor((np.arange(24) + 0.5) * 53 / 24).astype(int)
    want = (src[rows][:, cols] != 0).astype(np.float32)
    assert np.array_equal(got, want)


# --- row 13: precision ---------------------------------------------------------------------------------------
def test_row13_precision_is_an_option_and_bf16_quantises():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    cpu = torch.device("cpu")
    with autocast(cpu, "fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(AblateInputError) as info:
        with autocast(cpu, "fp8"):
            pass
    assert info.value.field == "training.precision"
    spec = parse_spec('name = "s"')
    assert spec.arm("none", None, 0).run.precision == "fp32"  # AA-CLIP's own
    assert parse_spec('name = "s"\n[training]\nprecision = "bf16"\n').arm("none", None, 0).run.precision == "bf16"


# --- the spec's defaults are AA-CLIP's ------------------------------------------------------------------------
def test_a_specs_defaults_are_aaclips_and_each_alternative_is_a_key():
    arm = parse_spec('name = "s"').arm("none", None, 0).subject
    s1 = arm.stage1  # AA-CLIP's train.py: 5 text epochs of batch 16, lr 1e-5, orthogonality weight 0.1
    assert (s1.epochs, s1.steps, s1.batch_size, s1.lr, s1.orthogonal_weight) == (5, 0, 16, 1e-5, 0.1)
    assert s1.surgery_attention == "batch" and arm.model.adapter_weight == 0.1
    assert (arm.model.text_adapter_layers, arm.model.text_adapter_weight) == (3, 0.1)
    assert arm.data.batch_size == DataConfig().batch_size == 2  # AA-CLIP's --image_batch_size
    assert (arm.eval.pixel_metrics, arm.eval.every) == ("exact", 0)  # scikit-learn's metrics, at the end
    assert (arm.data.augment, arm.eval.scoring, arm.eval.domain) == ("aaclip", "aaclip", "industrial")
    assert (arm.model.quick_gelu, arm.model.detection_logit_scale) == (False, 1.0)
    assert parse_spec('name = "s"').arm("none", None, 0).run.lr == 5e-4
    alt = (
        parse_spec(
            'name = "s"\n[model]\ndetection_logit_scale = 100.0\n[data]\naugment = false\n'
            '[eval]\nscoring = "softmax"\ndomain = "medical"\n[stage1]\nenabled = false\n'
        )
        .arm("none", None, 0)
        .subject
    )
    assert alt.stage1 is None and alt.data.augment == "none" and alt.model.detection_logit_scale == 100.0
    assert (alt.eval.scoring, alt.eval.domain) == ("softmax", "medical")
    assert parse_spec('name = "s"\n[data]\naugment = true\n').arm("none", None, 0).subject.data.augment == "flips"
    given = parse_spec('name = "s"\n[model]\ntext_adapter = "/ckpt/text_adapter.pth"\n').arm("none", None, 0).subject
    assert given.stage1 is None and given.model.text_adapter == "/ckpt/text_adapter.pth"


def test_row9_stage1_image_features_are_normalised_projected_tokens_plus_the_image_embedding(tiny):
    from ablate.subjects.aaclip.stage1 import surgery_features

    clip = tiny.model.clip
    visual = clip.visual
    images = tiny.probe_batches[0].images
    levels, k = (2, 4, 6, 8), 3
    with torch.no_grad():
        got = surgery_features(clip, images, levels, k, "batch")
        # the unmodified CLIP's image embedding: the class token after the last block, ln_post, proj
        plain = reference_stream(clip, images)[-1]
        image = F.normalize(visual.ln_post(plain[:, 0]) @ visual.proj, dim=-1)
        surgery = reference_stream(clip, images, surgery=k, over="batch")
        want = [F.normalize(visual.ln_post(surgery[lv - 1][:, 1:]) @ visual.proj, dim=-1) + image[:, None]
                for lv in levels]  # fmt: skip
    assert len(got) == 4 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want))
    assert not torch.allclose(surgery[-1], plain, atol=1e-3)  # the surgery blocks changed the stream


def test_row11_class_embeddings_are_the_normalised_mean_of_normalised_prompt_embeddings(tiny):
    import open_clip

    clip = tiny.model.clip
    name = "carpet"  # the synthetic data's class: its own name (no AA-CLIP table for it)
    with torch.no_grad():
        states = []
        for state in (AACLIP_NORMAL, AACLIP_ABNORMAL):
            prompts = [t.format(s.format(name)) for s in state for t in AACLIP_TEMPLATES]
            e = clip.encode_text(open_clip.tokenize(prompts))
            mean = (e / e.norm(dim=-1, keepdim=True)).mean(0)
            states.append(mean / mean.norm())
    want = torch.stack(states, dim=-1)
    assert torch.allclose(tiny.model.text_embeds[tiny.model.classes.index(name)], want, atol=1e-6)
