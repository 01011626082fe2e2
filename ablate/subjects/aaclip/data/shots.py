"""AA-CLIP's k-shot lists: the training images as AA-CLIP's own metadata files name them.

AA-CLIP reads its training images from ``dataset/metadata/<data set>/<k>-shot.jsonl`` (few-shot) or
``full-shot.jsonl`` (every image), JSON lines of the form
``{"image_path": "grid/test/glue/010.png", "label": 1, "mask_path": "grid/ground_truth/glue/010_mask.png",
"class_name": "grid"}``: paths relative to the data set's folder, ``label`` 0 or 1 (AA-CLIP writes
``1.0`` for some sets), ``mask_path`` only for anomalous images (its ``BaseDataset`` reads a mask
when the label is set). ``data.shots_file`` names such a file; its images are the training set, in
the file's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ablate.errors import AblateInputError
from ablate.subjects.aaclip.data.folders import Sample, json_lines

KEYS = ("image_path", "label", "mask_path", "class_name")


def read_shots(
    path: str, root: Path, classes: Sequence[str] | None = None, field: str = "data.shots_file"
) -> list[Sample]:
    """The samples a k-shot list names, paths resolved against ``root`` (the data set's folder); only
    ``classes`` when given. Refuses, naming ``field`` and the line: a missing file, a line that is not
    a JSON object of AA-CLIP's keys, a label other than 0/1, an anomalous image without a mask."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise AblateInputError(field, f"no such file: {p}")
    out: list[Sample] = []
    for where, rec in json_lines(p, field):
        unknown = sorted(set(rec) - set(KEYS))
        if unknown:
            raise AblateInputError(field, f"{where}: unknown key {unknown[0]!r} (AA-CLIP's keys: {', '.join(KEYS)})")
        image, label, mask, cls = (rec.get(k) for k in KEYS)
        if not isinstance(image, str) or not image:
            raise AblateInputError(field, f"{where}: 'image_path' must be a path")
        if not isinstance(cls, str) or not cls.strip():
            raise AblateInputError(field, f"{where}: 'class_name' must be a name")
        if isinstance(label, bool) or label not in (0, 1):  # 1.0 == 1: AA-CLIP's float labels
            raise AblateInputError(field, f"{where}: 'label' must be 0 (normal) or 1 (anomalous)")
        if mask is not None and (not isinstance(mask, str) or not mask):
            raise AblateInputError(field, f"{where}: 'mask_path' must be a path or absent")
        if label == 1 and mask is None:
            raise AblateInputError(field, f"{where}: an anomalous image needs its 'mask_path'")
        if classes and cls.strip() not in classes:
            continue
        # A normal image's mask is all zeros (AA-CLIP does not read one).
        out.append(Sample(str(root / image), cls.strip(), int(label), str(root / mask) if label else None, "train"))
    if not out:
        raise AblateInputError(field, f"{p} names no training image" + (" of data.classes" if classes else ""))
    return out
