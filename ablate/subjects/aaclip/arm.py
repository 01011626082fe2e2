"""An AA-CLIP arm built: model, data set, held-out probe and gain batches, a training batch per step.

``ArmSetup`` (one arm) and ``PackSetup`` (several arms trained side by side) are the AA-CLIP
subject's ``BuiltArm`` (ablate/engine/arm.py): what the generic engine probes and trains.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from ablate.engine.arm import ArmConfig, validate_arm
from ablate.engine.device import resolve_device
from ablate.engine.fixes import parse_fix
from ablate.engine.loop import RunConfig
from ablate.engine.probe import ArmLabel
from ablate.errors import AblateInputError
from ablate.eval.metrics import DEFAULT_BINS
from ablate.subjects.aaclip.backbone import backbone_spec, resolve_pretrained
from ablate.subjects.aaclip.data.image_dataset import StepBatches, StepLoader, iterate_batches
from ablate.subjects.aaclip.data.sources import (
    FolderConfig,
    build_folder_data,
    check_folders,
    checked_samples,
    few_shot,
)
from ablate.subjects.aaclip.data.synthetic import TEXTURE_CLASSES, Batch, SyntheticAnomalyDataset
from ablate.subjects.aaclip.evaluate import EvalResult, evaluate
from ablate.subjects.aaclip.model import AAClipConfig, AAClipModel, SharedBackbone, build_model
from ablate.subjects.aaclip.packed import PackedAAClip

PROBE_INDEX_OFFSET = 1_000_000  # probe images never appear in training
# The synthetic test set of the end-of-run evaluation: one fixed set for every seed and arm (as a
# benchmark's test split is), drawn from indices no training, probe or gain batch uses.
TEST_INDEX_OFFSET = 200_000_000
PROBE_SEED_STRIDE = 10_000  # each seed draws its own held-out probe and evaluation batches
EVAL_OFFSET = 5_000  # within a seed's range: probe images first, then the adapter-gain images


@dataclass(frozen=True)
class DataConfig:
    seed: int = 0
    classes: tuple[str, ...] = TEXTURE_CLASSES
    train_size: int = 256  # images in the training pool (cycled in a seeded order)
    batch_size: int = 4
    anomaly_fraction: float = 0.5
    # Images on disk instead of the synthetic textures (train_size, classes and anomaly_fraction
    # then do not apply: the pool is the training set's images, after few_shot).
    folders: FolderConfig | None = None


@dataclass(frozen=True)
class EvalConfig:
    """The end-of-run evaluation (image/pixel AUROC and AP per class): spec ``[eval]``."""

    enabled: bool = False
    batches: int = 8  # test batches of data.batch_size images (synthetic: a fixed set for every seed)
    bins: int = DEFAULT_BINS  # histogram bins per class (binned AUROC/AP: ties within a bin)


@dataclass(frozen=True)
class AAClipSubjectConfig:
    """The AA-CLIP subject's settings of an arm (spec ``[model]``, ``[data]``, ``[eval]``); the fix,
    seed and engine settings are the generic ``ArmConfig``'s. ``model.fix`` and ``model.scale`` are
    ignored here: an arm's fix is ``ArmConfig.fix``."""

    model: AAClipConfig = field(default_factory=AAClipConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    kind: str = "aaclip"


def model_config(cfg: ArmConfig) -> AAClipConfig:
    """The arm's model config: the subject's, with the arm's fix and scale."""
    return replace(cfg.subject.model, fix=cfg.fix, scale=cfg.scale)


def aaclip_arm(
    model: AAClipConfig | None = None,
    data: DataConfig | None = None,
    run: RunConfig | None = None,
    probe_batches: int = 8,
    seed: int = 0,
    device: str = "auto",
    freeze_adapters: bool = False,
    gain_batches: int = 16,
    eval: EvalConfig | None = None,  # noqa: A002 - the spec section's name
) -> ArmConfig:
    """An AA-CLIP arm's ``ArmConfig`` from the AA-CLIP pieces (the fix and scale come from ``model``)."""
    model = model or AAClipConfig()
    subject = AAClipSubjectConfig(model=model, data=data or DataConfig(), eval=eval or EvalConfig())
    return ArmConfig(
        subject=subject,
        fix=model.fix,
        scale=model.scale,
        run=run or RunConfig(),
        probe_batches=probe_batches,
        seed=seed,
        device=device,
        frozen=freeze_adapters,
        gain_batches=gain_batches,
    )


def validate(cfg: ArmConfig) -> None:
    """AA-CLIP's field-level checks that need no model (cheap, before anything is built or written);
    the engine's own (steps, lr, ...) are :func:`ablate.engine.arm.validate_arm`'s."""
    validate_arm(cfg)
    backbone_spec(cfg.subject.model.backbone)
    data, ev = cfg.subject.data, cfg.subject.eval
    checks = [
        ("batches", cfg.probe_batches * data.batch_size <= EVAL_OFFSET, "too many probe images"),
        ("gain_batches", cfg.gain_batches * data.batch_size <= EVAL_OFFSET, "too many evaluation images"),
        ("batch_size", data.batch_size >= 1, "must be >= 1"),
        ("train_size", data.train_size >= data.batch_size, "must be >= batch_size"),
        ("anomaly_fraction", 0 <= data.anomaly_fraction <= 1, "must be in [0, 1]"),
        ("eval.batches", ev.batches >= 1, "must be >= 1"),
        ("eval.bins", 2 <= ev.bins <= 2**20, "must be in [2, 1048576]"),
    ]
    for name, ok, msg in checks:
        if not ok:
            raise AblateInputError(name, msg)


def check_data(cfg: ArmConfig) -> None:
    """The weights file and the data on disk (folder data only: every file opened once, the training
    pool big enough); errors name the spec key."""
    model = cfg.subject.model
    try:
        resolve_pretrained(backbone_spec(model.backbone), model.pretrained)
    except AblateInputError as exc:
        raise AblateInputError("model.pretrained", exc.message) from None
    check_folder_data(cfg)


def check_folder_data(cfg: ArmConfig) -> None:
    """The data on disk (folder data only): every file opened once, the training pool big enough."""
    f = cfg.subject.data.folders
    if f is None:
        return
    check_folders(f)
    pool = len(few_shot(checked_samples(f.train), f.few_shot, cfg.subject.data.seed))
    if pool < cfg.subject.data.batch_size:
        where = "few_shot" if f.few_shot else ("manifest" if f.train.kind == "manifest" else "root")
        raise AblateInputError(
            f"{f.train.field}.{where}", f"{pool} training images, fewer than batch_size ({cfg.subject.data.batch_size})"
        )


class ArmSetup:
    """The built pieces of an arm: device, model, data set, probe batches, training batch source.

    ``like`` is an arm already built whose backbone and data set this one shares (a pack's first arm).
    """

    def __init__(self, cfg: ArmConfig, like: ArmSetup | None = None) -> None:
        validate(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        spec = backbone_spec(cfg.subject.model.backbone)
        folders = cfg.subject.data.folders
        if like is not None:
            self.dataset, self.eval_set = like.dataset, like.eval_set
            m = like.model
            shared = SharedBackbone(m.clip, m.classes, m.text_embeds, m.text_context)
        elif folders is None:
            self.dataset = SyntheticAnomalyDataset(
                spec.image_size, cfg.subject.data.seed, cfg.subject.data.classes, cfg.subject.data.anomaly_fraction
            )
            self.eval_set = None
            shared = None
        else:
            check_folder_data(cfg)
            data = build_folder_data(folders, spec.image_size, cfg.subject.data.seed)
            self.dataset, self.eval_set = data.train, data.eval
            shared = None
        self.model: AAClipModel = build_model(model_config(cfg), self.dataset.classes, cfg.seed, shared).to(self.device)
        self._loader: StepLoader | None = None
        if self.eval_set is None:
            # Held out from training, and different for every seed, so seeds are independent replicates.
            first = PROBE_INDEX_OFFSET + (cfg.seed % 10_000) * PROBE_SEED_STRIDE
            self.probe_batches = self._held_out(first, cfg.probe_batches)
            self.gain_batches = self._held_out(first + EVAL_OFFSET, cfg.gain_batches)
            self._order = torch.randperm(cfg.subject.data.train_size, generator=torch.Generator().manual_seed(cfg.seed))
        else:
            # Folder data: probe and adapter-gain batches come from the evaluation set, in an order
            # drawn from the seed (probe images first, then gain images; cycled if the set is small).
            bs = cfg.subject.data.batch_size
            g = torch.Generator().manual_seed(PROBE_INDEX_OFFSET + cfg.seed)
            held = torch.randperm(len(self.eval_set), generator=g).tolist()
            need = (cfg.probe_batches + cfg.gain_batches) * bs
            held = (held * (need // len(held) + 1))[:need]
            chunks = [held[i : i + bs] for i in range(0, need, bs)]
            self.probe_batches = [self.eval_set.batch(c).to(self.device) for c in chunks[: cfg.probe_batches]]
            self.gain_batches = [self.eval_set.batch(c).to(self.device) for c in chunks[cfg.probe_batches :]]
            self._order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(cfg.seed))
            self._loader = StepLoader(self.step_batches(), folders.workers, self.device)

    def step_batches(self, others: Sequence[ArmSetup] = (), stack: bool = False) -> StepBatches:
        """This arm's training batches by step (with ``others``: every arm's, stacked over arms)."""
        arms = [self, *others]
        return StepBatches(
            [(a.dataset, a._order, a.cfg.subject.data.batch_size) for a in arms], self.cfg.run.steps, stack
        )

    def evaluation_batches(self, batch_size: int | None = None) -> Iterator[Batch]:
        """The evaluation set once, in order, on the device (masks, labels, ``class_idx`` into
        ``self.model.classes``). Folder data: every image of the evaluation set (``self.eval_set``;
        its ``samples[i]`` is the i-th image yielded), read by the data workers. Synthetic data:
        the held-out adapter-gain batches (``gain_batches``), the only evaluation set it has."""
        if self.eval_set is None:
            yield from self.gain_batches
            return
        workers = self.cfg.subject.data.folders.workers if self.cfg.subject.data.folders is not None else 0
        yield from iterate_batches(self.eval_set, batch_size or self.cfg.subject.data.batch_size, self.device, workers)

    def _held_out(self, first: int, n: int) -> list[Batch]:
        bs = self.cfg.subject.data.batch_size
        return [self.dataset.batch(list(range(first + i * bs, first + (i + 1) * bs))).to(self.device) for i in range(n)]

    @property
    def fix_name(self) -> str:
        return self.model.fix.name

    @property
    def scale(self) -> float | None:
        return self.model.fix.scale

    @property
    def label(self) -> ArmLabel:
        return ArmLabel(self.fix_name, self.scale, self.cfg.seed)

    @property
    def labels(self) -> list[ArmLabel]:
        return [self.label]

    def evaluate(self) -> list[EvalResult] | None:
        return _evaluate(self)

    def test_batches(self) -> Iterator[Batch]:
        """The evaluation's test set, streamed batch by batch (never all held): data on disk, the
        whole evaluation set (``evaluation_batches``); synthetic data, ``eval.batches`` fixed batches."""
        if self.eval_set is not None:
            yield from self.evaluation_batches()
            return
        bs = self.cfg.subject.data.batch_size
        for i in range(self.cfg.subject.eval.batches):
            yield self.dataset.batch(list(range(TEST_INDEX_OFFSET + i * bs, TEST_INDEX_OFFSET + (i + 1) * bs)))

    def train_batch(self, step: int) -> Batch:
        if self._loader is not None:
            return self._loader(step)
        bs, n = self.cfg.subject.data.batch_size, self.cfg.subject.data.train_size
        start = (step * bs) % n
        idx = [int(self._order[(start + j) % n]) for j in range(bs)]
        return self.dataset.batch(idx).to(self.device)


def packing_key(cfg: ArmConfig) -> tuple:
    """What AA-CLIP arms must share to train packed: everything but their seed, fix scale and init."""
    m = model_config(cfg)
    return (
        cfg.packing_key(),
        m.shared_part(),
        (m.inject_at, m.adapter_layers, m.levels, m.adapter_weight, m.branch_heads, m.branch_dropout),
        parse_fix(m.fix, m.scale).join,
        cfg.subject.data,
        cfg.subject.eval,
    )


class PackSetup:
    """Several arms built to train side by side: one shared backbone and data set, a packed model,
    and every batch stacked over arms (each arm keeps its own data order and held-out batches)."""

    def __init__(self, cfgs: Sequence[ArmConfig], like: ArmSetup | None = None) -> None:
        if not cfgs:
            raise ValueError("a pack needs at least one arm")
        keys = [packing_key(c) for c in cfgs]
        if any(k != keys[0] for k in keys[1:]):
            raise AblateInputError("pack", "packed arms may differ only in seed and scale (same fix type, settings)")
        first = ArmSetup(cfgs[0], like=like)
        self.arms = [first, *(ArmSetup(c, like=first) for c in cfgs[1:])]
        self.cfg = cfgs[0]
        self.device = first.device
        self.model = PackedAAClip([a.model for a in self.arms])
        self.probe_batches = [Batch.stack(list(bs)) for bs in zip(*(a.probe_batches for a in self.arms))]
        self.gain_batches = [Batch.stack(list(bs)) for bs in zip(*(a.gain_batches for a in self.arms))]
        self._loader: StepLoader | None = None
        if first.cfg.subject.data.folders is not None:
            # One reader for the whole pack: every arm's batch of a step comes stacked from the workers.
            steps = first.step_batches(self.arms[1:], stack=True)
            self._loader = StepLoader(steps, first.cfg.subject.data.folders.workers, self.device)

    @property
    def labels(self) -> list[ArmLabel]:
        return [a.label for a in self.arms]

    def evaluation_batches(self, batch_size: int | None = None) -> Iterator[Batch]:
        """The first arm's evaluation pass (the arms share the data), each batch stacked over arms
        as the packed model takes it."""
        n = len(self.arms)
        for b in self.arms[0].evaluation_batches(batch_size):
            yield Batch.stack([b] * n)

    def train_batch(self, step: int) -> Batch:
        if self._loader is not None:
            return self._loader(step)
        return Batch.stack([a.train_batch(step) for a in self.arms])

    def test_batches(self) -> Iterator[Batch]:
        """The shared test set (every arm sees the same images; :func:`evaluate` repeats each batch)."""
        return self.arms[0].test_batches()

    def evaluate(self) -> list[EvalResult] | None:
        return _evaluate(self)


def _evaluate(setup: ArmSetup | PackSetup) -> list[EvalResult] | None:
    """The end-of-run evaluation (one result per arm) when the config asks for it, else None."""
    cfg = setup.cfg.subject.eval
    if not cfg.enabled:
        return None
    return evaluate(setup.model, setup.test_batches(), setup.device, setup.model.classes, cfg.bins)
