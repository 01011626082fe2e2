"""Folder data for an arm: a training set and an evaluation set (they may differ), one class list.

AA-CLIP trains on one data set and tests on another (VisA -> MVTec AD and the reverse), and trains on
the split that holds anomalies with masks: the *test* split, since ``train`` holds only good images.
So the training source defaults to the test split of its set, and the evaluation source to the test
split of its own set (the training set's when none is given; then training and evaluation images
are the same, which a cross-data-set study avoids by naming ``[eval_data]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ablate.errors import AblateInputError
from ablate.subjects.aaclip.data.folders import Sample, Source, list_samples
from ablate.subjects.aaclip.data.image_dataset import FolderDataset
from ablate.subjects.aaclip.data.names import aaclip_names, names_table
from ablate.subjects.aaclip.data.shots import read_shots
from ablate.subjects.aaclip.data.validate import validate_samples


@dataclass(frozen=True)
class FolderConfig:
    train: Source
    eval: Source | None = None  # None: the test split of the training set
    real_names: tuple[tuple[str, str], ...] = ()  # folder class -> the name the prompts use
    few_shot: int = 0  # k training images per class (seeded by the data seed); 0 = all
    workers: int = 2  # processes that read training images ahead; 0 = in the training process
    # AA-CLIP's k-shot list (data/shots.py): its images are the training set; None: the split's images.
    shots_file: str | None = None

    @property
    def eval_source(self) -> Source:
        if self.eval is not None:
            return self.eval
        t = self.train
        return Source(t.kind, t.root, "test", t.classes, t.split_csv, t.field, t.dataset)

    def prompt_name(self, class_name: str, dataset: str | None = None) -> str:
        """The class as the prompts name it: the spec's real-name entry, else AA-CLIP's name for a class
        of that data set (data/class_names.toml), else the folder name, ``_`` as a space."""
        own = dict(self.real_names)
        if class_name in own:
            return own[class_name]
        return aaclip_names(dataset).get(class_name, class_name.replace("_", " "))


_CHECKED: dict[Source, list[Sample]] = {}


def checked_samples(src: Source) -> list[Sample]:
    """The samples of ``src``, every file opened and checked once per process (see validate.py)."""
    hit = _CHECKED.get(src)
    if hit is None:
        hit = list_samples(src)
        field = f"{src.field}.{'manifest' if src.kind == 'manifest' else 'root'}"
        validate_samples(hit, field)
        _CHECKED[src] = hit
    return hit


def shot_samples(cfg: FolderConfig) -> list[Sample]:
    """The images ``cfg.shots_file`` names (paths relative to the training set's folder; a manifest's
    folder for kind manifest), every file opened and checked once per process."""
    assert cfg.shots_file is not None
    src = cfg.train
    key = (cfg.shots_file, src)
    hit = _SHOTS.get(key)
    if hit is None:
        root = Path(src.root).expanduser()
        field = f"{src.field}.shots_file"
        hit = read_shots(cfg.shots_file, root.parent if src.kind == "manifest" else root, src.classes, field)
        validate_samples(hit, field)
        _SHOTS[key] = hit
    return hit


_SHOTS: dict[tuple[str, Source], list[Sample]] = {}


def training_samples(cfg: FolderConfig, seed: int) -> list[Sample]:
    """The training set: the k-shot list's images, else the split's (``few_shot`` per class drawn with ``seed``)."""
    if cfg.shots_file is not None:
        return shot_samples(cfg)
    return few_shot(checked_samples(cfg.train), cfg.few_shot, seed)


def few_shot(samples: list[Sample], k: int, seed: int) -> list[Sample]:
    """k samples per class, drawn with ``seed`` (a class with fewer keeps all), in the original order."""
    if k <= 0:
        return samples
    by_class: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.class_name, []).append(i)
    g = torch.Generator().manual_seed(seed)
    keep: set[int] = set()
    for idx in by_class.values():
        perm = torch.randperm(len(idx), generator=g)[:k]
        keep.update(idx[int(j)] for j in perm)
    return [s for i, s in enumerate(samples) if i in keep]


def check_folders(cfg: FolderConfig) -> None:
    """Every refusal a folder config can earn, before anything is built, trained or written."""
    train = shot_samples(cfg) if cfg.shots_file is not None else checked_samples(cfg.train)
    held = checked_samples(cfg.eval_source)
    for name, _ in cfg.real_names:
        if not any(s.class_name == name for s in train + held):
            raise AblateInputError(f"{cfg.train.field}.real_names", f"names class {name!r}, which neither set has")
    for src, samples in ((cfg.train, train), (cfg.eval_source, held)):
        known = aaclip_names(src.dataset)
        if src.dataset is not None and not any(s.class_name in known for s in samples):
            found = ", ".join(sorted({s.class_name for s in samples})[:4])
            theirs = ", ".join(sorted(known))
            raise AblateInputError(
                f"{src.field}.dataset", f"none of this set's classes ({found}) is one of {src.dataset!r}'s ({theirs})"
            )


@dataclass
class FolderData:
    classes: tuple[str, ...]  # the model's classes: prompt names, training set's first
    train: FolderDataset
    eval: FolderDataset


def build_folder_data(cfg: FolderConfig, image_size: int, seed: int, augment: str = "none") -> FolderData:
    """Training and evaluation data sets over one class list (``seed``: few-shot draw, augmentation;
    ``augment``: the training images' augmentation, data/augment.py)."""
    check_folders(cfg)
    train = training_samples(cfg, seed)
    held = checked_samples(cfg.eval_source)
    train_name = partial(cfg.prompt_name, dataset=names_table(cfg.train.kind, cfg.train.dataset))
    held_name = partial(cfg.prompt_name, dataset=names_table(cfg.eval_source.kind, cfg.eval_source.dataset))
    classes: list[str] = []
    for name in [train_name(s.class_name) for s in train] + [held_name(s.class_name) for s in held]:
        if name not in classes:
            classes.append(name)
    return FolderData(
        tuple(classes),
        FolderDataset(train, image_size, classes, train_name, augment, seed),
        FolderDataset(held, image_size, classes, held_name),
    )
