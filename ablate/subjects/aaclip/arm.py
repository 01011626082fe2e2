"""An AA-CLIP arm built: data, frozen backbone, text side (Stage 1), model, held-out probe and gain
batches, a training batch per step.

``ArmSetup`` (one arm) and ``PackSetup`` (several arms trained side by side) are the AA-CLIP
subject's ``BuiltArm`` (ablate/engine/arm.py): what the generic engine probes and trains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ablate.engine.arm import ArmConfig, validate_arm
from ablate.engine.device import resolve_device
from ablate.engine.fixes import parse_fix
from ablate.engine.loop import RunConfig
from ablate.engine.probe import ArmLabel
from ablate.errors import AblateInputError
from ablate.eval.metrics import DEFAULT_BINS
from ablate.subjects.aaclip.backbone import backbone_spec, resolve_pretrained
from ablate.subjects.aaclip.data.augment import AUGMENTS
from ablate.subjects.aaclip.data.image_dataset import StepBatches, StepLoader, iterate_batches
from ablate.subjects.aaclip.data.order import batch_indices
from ablate.subjects.aaclip.data.sources import (
    FolderConfig,
    build_folder_data,
    check_folders,
    training_samples,
)
from ablate.subjects.aaclip.data.synthetic import TEXTURE_CLASSES, Batch, SyntheticAnomalyDataset
from ablate.subjects.aaclip.evaluate import PIXEL_METRICS, EvalResult, evaluate
from ablate.subjects.aaclip.layers import TextAdapter
from ablate.subjects.aaclip.model import AAClipConfig, AAClipModel, SharedBackbone, build_backbone, build_model
from ablate.subjects.aaclip.packed import PackedAAClip
from ablate.subjects.aaclip.scoring import DOMAINS, SCORINGS, Scoring
from ablate.subjects.aaclip.sizes import backbone_widths
from ablate.subjects.aaclip.stage1 import (
    STAGE1_SEED_OFFSET,
    SURGERY_ATTENTIONS,
    Stage1Config,
    Stage1Result,
    adapted_class_embeddings,
    read_checkpoint,
    train_text_adapter,
)
from ablate.timers import span

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
    batch_size: int = 2  # AA-CLIP's Stage 2 batch (its train.py, --image_batch_size)
    anomaly_fraction: float = 0.5
    # Images on disk instead of the synthetic textures (train_size, classes and anomaly_fraction
    # then do not apply: the pool is the training set's images, after few_shot).
    folders: FolderConfig | None = None
    augment: str = "aaclip"  # training images (data/augment.py): aaclip | flips | none


@dataclass(frozen=True)
class EvalConfig:
    """The end-of-run evaluation (image/pixel AUROC and AP per class): spec ``[eval]``."""

    enabled: bool = False
    batches: int = 8  # test batches of data.batch_size images (synthetic: a fixed set for every seed)
    bins: int = DEFAULT_BINS  # histogram bins per class of binned pixel metrics (ties within a bin)
    scoring: str = "aaclip"  # how maps and image scores are made (scoring.py): aaclip | softmax
    domain: str = "industrial"  # AA-CLIP's blur and image score per domain: industrial | medical
    pixel_metrics: str = "exact"  # exact (scikit-learn's values, spilled to disk) | binned (histograms)
    every: int = 0  # > 0: also evaluate every this many steps, each a step row (0: at the end only)


@dataclass(frozen=True)
class AAClipSubjectConfig:
    """The AA-CLIP subject's settings of an arm (spec ``[model]``, ``[data]``, ``[eval]``, ``[stage1]``);
    the fix, seed and engine settings are the generic ``ArmConfig``'s. ``model.fix`` and ``model.scale``
    are ignored here: an arm's fix is ``ArmConfig.fix``."""

    model: AAClipConfig = field(default_factory=AAClipConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # AA-CLIP Stage 1 before this arm (None: none; the study runner trains it once per seed instead
    # and hands every arm of the seed the same text adapter).
    stage1: Stage1Config | None = None
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
    stage1: Stage1Config | None = None,
) -> ArmConfig:
    """An AA-CLIP arm's ``ArmConfig`` from the AA-CLIP pieces (the fix and scale come from ``model``)."""
    model = model or AAClipConfig()
    subject = AAClipSubjectConfig(model=model, data=data or DataConfig(), eval=eval or EvalConfig(), stage1=stage1)
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
    the engine's own (steps, lr, precision, ...) are :func:`ablate.engine.arm.validate_arm`'s."""
    validate_arm(cfg)
    sub = cfg.subject
    backbone_spec(sub.model.backbone)
    data, ev = sub.data, sub.eval
    checks = [
        ("batches", cfg.probe_batches * data.batch_size <= EVAL_OFFSET, "too many probe images"),
        ("gain_batches", cfg.gain_batches * data.batch_size <= EVAL_OFFSET, "too many evaluation images"),
        ("batch_size", data.batch_size >= 1, "must be >= 1"),
        ("train_size", data.train_size >= data.batch_size, "must be >= batch_size"),
        ("anomaly_fraction", 0 <= data.anomaly_fraction <= 1, "must be in [0, 1]"),
        ("eval.batches", ev.batches >= 1, "must be >= 1"),
        ("eval.bins", 2 <= ev.bins <= 2**20, "must be in [2, 1048576]"),
        ("eval.scoring", ev.scoring in SCORINGS, f"must be one of {', '.join(SCORINGS)}"),
        ("eval.domain", ev.domain in DOMAINS, f"must be one of {', '.join(DOMAINS)}"),
        ("eval.pixel_metrics", ev.pixel_metrics in PIXEL_METRICS, f"must be one of {', '.join(PIXEL_METRICS)}"),
        ("eval.every", ev.every >= 0, "must be >= 0"),
        ("data.augment", data.augment in AUGMENTS, f"must be one of {', '.join(AUGMENTS)}"),
        ("model.detection_logit_scale", sub.model.detection_logit_scale > 0, "must be > 0"),
    ]
    s1 = sub.stage1
    if s1 is not None:
        checks += [
            ("stage1.epochs", s1.epochs >= 1 or s1.steps >= 1, "must be >= 1 (or give stage1.steps)"),
            ("stage1.steps", s1.steps >= 0, "must be >= 0"),
            ("stage1.lr", s1.lr > 0, "must be > 0"),
            ("stage1.batch_size", s1.batch_size >= 1, "must be >= 1"),
            ("stage1.orthogonal_weight", s1.orthogonal_weight >= 0, "must be >= 0"),
            (
                "stage1.surgery_attention",
                s1.surgery_attention in SURGERY_ATTENTIONS,
                f"must be one of {', '.join(SURGERY_ATTENTIONS)}",
            ),
        ]
    for name, ok, msg in checks:
        if not ok:
            raise AblateInputError(name, msg)


def check_data(cfg: ArmConfig) -> None:
    """The weights file, a Stage 1 checkpoint and the data on disk (folder data only: every file
    opened once, the training pool big enough); errors name the spec key."""
    model = cfg.subject.model
    for field_name, check in (
        ("model.pretrained", lambda: resolve_pretrained(backbone_spec(model.backbone), model.pretrained)),
        ("model.text_adapter", lambda: model.text_adapter and load_text_adapter(model, model.text_adapter)),
    ):
        try:
            check()
        except AblateInputError as exc:
            raise AblateInputError(field_name, exc.message) from None
    check_folder_data(cfg)


def check_folder_data(cfg: ArmConfig) -> None:
    """The data on disk (folder data only): every file opened once, the training pool big enough."""
    f = cfg.subject.data.folders
    if f is None:
        return
    check_folders(f)
    pool = len(training_samples(f, cfg.subject.data.seed))
    if pool < cfg.subject.data.batch_size:
        where = "few_shot" if f.few_shot else ("manifest" if f.train.kind == "manifest" else "root")
        where = "shots_file" if f.shots_file is not None else where
        raise AblateInputError(
            f"{f.train.field}.{where}", f"{pool} training images, fewer than batch_size ({cfg.subject.data.batch_size})"
        )


@dataclass
class ArmData:
    """What arms of one spec share: the training and evaluation sets and the frozen backbone."""

    dataset: Any
    eval_set: Any
    shared: SharedBackbone
    # Text sides made so far: a seed's arms get the same Stage 1 state, so its class embeddings are
    # computed once (the same computation, so the same values) and shared.
    _text_sides: list[tuple[Any, Any, torch.device, torch.Tensor]] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.shared.classes

    def text_side(self, model: AAClipConfig, state: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """[C, E, 2]: the class embeddings through the text tower adapted by ``state`` (a Stage 1 result)."""
        for known, cfg, where, embeds in self._text_sides:
            if known is state and cfg == model and where == device:
                return embeds
        adapter = new_text_adapter(model)
        adapter.load_state_dict(state)
        embeds = adapted_class_embeddings(self.shared.clip, self.shared.classes, adapter, device)
        self._text_sides.append((state, model, device, embeds))
        return embeds


def arm_data(cfg: ArmConfig, like: ArmSetup | PackSetup | ArmData | None = None) -> ArmData:
    """Build the data sets and the frozen backbone of ``cfg`` (or take ``like``'s)."""
    if isinstance(like, PackSetup):
        like = like.arms[0]
    if isinstance(like, ArmSetup):
        return like.data
    if like is not None:
        return like
    validate(cfg)
    with span("build"):
        return _build_data(cfg)


def _build_data(cfg: ArmConfig) -> ArmData:
    spec = backbone_spec(cfg.subject.model.backbone)
    folders = cfg.subject.data.folders
    if folders is None:
        dataset = SyntheticAnomalyDataset(
            spec.image_size,
            cfg.subject.data.seed,
            cfg.subject.data.classes,
            cfg.subject.data.anomaly_fraction,
            augment=cfg.subject.data.augment,
        )
        eval_set = None
    else:
        check_folder_data(cfg)
        data = build_folder_data(folders, spec.image_size, cfg.subject.data.seed, cfg.subject.data.augment)
        dataset, eval_set = data.train, data.eval
    return ArmData(dataset, eval_set, build_backbone(cfg.subject.model, dataset.classes))


def training_pool(cfg: ArmConfig, data: ArmData) -> int:
    """How many images the training order runs over: the synthetic pool, or the training set."""
    return cfg.subject.data.train_size if data.eval_set is None else len(data.dataset)


def new_text_adapter(model: AAClipConfig, device: torch.device | str | None = None) -> TextAdapter:
    """A freshly initialised text adapter for ``model``'s backbone (on ``device``; "meta": shapes only)."""
    _, embed, d_txt = backbone_widths(model.backbone)
    with torch.device(device or "cpu"):
        return TextAdapter(d_txt, embed, model.text_adapter_layers, model.text_adapter_weight)


def load_text_adapter(model: AAClipConfig, source: str | bytes) -> dict[str, torch.Tensor]:
    """A text adapter's weights from a checkpoint (path or bytes), checked against ``model``'s shapes."""
    return read_checkpoint(source, new_text_adapter(model, "meta"))


def run_stage1(
    cfg: ArmConfig, data: ArmData, device: torch.device, on_step: Callable[[int], None] | None = None
) -> Stage1Result:
    """AA-CLIP Stage 1 for ``cfg``'s seed on its training set (``cfg.subject.stage1``, default settings if None)."""
    spec = backbone_spec(cfg.subject.model.backbone)
    levels = spec.levels if cfg.subject.model.levels is None else cfg.subject.model.levels
    torch.manual_seed(cfg.seed + STAGE1_SEED_OFFSET)
    adapter = new_text_adapter(cfg.subject.model)
    data.shared.clip.to(device)
    return train_text_adapter(
        data.shared.clip,
        data.dataset,
        training_pool(cfg, data),
        data.classes,
        cfg.subject.stage1 or Stage1Config(),
        adapter,
        levels,
        spec.surgery_blocks,
        cfg.seed,
        device,
        cfg.run.precision,
        on_step,
    )


class ArmSetup:
    """The built pieces of an arm: device, model, data set, probe batches, training batch source.

    ``like`` is an arm already built (or its :class:`ArmData`) whose backbone and data set this one
    shares (a pack's first arm). The text side: ``text_adapter`` (Stage 1 weights the caller trained
    for this seed), else the checkpoint ``model.text_adapter``, else Stage 1 trained here when
    ``cfg.subject.stage1`` asks for it, else the frozen CLIP's class embeddings.
    """

    def __init__(
        self,
        cfg: ArmConfig,
        like: ArmSetup | ArmData | None = None,
        text_adapter: dict[str, torch.Tensor] | None = None,
    ) -> None:
        validate(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.data = arm_data(cfg, like)
        self.dataset, self.eval_set = self.data.dataset, self.data.eval_set
        self.pool = training_pool(cfg, self.data)
        shared = self.data.shared
        shared.clip.to(self.device)
        self.stage1: Stage1Result | None = None
        state = text_adapter
        if state is None and cfg.subject.model.text_adapter:
            state = load_text_adapter(cfg.subject.model, cfg.subject.model.text_adapter)
        if state is None and cfg.subject.stage1 is not None:
            self.stage1 = run_stage1(cfg, self.data, self.device)
            state = self.stage1.state
        text_embeds = None if state is None else self.data.text_side(cfg.subject.model, state, self.device)
        self.model: AAClipModel = build_model(
            model_config(cfg), self.dataset.classes, cfg.seed, shared, text_embeds
        ).to(self.device)
        self._loader: StepLoader | None = None
        if self.eval_set is None:
            # Held out from training, and different for every seed, so seeds are independent replicates.
            first = PROBE_INDEX_OFFSET + (cfg.seed % 10_000) * PROBE_SEED_STRIDE
            self.probe_batches = self._held_out(first, cfg.probe_batches)
            self.gain_batches = self._held_out(first + EVAL_OFFSET, cfg.gain_batches)
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
            self._loader = StepLoader(self.step_batches(), cfg.subject.data.folders.workers, self.device)

    def step_batches(self, others: Sequence[ArmSetup] = (), stack: bool = False) -> StepBatches:
        """This arm's training batches by step (with ``others``: every arm's, stacked over arms)."""
        arms = [(a.dataset, a.cfg.seed, a.cfg.subject.data.batch_size, a.pool) for a in [self, *others]]
        return StepBatches(arms, self.cfg.run.steps, stack)

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

    @property
    def eval_every(self) -> int:
        """Steps between evaluations during training (0: only at the end; see ``train_built``)."""
        return _eval_every(self)

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
        idx = batch_indices(self.cfg.seed, self.pool, self.cfg.subject.data.batch_size, step)
        return self.dataset.batch(idx, step).to(self.device)


def packing_key(cfg: ArmConfig) -> tuple:
    """What AA-CLIP arms must share to train packed: everything but their seed, fix scale and init."""
    m = model_config(cfg)
    return (
        cfg.packing_key(),
        m.shared_part(),
        (m.inject_at, m.adapter_layers, m.levels, m.adapter_weight, m.branch_heads, m.branch_dropout),
        (m.detection_logit_scale, m.text_adapter, m.text_adapter_layers, m.text_adapter_weight),
        cfg.subject.stage1,
        parse_fix(m.fix, m.scale).join,
        cfg.subject.data,
        cfg.subject.eval,
    )


class PackSetup:
    """Several arms built to train side by side: one shared backbone and data set, a packed model,
    and every batch stacked over arms (each arm keeps its own data order, held-out batches and text
    side: ``text_adapters[i]``, the Stage 1 weights of arm i's seed, or None; see :class:`ArmSetup`)."""

    def __init__(
        self,
        cfgs: Sequence[ArmConfig],
        like: ArmSetup | ArmData | None = None,
        text_adapters: Sequence[dict[str, torch.Tensor] | None] | None = None,
    ) -> None:
        if not cfgs:
            raise ValueError("a pack needs at least one arm")
        keys = [packing_key(c) for c in cfgs]
        if any(k != keys[0] for k in keys[1:]):
            raise AblateInputError("pack", "packed arms may differ only in seed and scale (same fix type, settings)")
        weights = list(text_adapters) if text_adapters is not None else [None] * len(cfgs)
        first = ArmSetup(cfgs[0], like=like, text_adapter=weights[0])
        self.arms = [first, *(ArmSetup(c, like=first, text_adapter=w) for c, w in zip(cfgs[1:], weights[1:]))]
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

    @property
    def eval_every(self) -> int:
        return _eval_every(self)


def _evaluate(setup: ArmSetup | PackSetup) -> list[EvalResult] | None:
    """The evaluation (one result per arm) when the config asks for it, else None."""
    cfg = setup.cfg.subject.eval
    if not cfg.enabled:
        return None
    scoring = Scoring(cfg.scoring, cfg.domain)
    return evaluate(
        setup.model,
        setup.test_batches(),
        setup.device,
        setup.model.classes,
        cfg.bins,
        scoring,
        setup.cfg.run.precision,
        cfg.pixel_metrics,
    )


def _eval_every(setup: ArmSetup | PackSetup) -> int:
    cfg = setup.cfg.subject.eval
    return cfg.every if cfg.enabled else 0
