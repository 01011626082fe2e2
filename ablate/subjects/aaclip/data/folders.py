"""Anomaly data sets on disk -> a list of samples (image path, class, label, mask path, split).

Three layouts, all read without opening an image (``validate.py`` opens each file once):

- MVTec AD: ``<root>/<class>/train/good/*``, ``<root>/<class>/test/<defect>/*`` and
  ``<root>/<class>/ground_truth/<defect>/<stem>_mask.png`` (``good`` images have no mask).
- VisA: its split CSV (``<root>/split_csv/1cls.csv``: ``object,split,label,image,mask``, paths
  relative to the root, ``label`` ``normal`` or ``anomaly``).
- A manifest: JSON lines ``{"image": ..., "class": ..., "label": 0 | 1, "mask": ... | null,
  "split": "train" | "test"}`` (``split`` optional, default ``test``; relative paths are relative to
  the manifest's folder). It covers MPDD, BTAD and medical sets, or any folder you list.

Errors are AblateInputError naming ``field`` (the spec key or CLI option the caller passes) and the path.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.errors import AblateInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
KINDS = ("mvtec", "visa", "manifest")
SPLITS = ("train", "test", "all")
VISA_CSV = "split_csv/1cls.csv"


@dataclass(frozen=True)
class Sample:
    image: str
    class_name: str
    label: int  # 1 = anomalous
    mask: str | None  # None: no mask file (a normal image: all zeros)
    split: str  # "train" | "test"


@dataclass(frozen=True)
class Source:
    """Where one data set lives and which part of it to use (hashable: arms compare configs)."""

    kind: str  # mvtec | visa | manifest
    root: str  # the data set's folder, or the manifest file
    split: str = "test"  # train | test | all
    classes: tuple[str, ...] | None = None  # a subset, in this order; None = every class found
    split_csv: str | None = None  # VisA: the CSV (default <root>/split_csv/1cls.csv)
    field: str = "data"  # the spec section (or CLI option) errors name
    # Which of AA-CLIP's data sets this is (data/class_names.toml): its prompt names for the classes.
    dataset: str | None = None


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _root(src: Source, key: str) -> Path:
    root = Path(src.root).expanduser()
    if not root.exists():
        raise AblateInputError(f"{src.field}.{key}", f"no such {'file' if key == 'manifest' else 'folder'}: {root}")
    return root


def _mvtec(src: Source) -> tuple[list[Sample], list[str]]:
    root = _root(src, "root")
    if not root.is_dir():
        raise AblateInputError(f"{src.field}.root", f"{root} is not a folder (the MVTec AD root)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir()))
    if not found:
        raise AblateInputError(
            f"{src.field}.root", f"{root} holds no <class>/train or <class>/test folder (MVTec AD layout)"
        )
    out: list[Sample] = []
    for cls in src.classes or tuple(found):
        base = root / cls
        if src.split in ("train", "all"):
            out += [Sample(str(p), cls, 0, None, "train") for p in _images(base / "train" / "good")]
        if src.split in ("test", "all") and (base / "test").is_dir():
            for defect in sorted(d.name for d in (base / "test").iterdir() if d.is_dir()):
                for p in _images(base / "test" / defect):
                    if defect == "good":
                        out.append(Sample(str(p), cls, 0, None, "test"))
                    else:
                        mask = base / "ground_truth" / defect / f"{p.stem}_mask.png"
                        out.append(Sample(str(p), cls, 1, str(mask) if mask.is_file() else None, "test"))
    return out, found


def _visa(src: Source) -> tuple[list[Sample], list[str]]:
    root = _root(src, "root")
    key = "split_csv" if src.split_csv else "root"
    csv_path = Path(src.split_csv).expanduser() if src.split_csv else root / VISA_CSV
    if not csv_path.is_file():
        raise AblateInputError(f"{src.field}.{key}", f"no VisA split CSV at {csv_path}")
    out: list[Sample] = []
    declared: list[str] = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"object", "split", "label", "image", "mask"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise AblateInputError(f"{src.field}.{key}", f"{csv_path}: needs the columns {', '.join(sorted(need))}")
        for line, row in enumerate(reader, start=2):
            label = {"normal": 0, "anomaly": 1}.get(row["label"].strip())
            split = row["split"].strip()
            if label is None or split not in ("train", "test"):
                raise AblateInputError(
                    f"{src.field}.{key}", f"{csv_path} line {line}: label must be normal/anomaly, split train/test"
                )
            if row["object"].strip() not in declared:
                declared.append(row["object"].strip())
            if src.split != "all" and split != src.split:
                continue
            mask = row["mask"].strip()
            out.append(Sample(str(root / row["image"].strip()), row["object"].strip(), label,
                              str(root / mask) if mask else None, split))  # fmt: skip
    return out, sorted(declared)


def json_lines(path: Path, field: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """("<path> line <n>", the object) for each non-blank line of a JSON-lines file; a line that is
    not a JSON object is an AblateInputError naming ``field`` and the line."""
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            where = f"{path} line {n}"
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as exc:
                raise AblateInputError(field, f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise AblateInputError(field, f"{where}: must be a JSON object")
            yield where, rec


def _manifest(src: Source) -> tuple[list[Sample], list[str]]:
    path = _root(src, "manifest")
    if not path.is_file():
        raise AblateInputError(f"{src.field}.manifest", f"{path} is not a file (a JSON-lines manifest)")
    base = path.parent
    out: list[Sample] = []
    declared: set[str] = set()
    for where, rec in json_lines(path, f"{src.field}.manifest"):
        unknown = set(rec) - {"image", "class", "label", "mask", "split"}
        if unknown:
            raise AblateInputError(f"{src.field}.manifest", f"{where}: unknown key {sorted(unknown)[0]!r}")
        image, cls, label = rec.get("image"), rec.get("class"), rec.get("label")
        mask, split = rec.get("mask"), rec.get("split", "test")
        if not isinstance(image, str) or not image:
            raise AblateInputError(f"{src.field}.manifest", f"{where}: 'image' must be a path")
        if not isinstance(cls, str) or not cls.strip():
            raise AblateInputError(f"{src.field}.manifest", f"{where}: 'class' must be a name")
        if label not in (0, 1) or isinstance(label, bool):
            raise AblateInputError(f"{src.field}.manifest", f"{where}: 'label' must be 0 (normal) or 1 (anomalous)")
        if mask is not None and (not isinstance(mask, str) or not mask):
            raise AblateInputError(f"{src.field}.manifest", f"{where}: 'mask' must be a path or null")
        if split not in ("train", "test"):
            raise AblateInputError(f"{src.field}.manifest", f"{where}: 'split' must be train or test")
        declared.add(cls.strip())
        if src.split != "all" and split != src.split:
            continue
        out.append(Sample(str(base / image), cls.strip(), label, str(base / mask) if mask else None, split))
    return out, sorted(declared)


def list_samples(src: Source) -> list[Sample]:
    """The samples of ``src`` (its split and classes), in a stable order; refuses a class (one the
    layout declares, or one asked for) without images in the split."""
    if src.kind not in KINDS:
        raise AblateInputError(f"{src.field}.kind", f"must be one of {', '.join(KINDS)}, got {src.kind!r}")
    if src.split not in SPLITS:
        raise AblateInputError(f"{src.field}.split", f"must be one of {', '.join(SPLITS)}, got {src.split!r}")
    samples, declared = {"mvtec": _mvtec, "visa": _visa, "manifest": _manifest}[src.kind](src)
    present = {s.class_name for s in samples}
    wanted = src.classes or tuple(declared)
    if not wanted:
        raise AblateInputError(f"{src.field}.{'manifest' if src.kind == 'manifest' else 'root'}",
                               f"no images in the {src.split} split of {src.root}")  # fmt: skip
    for cls in wanted:
        if cls not in present:
            raise AblateInputError(
                f"{src.field}.classes" if src.classes else f"{src.field}.root",
                f"class {cls!r} has no images in the {src.split} split of {src.root}",
            )
    keep = set(wanted)
    return [s for s in samples if s.class_name in keep]


def detect_kind(root: str) -> str:
    """The layout of ``root`` when the user did not name it: a file is a manifest, a folder with
    VisA's split CSV is VisA, any other folder is read as MVTec AD."""
    p = Path(root).expanduser()
    if p.is_file():
        return "manifest"
    if (p / VISA_CSV).is_file():
        return "visa"
    return "mvtec"
