"""Small anomaly data sets on disk, written by the tests in each layout (PNG via Pillow).

Every image is a flat colour with, when anomalous, a white square whose mask is the same square:
``SQUARE`` (top, left, size) in pixels of a ``SIZE`` x ``SIZE`` image, on the patch grid of the tiny
backbone after resizing (64 px input, 8 px patches: the square covers patches rows 2-3, columns 4-5).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

SIZE = 32  # stored images; the tiny backbone reads them at 64 px
SQUARE = (8, 16, 8)  # top, left, side in stored pixels


def _png(path: Path, anomalous: bool, shade: int, size: int = SIZE) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (size, size), (shade, 80, 255 - shade))
    if anomalous:
        t, left, s = SQUARE
        im.paste((255, 255, 255), (left, t, left + s, t + s))
    im.save(path)


def _mask(path: Path, size: int = SIZE) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("L", (size, size), 0)
    t, left, s = SQUARE
    im.paste(255, (left, t, left + s, t + s))
    im.save(path)


def make_mvtec(root: Path, classes=("bottle", "metal_nut"), good=3, test_good=2, bad=2) -> Path:
    for ci, cls in enumerate(classes):
        for i in range(good):
            _png(root / cls / "train" / "good" / f"{i:03d}.png", False, 40 * ci + i)
        for i in range(test_good):
            _png(root / cls / "test" / "good" / f"{i:03d}.png", False, 40 * ci + 10 + i)
        for i in range(bad):
            _png(root / cls / "test" / "scratch" / f"{i:03d}.png", True, 40 * ci + 20 + i)
            _mask(root / cls / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    return root


def make_visa(root: Path, classes=("candle", "pipe_fryum"), train=3, test_good=2, bad=2) -> Path:
    rows = []
    for ci, cls in enumerate(classes):
        for split, n, label in (("train", train, "normal"), ("test", test_good, "normal"), ("test", bad, "anomaly")):
            for i in range(n):
                folder = "Anomaly" if label == "anomaly" else "Normal"
                img = f"{cls}/Data/Images/{folder}/{split}{i:03d}.JPG"
                # VisA ships JPEGs; the masks are PNGs whose defect pixels hold a non-zero id.
                _png(root / img, label == "anomaly", 40 * ci + i)
                mask = ""
                if label == "anomaly":
                    mask = f"{cls}/Data/Masks/Anomaly/{split}{i:03d}.png"
                    _mask(root / mask)
                rows.append({"object": cls, "split": split, "label": label, "image": img, "mask": mask})
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["object", "split", "label", "image", "mask"])
        w.writeheader()
        w.writerows(rows)
    return root


def make_manifest(folder: Path, classes=("brain", "liver"), good=2, bad=2, train_good=2) -> Path:
    lines = []
    for ci, cls in enumerate(classes):
        for i in range(train_good):
            _png(folder / "img" / f"{cls}_tr{i}.png", False, 40 * ci + i)
            lines.append({"image": f"img/{cls}_tr{i}.png", "class": cls, "label": 0, "mask": None, "split": "train"})
        for i in range(good):
            _png(folder / "img" / f"{cls}_ok{i}.png", False, 40 * ci + 10 + i)
            lines.append({"image": f"img/{cls}_ok{i}.png", "class": cls, "label": 0, "mask": None})
        for i in range(bad):
            _png(folder / "img" / f"{cls}_bad{i}.png", True, 40 * ci + 20 + i)
            _mask(folder / "mask" / f"{cls}_bad{i}.png")
            lines.append({"image": f"img/{cls}_bad{i}.png", "class": cls, "label": 1, "mask": f"mask/{cls}_bad{i}.png"})
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path
