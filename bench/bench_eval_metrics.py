"""The evaluation's pixel metrics at VisA's test size, exact against binned: time, peak memory, disk.

    PYTHONPATH=. python bench/bench_eval_metrics.py --out bench/results/eval_metrics_cpu.json
    PYTHONPATH=. python bench/bench_eval_metrics.py --images 48 --size 64   # a quick look

Each way of counting runs ``evaluate`` (ablate/subjects/aaclip/evaluate.py) in its own process, so
its peak resident memory is its own, over the same planted AA-CLIP-like maps: per image a 37 x 37
random field (the ViT-L-14 patch grid at 518 px), upsampled bilinearly to the mask size, on the
scale of AA-CLIP's summed map with most pixels past the old +-24 clamp, raised where the defect is.
The test set has VisA's classes and images (AA-CLIP's dataset/metadata/VisA/full-shot.jsonl: 2162
images, 1200 anomalous, 12 classes) at 518 px, 580 M pixels, in batches of 32 (AA-CLIP's test
batch). No model runs: the numbers are the metrics' own cost beside making the maps
(``generate_s``, the same pass without metrics).

The JSON gives per mode ``eval_s``, ``generate_s``, ``metrics_s`` (their difference),
``peak_rss_mb`` (the process's, torch loaded, with the allocator setting of ablate's training
processes, which keeps up to 256 MiB freed for reuse), ``base_rss_mb`` (after one batch, before the pass),
``spilled_mb`` (exact: the temporary files), the four metrics per class, and ``binned_minus_exact``:
the largest difference over classes of each pixel metric.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# VisA's test split per class: (images, anomalous images), as AA-CLIP's metadata lists it.
VISA = {
    "candle": (200, 100), "capsules": (160, 100), "cashew": (150, 100), "chewinggum": (150, 100),
    "fryum": (150, 100), "macaroni1": (200, 100), "macaroni2": (200, 100), "pcb1": (200, 100),
    "pcb2": (200, 100), "pcb3": (201, 100), "pcb4": (201, 100), "pipe_fryum": (150, 100),
}  # fmt: skip
GRID = 37  # the patch grid of ViT-L-14 at 518 px
LEVELS = 4


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _plan(images: int) -> list[tuple[int, int]]:
    """(class, label) per image: VisA's classes and anomalous shares, scaled to ``images``."""
    total = sum(n for n, _ in VISA.values())
    out = []
    for c, (n, bad) in enumerate(VISA.values()):
        k = max(2, round(n * images / total))
        b = max(1, min(k - 1, round(bad * k / n)))
        out += [(c, 1)] * b + [(c, 0)] * (k - b)
    return out


def _batches(images: int, size: int, batch: int):  # noqa: ANN202
    import torch

    from ablate.subjects.aaclip.data.synthetic import Batch

    plan = _plan(images)
    for start in range(0, len(plan), batch):
        part = plan[start : start + batch]
        g = torch.Generator().manual_seed(start)
        masks = torch.zeros(len(part), size, size)
        for i, (_, label) in enumerate(part):
            if label:  # a defect of 0.5-4 % of the image, as VisA's are small
                side = int(size * (0.07 + 0.13 * float(torch.rand(1, generator=g))))
                y, x = torch.randint(0, size - side, (2,), generator=g).tolist()
                masks[i, y : y + side, x : x + side] = 1
        labels = torch.tensor([label for _, label in part])
        cls = torch.tensor([c for c, _ in part])
        yield Batch(torch.zeros(len(part), 3, 2, 2), masks, labels, cls), start


class _PlantedMaps:
    """A stand-in subject: AA-CLIP-like summed maps from a seeded field and the mask."""

    n_arms = 1
    training = False

    def __init__(self) -> None:
        self.seeds: list[int] = []

    def train(self, mode: bool = True) -> None:
        pass

    def anomaly_scores(self, batch: Any, scoring: Any = None) -> Any:
        import torch
        import torch.nn.functional as F

        from ablate.subjects.aaclip.scoring import BatchScores

        g = torch.Generator().manual_seed(self.seeds.pop(0))
        n, size = batch.masks.shape[0], batch.masks.shape[-1]
        field = torch.randn(n, 1, GRID, GRID, generator=g)
        up = F.interpolate(field, size=(size, size), mode="bilinear", align_corners=True)[:, 0]
        diff = 26.0 + 6.0 * up + 8.0 * batch.masks  # the mean logit difference over levels
        maps = (LEVELS * diff + LEVELS) / 2  # the summed map of 4 levels
        det = torch.rand(n, generator=g)
        return BatchScores(maps, (2.0 * maps.double() - LEVELS) / LEVELS, maps.flatten(1).amax(1), det)


