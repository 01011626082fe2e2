"""One ablation arm end to end: config -> model + data -> probe or short training -> result.

This is the function a CLI command, an Optuna objective or a notebook calls (MAE's main/engine
split: set-up here, the loop in ``run.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from ablate.data.synthetic import TEXTURE_CLASSES, Batch, SyntheticAnomalyDataset
from ablate.errors import AblateInputError
from ablate.model.aaclip import AAClipConfig, AAClipModel, build_model
from ablate.model.backbone import backbone_spec
from ablate.train.device import resolve_device
from ablate.train.probe import run_probe
from ablate.train.result import ProbeResult, TrainResult
from ablate.train.run import RunConfig, StepRows, train_run

PROBE_INDEX_OFFSET = 1_000_000  # probe images never appear in training
PROBE_SEED_STRIDE = 10_000  # each seed draws its own held-out probe and evaluation batches
EVAL_OFFSET = 5_000  # within a seed's range: probe images first, then the adapter-gain images


@dataclass(frozen=True)
class DataConfig:
    seed: int = 0
    classes: tuple[str, ...] = TEXTURE_CLASSES
    train_size: int = 256  # images in the training pool (cycled in a seeded order)
    batch_size: int = 4
    anomaly_fraction: float = 0.5


@dataclass(frozen=True)
class ArmConfig:
    model: AAClipConfig = field(default_factory=AAClipConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    probe_batches: int = 8
    seed: int = 0
    device: str = "auto"
    freeze_adapters: bool = False  # the frozen control: block adapters never updated
    gain_batches: int = 16  # held-out batches for adapter_gain (forward passes only, so cheap)

    @property
    def frozen_groups(self) -> tuple[str, ...]:
        return ("layers",) if self.freeze_adapters else ()

    def with_fix(self, fix: str, scale: float | None) -> ArmConfig:
        return replace(self, model=replace(self.model, fix=fix, scale=scale))


def validate(cfg: ArmConfig) -> None:
    """Field-level checks that do not need a model (cheap, before anything is built or written)."""
    from ablate.model.fixes import parse_fix

    backbone_spec(cfg.model.backbone)
    parse_fix(cfg.model.fix, cfg.model.scale)
    checks = [
        ("steps", cfg.run.steps >= 1, "must be >= 1"),
        ("batches", cfg.probe_batches >= 1, "must be >= 1"),
        ("batches", cfg.probe_batches * cfg.data.batch_size <= EVAL_OFFSET, "too many probe images"),
        ("gain_batches", cfg.gain_batches >= 2, "must be >= 2 (one batch gives no interval)"),
        ("gain_batches", cfg.gain_batches * cfg.data.batch_size <= EVAL_OFFSET, "too many evaluation images"),
        ("batch_size", cfg.data.batch_size >= 1, "must be >= 1"),
        ("train_size", cfg.data.train_size >= cfg.data.batch_size, "must be >= batch_size"),
        ("lr", cfg.run.lr > 0, "must be > 0"),
        ("probe_every", cfg.run.probe_every >= 0, "must be >= 0"),
        ("threshold", 0 < cfg.run.threshold, "must be > 0"),
        ("anomaly_fraction", 0 <= cfg.data.anomaly_fraction <= 1, "must be in [0, 1]"),
    ]
    for name, ok, msg in checks:
        if not ok:
            raise AblateInputError(name, msg)


class ArmSetup:
    """The built pieces of an arm: device, model, data set, probe batches, training batch source."""

    def __init__(self, cfg: ArmConfig) -> None:
        validate(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        spec = backbone_spec(cfg.model.backbone)
        self.dataset = SyntheticAnomalyDataset(
            spec.image_size, cfg.data.seed, cfg.data.classes, cfg.data.anomaly_fraction
        )
        self.model: AAClipModel = build_model(cfg.model, self.dataset.classes, cfg.seed).to(self.device)
        # Held out from training, and different for every seed, so seeds are independent replicates.
        first = PROBE_INDEX_OFFSET + (cfg.seed % 10_000) * PROBE_SEED_STRIDE
        self.probe_batches = self._held_out(first, cfg.probe_batches)
        self.eval_batches = self._held_out(first + EVAL_OFFSET, cfg.gain_batches)
        self._order = torch.randperm(cfg.data.train_size, generator=torch.Generator().manual_seed(cfg.seed))

    def _held_out(self, first: int, n: int) -> list[Batch]:
        bs = self.cfg.data.batch_size
        return [self.dataset.batch(list(range(first + i * bs, first + (i + 1) * bs))).to(self.device) for i in range(n)]

    @property
    def fix_name(self) -> str:
        return self.model.fix.name

    @property
    def scale(self) -> float | None:
        return self.model.fix.scale

    def train_batch(self, step: int) -> Batch:
        bs, n = self.cfg.data.batch_size, self.cfg.data.train_size
        start = (step * bs) % n
        idx = [int(self._order[(start + j) % n]) for j in range(bs)]
        return self.dataset.batch(idx).to(self.device)


def probe_arm(cfg: ArmConfig) -> ProbeResult:
    """The paired gradient probe at initialisation for one fix."""
    setup = ArmSetup(cfg)
    return run_probe(
        setup.model,
        setup.probe_batches,
        setup.device,
        setup.fix_name,
        setup.scale,
        step=0,
        threshold=cfg.run.threshold,
        dropout=cfg.run.probe_dropout,
        rng_seed=cfg.seed,
        group=cfg.run.group,
    )


def train_arm(
    cfg: ArmConfig,
    on_flush: Callable[[StepRows], None] | None = None,
    on_probe: Callable[[ProbeResult], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    setup: ArmSetup | None = None,
) -> TrainResult:
    """Build the arm and run the short training; callbacks stream metrics and probes out."""
    setup = setup or ArmSetup(cfg)
    return train_run(
        setup.model,
        setup.train_batch,
        setup.probe_batches,
        replace(cfg.run, freeze=cfg.frozen_groups),
        setup.device,
        setup.fix_name,
        setup.scale,
        cfg.seed,
        on_flush=on_flush,
        on_probe=on_probe,
        on_step=on_step,
        eval_batches=setup.eval_batches,
    )
