"""How far ablate's colour jitter is from AA-CLIP's, per adjustment and factor, as JSON.

    PYTHONPATH=. python bench/colour_jitter_parity.py --out bench/results/colour_jitter_parity.json

AA-CLIP jitters the full-size 8-bit image (torchvision's ColorJitter on a PIL image: brightness,
contrast, saturation, each p 0.7), then resizes it to 518 px (bicubic) and converts it to [0, 1];
ablate resizes first (``load_image``, the same bicubic resize) and jitters the float image
(ablate/subjects/aaclip/data/augment.py, the same torchvision functions on a tensor). The images
here are 700 x 700 synthetic scenes (smooth colour fields, hard-edged bright and dark shapes,
texture), so clipping at 0 and 255 happens on both sides of the resize. Per adjustment and factor:
the largest and the mean absolute difference of the 518 px results, in [0, 1] units.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FACTORS = (0.5, 0.75, 1.25, 1.5)  # ColorJitter(0.5) draws each factor from [0.5, 1.5]


def scene(seed: int, size: int = 700):  # noqa: ANN201 - a PIL image
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    field = F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(size, size), mode="bicubic")[0]
    x = field.clamp(0, 1) * 0.8 + 0.1 + 0.05 * torch.randn(3, size, size, generator=g)
    for _ in range(6):  # hard-edged shapes, some near white, some near black
        y0, x0 = torch.randint(0, size - 120, (2,), generator=g).tolist()
        x[:, y0 : y0 + 120, x0 : x0 + 120] = torch.rand(3, 1, 1, generator=g) * 0.1 + (0.9 if y0 % 2 else 0.0)
    arr = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torchvision.transforms.functional as TF
    from PIL import Image

    from ablate.subjects.aaclip.data.image_dataset import load_image
    from bench.provenance import emit, provenance

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    doc: dict[str, Any] = {**provenance("colour_jitter_parity.py", argv), "images": args.images, "size": args.size}
    adjust = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast, "saturation": TF.adjust_saturation}
    worst: dict[str, dict[str, float]] = {name: {} for name in adjust}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.images):
            pil = scene(i)
            path = Path(tmp) / f"{i}.png"
            pil.save(path)
            resized = load_image(str(path), args.size)  # ablate: resize, then jitter the float image
            for name, fn in adjust.items():
                for f in FACTORS:
                    theirs = fn(pil, f).resize((args.size, args.size), Image.Resampling.BICUBIC)
                    theirs = TF.pil_to_tensor(theirs).float() / 255.0
                    diff = (fn(resized, f) - theirs).abs()
                    key = str(f)
                    prev = worst[name].get(key, (0.0, 0.0))
                    worst[name][key] = (max(prev[0], float(diff.max())), prev[1] + float(diff.mean()) / args.images)
    doc["max_abs"] = {n: {f: round(v[0], 4) for f, v in d.items()} for n, d in worst.items()}
    doc["mean_abs"] = {n: {f: round(v[1], 5) for f, v in d.items()} for n, d in worst.items()}
    doc["max_abs_overall"] = {n: round(max(v[0] for v in d.values()), 4) for n, d in worst.items()}
    return emit(doc, args.out)


if __name__ == "__main__":
    main()
