"""What bf16 autocast changes in AA-CLIP's scores: a CPU emulation, as JSON.

    python bench/bf16_scores.py                  # planted cosines + the tiny model, CPU
    python bench/bf16_scores.py --images 64 --out bench/results/bf16_scores_cpu.json

Two parts, both on the CPU (no GPU is needed; on a GPU the same casts happen in the tensor cores):

1. Planted scores. Per image, four levels of patch-text cosines on a 37 x 37 grid (ViT-L-14-336 at
   518 px) are drawn around CLIP's typical values (normal text ~0.22, abnormal ~0.20, noise sd 0.01),
   with a defect region whose abnormal cosine is raised by ``delta``. Under bf16 autocast the
   similarity product returns bfloat16, so the segmentation logits ``100 x cos`` (~20) land on a
   grid of 0.125; the emulation rounds the cosines to bfloat16 and multiplies in bfloat16, as the
   autocast model does, and scores both versions with AA-CLIP's map and image score
   (ablate/subjects/aaclip/scoring.py). Pixel and image AUROC / AP are exact (scikit-learn).
2. The tiny model end to end: the same synthetic test set evaluated under ``precision = "fp32"`` and
   ``"bf16"`` (CPU autocast), untrained (random-init backbone), binned metrics as a study stores them.

Reports the metric differences bf16 - fp32; part 1 also the largest logit error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ablate.subjects.aaclip.scoring import Scoring, aaclip_map, image_scores  # noqa: E402

GRID, LEVELS, SIZE = 37, 4, 148  # the ViT-L-14-336 grid at 518 px; maps scored at 4x the grid


def planted(n: int, delta: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cosines [L, n, 2, grid, grid], detection cosines [n, 2], masks [n, SIZE, SIZE], labels [n])."""
    labels = (torch.arange(n) % 2).long()
    masks = torch.zeros(n, GRID, GRID)
    for i in range(n):
        if labels[i]:
            y, x = torch.randint(0, GRID - 8, (2,), generator=g).tolist()
            h, w = torch.randint(3, 9, (2,), generator=g).tolist()
            masks[i, y : y + h, x : x + w] = 1
    cos = torch.empty(LEVELS, n, 2, GRID, GRID)
    cos[:, :, 0] = 0.22 + 0.01 * torch.randn(LEVELS, n, GRID, GRID, generator=g)
    cos[:, :, 1] = 0.20 + 0.01 * torch.randn(LEVELS, n, GRID, GRID, generator=g) + delta * masks
    det = torch.stack([0.22 + 0.01 * torch.randn(n, generator=g), 0.20 + 0.01 * torch.randn(n, generator=g)], 1)
    det[:, 1] += 0.5 * delta * labels
    big = F.interpolate(masks.unsqueeze(1), size=(SIZE, SIZE), mode="nearest")[:, 0]
    return cos, det, big, labels


def metrics(maps: torch.Tensor, det_cos: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    groups = torch.zeros(len(labels), dtype=torch.long)
    detection = (det_cos[:, 1] + 1) / 2
    img = image_scores(
        Scoring(), maps.flatten(1).amax(1), detection, groups, maps.min().reshape(1), maps.max().reshape(1)
    )
    pix, lab = maps.flatten().double().numpy(), masks.flatten().numpy()
    return {
        "image_auroc": float(roc_auc_score(labels.numpy(), img.numpy())),
        "image_ap": float(average_precision_score(labels.numpy(), img.numpy())),
        "pixel_auroc": float(roc_auc_score(lab, pix)),
        "pixel_ap": float(average_precision_score(lab, pix)),
    }


def planted_part(images: int, deltas: list[float], seed: int) -> list[dict]:
    out = []
    for delta in deltas:
        g = torch.Generator().manual_seed(seed)
        cos, det, masks, labels = planted(images, delta, g)
        fp32 = [100.0 * c for c in cos]
        bf16 = [(c.bfloat16() * 100.0).float() for c in cos]  # the autocast product and its x100, in bf16
        det_bf16 = det.bfloat16().float()
        m32 = metrics(aaclip_map(fp32, (SIZE, SIZE), "industrial"), det, masks, labels)
        m16 = metrics(aaclip_map(bf16, (SIZE, SIZE), "industrial"), det_bf16, masks, labels)
        err = max(float((a - b).abs().max()) for a, b in zip(fp32, bf16))
        out.append(
            {
                "delta": delta,
                "fp32": m32,
                "bf16": m16,
                "bf16_minus_fp32": {k: m16[k] - m32[k] for k in m32},
                "max_logit_error": err,
            }
        )
    return out


def model_part(batches: int) -> dict:
    from dataclasses import replace

    from ablate.engine.loop import RunConfig
    from ablate.subjects.aaclip.arm import ArmSetup, DataConfig, EvalConfig, aaclip_arm
    from ablate.subjects.aaclip.evaluate import evaluate

    cfg = aaclip_arm(
        data=DataConfig(batch_size=8),
        run=RunConfig(steps=1, probe_every=-1),
        probe_batches=2,
        gain_batches=2,
        device="cpu",
        eval=EvalConfig(enabled=True, batches=batches),
    )
    setup = ArmSetup(cfg)
    res = {}
    for precision in ("fp32", "bf16"):
        s = ArmSetup(replace(cfg, run=replace(cfg.run, precision=precision)), like=setup)
        ev = evaluate(s.model, s.test_batches(), s.device, s.model.classes, precision=precision)[0]
        res[precision] = ev.metrics
    res["bf16_minus_fp32"] = {k: res["bf16"][k] - res["fp32"][k] for k in res["fp32"]}
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--deltas", default="0.005,0.01,0.02,0.04")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-batches", type=int, default=12)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    doc = {
        "what": "bf16 autocast against fp32 on AA-CLIP's scores, emulated on the CPU",
        "device": "cpu (emulation)",
        "torch": torch.__version__,
        "loadavg": os.getloadavg()[0],
        "planted": planted_part(args.images, [float(d) for d in args.deltas.split(",")], args.seed),
        "tiny_model": model_part(args.model_batches),
    }
    doc["wall_s"] = time.perf_counter() - t0
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return doc


if __name__ == "__main__":
    main()