def run_mode(mode: str, images: int, size: int, batch: int) -> dict[str, Any]:
    """One evaluation pass counted ``mode`` (exact | binned | none: the maps alone)."""
    import torch

    from ablate.allocator import keep_freed_memory
    from ablate.eval import exact as exact_module
    from ablate.subjects.aaclip.evaluate import evaluate

    torch.set_num_threads(1)
    keep_freed_memory()  # as the training process that evaluates runs (ablate/allocator.py)
    subject = _PlantedMaps()

    def stream():  # noqa: ANN202
        for b, seed in _batches(images, size, batch):
            subject.seeds.append(seed)
            yield b

    first, seed = next(_batches(images, min(size, 64), batch))
    subject.seeds.append(seed)
    subject.anomaly_scores(first)  # warm: first-touch allocations, lazy imports
    base = _rss_mb()
    spilled = []
    real = exact_module.SpilledCurves.compute

    def compute(self):  # noqa: ANN001, ANN202 - note the disk it used before it is freed
        spilled.append(self.bytes_written)
        return real(self)

    exact_module.SpilledCurves.compute = compute
    t = time.perf_counter()
    if mode == "none":
        for b in stream():
            subject.anomaly_scores(b)
        result = None
    else:
        result = evaluate(subject, stream(), torch.device("cpu"), list(VISA), pixel_metrics=mode)[0]
    seconds = time.perf_counter() - t
    out: dict[str, Any] = {
        "mode": mode,
        "eval_s": round(seconds, 2),
        "peak_rss_mb": round(_rss_mb(), 1),
        "base_rss_mb": round(base, 1),
    }
    if spilled:
        out["spilled_mb"] = round(spilled[0] / 2**20, 1)
    if result is not None:
        out["per_class"] = result.per_class
        out["pixels"] = sum(c["pixels"] for c in result.counts.values())
        out["images"] = sum(c["images"] for c in result.counts.values())
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench.provenance import emit, provenance

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=sum(n for n, _ in VISA.values()))
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--mode", choices=("exact", "binned", "none"), help="one pass in this process (JSON out)")
    ap.add_argument("--out", help="write the JSON here too")
    args = ap.parse_args(argv)
    if args.mode:
        doc = run_mode(args.mode, args.images, args.size, args.batch)
        print(json.dumps(doc))
        return doc
    made = provenance("bench_eval_metrics.py", argv)
    runs = {}
    for mode in ("none", "exact", "binned"):
        cmd = [sys.executable, __file__, "--mode", mode, "--images", str(args.images), "--size", str(args.size)]
        cmd += ["--batch", str(args.batch)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    generate = runs["none"]["eval_s"]
    doc: dict[str, Any] = {**made, "images": runs["exact"]["images"], "pixels": runs["exact"]["pixels"]}
    doc.update({"size": args.size, "batch": args.batch, "classes": len(VISA), "generate_s": generate})
    for mode in ("exact", "binned"):
        r = runs[mode]
        doc[mode] = {
            "eval_s": r["eval_s"],
            "metrics_s": round(r["eval_s"] - generate, 2),
            "peak_rss_mb": r["peak_rss_mb"],
            "base_rss_mb": r["base_rss_mb"],
            "peak_over_base_mb": round(r["peak_rss_mb"] - r["base_rss_mb"], 1),
            **({"spilled_mb": r["spilled_mb"]} if "spilled_mb" in r else {}),
        }
    doc["maps_only_peak_rss_mb"] = runs["none"]["peak_rss_mb"]
    doc["binned_minus_exact"] = {
        m: max(abs(runs["binned"]["per_class"][c][m] - runs["exact"]["per_class"][c][m]) for c in VISA)
        for m in ("pixel_auroc", "pixel_ap", "image_auroc", "image_ap")
    }
    doc["exact_mean"] = {
        m: sum(runs["exact"]["per_class"][c][m] for c in VISA) / len(VISA) for m in ("pixel_auroc", "pixel_ap")
    }
    return emit(doc, args.out)


if __name__ == "__main__":
    main()
