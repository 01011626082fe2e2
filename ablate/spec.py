"""Study specification: TOML -> validated objects, with field-level errors (one line each).

A spec is the whole recipe of a study: backbone and weights, data, training, probe, the search
space over fix types and scales, objectives, sampler, seeds and the number of trials.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ablate.engine.arm import ArmConfig
from ablate.engine.device import DEVICE_CHOICES
from ablate.engine.fixes import NO_BRANCH, fix_names, parse_fix, unknown_fixes
from ablate.engine.loop import RunConfig
from ablate.errors import AblateInputError, SpecInputError, did_you_mean
from ablate.eval.metrics import DEFAULT_BINS
from ablate.objectives import DEFAULT_OBJECTIVES, EVAL_OBJECTIVES, OBJECTIVES
from ablate.subjects.aaclip.arm import AAClipSubjectConfig, DataConfig, EvalConfig
from ablate.subjects.aaclip.backbone import BACKBONES
from ablate.subjects.aaclip.data.folders import Source
from ablate.subjects.aaclip.data.names import datasets
from ablate.subjects.aaclip.data.sources import FolderConfig
from ablate.subjects.aaclip.model import AAClipConfig
from ablate.subjects.aaclip.stage1 import Stage1Config
from ablate.subjects.module.config import ModuleSubjectConfig, frozen_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Metrics a study may optimise, with the direction that is "better" (ablate/objectives.py defines them).
OBJECTIVE_DIRECTIONS: dict[str, str] = {name: o.direction for name, o in OBJECTIVES.items()}
# Raw ratios reward amplification (R > 1 beats R = 1); the dilution of the same ratio does not.
_RATIO_INSTEAD = {
    "grad_ratio_init": "dilution_init",
    "grad_ratio_mean": "dilution_bypass",
    "grad_ratio_final": "dilution_bypass",
    "train_grad_ratio": "dilution_train",
}
SAMPLERS = ("tpe", "nsga2", "random")


class _Strict(BaseModel):
    # allow_inf_nan=False: an infinite lr, threshold or scale bound is refused here, not mid-study.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ModelSection(_Strict):
    backbone: str = "tiny"
    pretrained: str | None = None
    inject_at: int = Field(0, ge=0)
    context_norm: bool = False
    adapter_weight: float = Field(0.1, gt=0, le=1)
    # Seed of a random-init backbone (ignored with pretrained weights): one network for every arm.
    backbone_seed: int = Field(0, ge=0)
    # QuickGELU in the backbone (what OpenAI's weights were trained with); AA-CLIP runs them with GELU.
    quick_gelu: bool = False
    # The detection cross-entropy's logits: AA-CLIP's raw cosines (1); 100 = CLIP's temperature.
    detection_logit_scale: float = Field(1.0, gt=0)
    # A Stage 1 text adapter checkpoint (ablate's or AA-CLIP's text_adapter.pth) instead of training one.
    text_adapter: str | None = Field(None, min_length=1)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        if v not in BACKBONES:
            raise ValueError(f"unknown backbone {v!r}; valid: {', '.join(BACKBONES)}")
        return v

    @model_validator(mode="after")
    def _inject_within_depth(self) -> ModelSection:
        depth = BACKBONES[self.backbone].depth
        if self.inject_at >= depth:
            raise ValueError(f"inject_at: must be in [0, {depth - 1}] for {self.backbone}, got {self.inject_at}")
        return self


_FOLDER_ONLY = ("root", "manifest", "split_csv", "classes", "real_names", "few_shot", "dataset", "shots_file")


class _FolderFields(_Strict):
    """Where a data set on disk lives (``kind``: its layout; ablate/subjects/aaclip/data/folders.py reads them)."""

    root: str | None = Field(None, min_length=1)  # mvtec, visa: the data set's folder
    manifest: str | None = Field(None, min_length=1)  # manifest: the JSON-lines file
    split_csv: str | None = Field(None, min_length=1)  # visa: default <root>/split_csv/1cls.csv
    classes: list[str] | None = None  # a subset of the classes, in this order; default: all
    # Which of AA-CLIP's data sets this is: its descriptive class names in the prompts
    # (ablate/subjects/aaclip/data/class_names.toml). Default: kind mvtec / visa, MVTec AD's / VisA's.
    dataset: str | None = None

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str | None) -> str | None:
        if v is not None and v not in datasets():
            raise ValueError(
                f"unknown data set {v!r}{did_you_mean(v, datasets())}; AA-CLIP names {', '.join(datasets())}"
            )
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v or any(not c.strip() for c in v):
                raise ValueError("must list class names (leave it out for every class)")
            if len(set(v)) != len(v):
                raise ValueError("lists a class twice")
        return v

    def _where(self, kind: str) -> None:
        if kind in ("mvtec", "visa") and self.root is None:
            raise ValueError(f"root: required for kind = {kind!r} (the data set's folder)")
        if kind == "manifest" and self.manifest is None:
            raise ValueError("manifest: required for kind = 'manifest' (a JSON-lines file)")
        if kind != "manifest" and self.manifest is not None:
            raise ValueError(f"manifest: only for kind = 'manifest', not {kind!r}")
        if kind == "manifest" and self.root is not None:
            raise ValueError("root: kind = 'manifest' reads the manifest's paths; give manifest, not root")
        if kind != "visa" and self.split_csv is not None:
            raise ValueError(f"split_csv: only for kind = 'visa', not {kind!r}")

    def source(self, kind: str, split: str, field: str) -> Source:
        where = self.manifest if kind == "manifest" else self.root
        assert where is not None
        classes = tuple(self.classes) if self.classes else None
        return Source(kind, where, split, classes, self.split_csv, field, self.dataset)


class DataSection(_FolderFields):
    # synthetic (default): generated textures; mvtec | visa | manifest: images on disk.
    kind: Literal["synthetic", "mvtec", "visa", "manifest"] = "synthetic"
    seed: int = Field(0, ge=0)
    batch_size: int = Field(2, ge=1, le=4096)  # AA-CLIP's Stage 2 batch
    train_size: int = Field(256, ge=1, le=10_000_000)  # synthetic only: the pool size
    anomaly_fraction: float = Field(0.5, ge=0, le=1)  # synthetic only
    # Folder data: the split trained on (default test: the one with anomalies and masks, as AA-CLIP).
    split: Literal["train", "test", "all"] = "test"
    real_names: dict[str, str] = Field(default_factory=dict)  # class -> the name the prompts use
    few_shot: int = Field(0, ge=0, le=1_000_000)  # k training images per class (data.seed); 0 = all
    # Training images: AA-CLIP's augmentation (default), flips and 90-degree rotations, or none;
    # true / false: the earlier key's flips / none.
    augment: Literal["aaclip", "flips", "none"] = "aaclip"
    workers: int = Field(2, ge=0, le=64)  # processes reading training images ahead; 0 = none
    # AA-CLIP's k-shot list (its dataset/metadata/<set>/<k>-shot.jsonl): the training images, instead
    # of the split's (ablate/subjects/aaclip/data/shots.py). Default: the split, few_shot drawn by seed.
    shots_file: str | None = Field(None, min_length=1)

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_bool(cls, v: object) -> object:
        return {True: "flips", False: "none"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("real_names")
    @classmethod
    def _real_names(cls, v: dict[str, str]) -> dict[str, str]:
        for k, name in v.items():
            if not name.strip():
                raise ValueError(f"the name of {k!r} is empty")
        return v

    @model_validator(mode="after")
    def _kind_fields(self) -> DataSection:
        if self.kind == "synthetic":
            for key in _FOLDER_ONLY:
                if getattr(self, key) not in (None, False, 0, {}):
                    raise ValueError(f"{key}: only for data on disk (kind = mvtec, visa or manifest)")
        else:
            self._where(self.kind)
        if self.shots_file is not None:
            if self.few_shot:
                raise ValueError("few_shot: give few_shot (a seeded draw) or shots_file (a fixed list), not both")
            if "split" in self.model_fields_set:
                raise ValueError("split: the shots_file names the training images; leave split out")
        return self

    def folders(self, eval_data: EvalDataSection | None) -> FolderConfig | None:
        if self.kind == "synthetic":
            return None
        return FolderConfig(
            train=self.source(self.kind, self.split, "data"),
            eval=None if eval_data is None else eval_data.source(eval_data.kind, eval_data.split, "eval_data"),
            real_names=tuple(sorted(self.real_names.items())),
            few_shot=self.few_shot,
            workers=self.workers,
            shots_file=self.shots_file,
        )


class EvalDataSection(_FolderFields):
    """The evaluation set when it differs from the training set (AA-CLIP: train VisA, test MVTec AD)."""

    kind: Literal["mvtec", "visa", "manifest"]
    split: Literal["train", "test", "all"] = "test"

    @model_validator(mode="after")
    def _kind_fields(self) -> EvalDataSection:
        self._where(self.kind)
        return self


class TrainingSection(_Strict):
    steps: int = Field(100, ge=1, le=1_000_000)
    lr: float = Field(5e-4, gt=0)
    device: str = "auto"
    # Arms trained side by side in one forward/backward over the shared frozen backbone; results
    # equal unpacked ones to float tolerance. 1 = one at a time. Up to the number of seeds it packs a
    # trial's seeds (and the references'); at 2x the seeds or more, pack // seeds trials of one fix
    # type train together (StudySpec.trials_per_pack).
    pack: int = Field(1, ge=1, le=64)
    compile: bool = False  # torch.compile the training step (GPU; the first steps pay the compile)
    # fp32: AA-CLIP's own precision (exact parity); tf32: TF32 matrix products on CUDA; bf16: bfloat16
    # autocast, an order of magnitude faster on an H100/H200 (docs/parity.md says what it changes).
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if v not in DEVICE_CHOICES:
            raise ValueError(f"must be one of {', '.join(DEVICE_CHOICES)}")
        return v


class ProbeSection(_Strict):
    batches: int = Field(6, ge=2)  # >= 2: one batch gives no interval
    every: int = Field(50, ge=0)
    threshold: float = Field(0.8, gt=0)
    # The adapter group verdicts, adapter_gain, the dilution objectives and the frozen control judge:
    # one of the subject's groups or "all" (their union). Default: the subject's first group (AA-CLIP:
    # "layers", the block adapters; "proj" are its projections, "all" both: the seed's "image adapter").
    group: str | None = None
    # Held-out batches adapter_gain is measured on (forward passes only; more = less noise per seed).
    gain_batches: int = Field(16, ge=2)


class EvalSection(_Strict):
    """The end-of-run evaluation: image- and pixel-level AUROC and AP per class (ablate/eval).

    ``enabled`` unset: on for data on disk (the whole evaluation set), off for synthetic data (it
    keeps the quick study quick; ``batches`` test batches of ``data.batch_size`` images there, the
    same fixed set for every seed and arm).
    """

    enabled: bool | None = None
    batches: int = Field(8, ge=1, le=100_000)
    bins: int = Field(DEFAULT_BINS, ge=2, le=2**20)
    # aaclip: AA-CLIP's test maps and class-normalised image scores; softmax: probability maps and
    # 0.5 (detection probability + map maximum) (ablate/subjects/aaclip/scoring.py).
    scoring: Literal["aaclip", "softmax"] = "aaclip"
    domain: Literal["industrial", "medical"] = "industrial"  # AA-CLIP's blur and image score per domain
    # exact: pixel AUROC / AP as scikit-learn computes them (AA-CLIP's), the maps spilled to a temporary
    # folder; binned: eval.bins histogram bins per class over its observed range, no disk.
    pixel_metrics: Literal["exact", "binned"] = "exact"
    # > 0: evaluate every this many steps too, each a step row (eval/<metric>); AA-CLIP scores every
    # epoch's checkpoint. 0: at the end only.
    every: int = Field(0, ge=0, le=10_000_000)


class Stage1Section(_Strict):
    """AA-CLIP Stage 1: the text adapter, trained once per seed before that seed's Stage 2 arms
    (ablate/subjects/aaclip/stage1.py). Off: the frozen CLIP's text embeddings (AA-CLIP's
    text_epoch = 0). ``model.text_adapter`` loads a checkpoint instead of training."""

    enabled: bool = True
    epochs: int = Field(5, ge=1, le=100_000)
    steps: int = Field(0, ge=0, le=10_000_000)  # > 0: this many steps instead of the epochs
    lr: float = Field(1e-5, gt=0)
    batch_size: int = Field(16, ge=1, le=4096)
    orthogonal_weight: float = Field(0.1, ge=0)
    # AA-CLIP's value-value attention mixes the images of a batch ("batch", its code as it runs);
    # "tokens" attends within each image.
    surgery_attention: Literal["batch", "tokens"] = "batch"

    def config(self) -> Stage1Config:
        return Stage1Config(
            epochs=self.epochs,
            steps=self.steps,
            lr=self.lr,
            batch_size=self.batch_size,
            orthogonal_weight=self.orthogonal_weight,
            surgery_attention=self.surgery_attention,
        )


class ScaleRange(_Strict):
    min: float = Field(1e-5, ge=0)
    max: float = Field(1.0, gt=0)
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> ScaleRange:
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        if self.log and self.min <= 0:
            raise ValueError("a log-scale range needs min > 0")
        return self

    def contains(self, v: float) -> bool:
        return self.min <= v <= self.max


class SearchSection(_Strict):
    fixes: list[str] = Field(default_factory=lambda: fix_names(include_reference=False))
    scale: ScaleRange = Field(default_factory=ScaleRange)
    scale_per_fix: dict[str, ScaleRange] = Field(default_factory=dict)

    @field_validator("fixes")
    @classmethod
    def _valid_fixes(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one fix")
        unknown = unknown_fixes(v)  # every unknown name at once, each with the close one
        if unknown is not None:
            raise ValueError(unknown)
        for name in v:
            try:
                parse_fix(name)
            except AblateInputError as exc:
                raise ValueError(exc.message) from None
            if name == NO_BRANCH:
                raise ValueError("'no-branch' is the baseline every study runs; leave it out of the search")
        if len(set(v)) != len(v):
            raise ValueError("lists a fix twice")
        return v

    @model_validator(mode="after")
    def _ranges_fit(self) -> SearchSection:
        for name in self.scale_per_fix:
            if name not in self.fixes:
                raise ValueError(f"scale_per_fix: names {name!r}, which is not in fixes")
        for name in self.fixes:
            choice = parse_fix(name)
            if choice.scale is None:
                continue
            rng = self.range_for(name)
            if not rng.contains(choice.scale):
                where = f"scale_per_fix.{name}" if name in self.scale_per_fix else "scale"
                # (a registry hint always holds its own default, so "scale" is the shared range)
                raise ValueError(
                    f"{where}: the default scale {choice.scale} of {name!r} lies outside "
                    f"[{rng.min}, {rng.max}]; give {name!r} its own range in scale_per_fix"
                )
        return self

    def range_for(self, fix: str) -> ScaleRange:
        """The fix's own range if the spec gives one, else the registry's hint, else the shared range."""
        if fix in self.scale_per_fix:
            return self.scale_per_fix[fix]
        join = parse_fix(fix).join
        if join is not None and join.search_range is not None:
            lo, hi, log = join.search_range
            return ScaleRange(min=lo, max=hi, log=log)
        return self.scale


class StudySection(_Strict):
    trials: int = Field(12, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0])
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    sampler_seed: int = Field(0, ge=0)  # Optuna's samplers (numpy) refuse negative seeds
    objectives: list[str] = Field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    # Reference arms run once per seed beside the no-branch baseline: the block adapters frozen
    # (no branch), the known-bad case every objective should score below the baseline.
    frozen_control: bool = True
    # Single-objective mode: keep the ratio as a constraint instead (the seed's 0.8).
    constraint_metric: str | None = None
    constraint_min: float | None = None
    pruning: bool = False

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("must list at least one seed")
        if len(set(v)) != len(v):
            raise ValueError("lists a seed twice")
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        if not 1 <= len(v) <= 2:
            raise ValueError("give one or two objectives")
        for m in v:
            if m in _RATIO_INSTEAD:
                raise ValueError(
                    f"{m!r} rewards amplification (a ratio above 1 would rank better than 1); "
                    f"use {_RATIO_INSTEAD[m]!r}, which measures the shortfall from 1"
                )
            if m not in OBJECTIVE_DIRECTIONS:
                raise ValueError(f"unknown objective {m!r}; valid: {', '.join(OBJECTIVE_DIRECTIONS)}")
        if len(set(v)) != len(v):
            raise ValueError("lists an objective twice")
        return v

    @model_validator(mode="after")
    def _modes(self) -> StudySection:
        if (self.constraint_metric is None) != (self.constraint_min is None):
            raise ValueError("constraint_metric and constraint_min go together")
        if self.constraint_metric is not None and self.constraint_metric not in OBJECTIVE_DIRECTIONS:
            raise ValueError(f"constraint_metric: unknown metric {self.constraint_metric!r}")
        if self.pruning and len(self.objectives) != 1:
            raise ValueError("pruning: Optuna prunes single-objective studies only; set one objective")
        if self.pruning and not OBJECTIVES[self.objectives[0]].intermediate:
            # The pruner must read the quantity the objective optimises; only these have one mid-run.
            ok = ", ".join(n for n, o in OBJECTIVES.items() if o.intermediate)
            raise ValueError(
                f"pruning: {self.objectives[0]!r} is only known at the end of a run; pruning needs one of {ok}"
            )
        return self

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVE_DIRECTIONS[m] for m in self.objectives]


# A subject's group names become column names (train_grad_ratio_<group>, ...): identifiers, and none
# of the words those names already use.
GROUP_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"
RESERVED_GROUPS = ("all", "branch", "lo", "hi", "init", "with", "without")
_REFERENCE = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"  # "module:attr"
AACLIP_SECTIONS = ("model", "data", "eval_data", "eval", "stage1")
AACLIP_GROUPS = ("layers", "proj")


class BranchSection(_Strict):
    """Where the injected branch joins the user's model, and how it is built."""

    at: str = Field(min_length=1)  # module path: the branch joins this module's output x
    build: str = Field(pattern=_REFERENCE)  # (model) -> nn.Module computing c from x (same shape as x)
    output: int | None = Field(None, ge=0)  # which element of a tuple output is the stream
    zero: str | None = Field(None, min_length=1)  # the branch's module zero-init zeroes (default: its last Linear/Conv)


class SubjectSection(_Strict):
    """A user's own ``nn.Module`` as the subject (instead of AA-CLIP's ``[model]``)."""

    factory: str = Field(pattern=_REFERENCE)  # module:function -> nn.Module; kwargs from [subject.args]
    batches: str = Field(pattern=_REFERENCE)  # (seed, split, batch_size) -> iterator of batches
    loss: str = Field(pattern=_REFERENCE)  # (model, batch) -> scalar loss tensor
    path: str | None = Field(None, min_length=1)  # prepended to sys.path; default: the spec's folder
    batch_size: int = Field(8, ge=1, le=1_000_000)
    args: dict[str, Any] = Field(default_factory=dict)
    groups: dict[str, list[str]]
    branch: BranchSection
    # Seed of the frozen weights every arm shares (the factory is called with it once; each arm's
    # groups and branch come from a call with the arm's own seed).
    backbone_seed: int = Field(0, ge=0)

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        import re

        if not v:
            raise ValueError("name at least one group of parameters to watch")
        for name, patterns in v.items():
            if not re.match(GROUP_NAME, name):
                raise ValueError(f"{name}: a group name is a letter followed by letters, digits or _")
            if name in RESERVED_GROUPS:
                raise ValueError(f"{name}: reserved ({', '.join(RESERVED_GROUPS)}); choose another name")
            if not patterns or any(not p.strip() for p in patterns):
                raise ValueError(f"{name}: list at least one name or 're:' pattern")
            for pat in patterns:
                if pat.startswith("re:"):
                    try:
                        re.compile(pat[3:])
                    except re.error as exc:
                        raise ValueError(f"{name}: {pat!r} is not a valid regular expression ({exc})") from None
        return v


class StudySpec(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    subject: SubjectSection | None = None  # a user's own model; without it the subject is AA-CLIP
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    eval_data: EvalDataSection | None = None
    training: TrainingSection = Field(default_factory=TrainingSection)
    probe: ProbeSection = Field(default_factory=ProbeSection)
    search: SearchSection = Field(default_factory=SearchSection)
    study: StudySection = Field(default_factory=StudySection)
    eval: EvalSection = Field(default_factory=EvalSection)
    stage1: Stage1Section = Field(default_factory=Stage1Section)

    _source_dir: str | None = PrivateAttr(None)  # the spec file's folder: a subject's default path

    @model_validator(mode="after")
    def _subject_sections(self) -> StudySpec:
        if self.subject is not None:
            given = [k for k in AACLIP_SECTIONS if k in self.model_fields_set]
            if given:
                raise ValueError(
                    f"{given[0]}: a spec with [subject] names its own model; "
                    f"[{'], ['.join(AACLIP_SECTIONS)}] are the AA-CLIP subject's"
                )
        group = self.probe.group
        if group is not None and group not in (*self.groups, "all"):
            valid = ", ".join((*self.groups, "all"))
            raise ValueError(f"probe.group: {group!r} is not one of this subject's groups ({valid})")
        return self

    @property
    def subject_kind(self) -> str:
        """The registered subject this spec studies (ablate/subjects/__init__.py)."""
        return "module" if self.subject is not None else "aaclip"

    @property
    def groups(self) -> tuple[str, ...]:
        """The subject's disjoint adapter groups, in order (their union is "all")."""
        return tuple(self.subject.groups) if self.subject is not None else AACLIP_GROUPS

    @property
    def judged_group(self) -> str:
        return self.probe.group if self.probe.group is not None else self.groups[0]

    @model_validator(mode="after")
    def _evaluated_objectives(self) -> StudySpec:
        if not self.evaluates:
            for m in [*self.study.objectives, self.study.constraint_metric]:
                if m in EVAL_OBJECTIVES:
                    raise ValueError(f"study.objectives: {m!r} needs the evaluation; set eval.enabled = true")
            if self.eval.every:
                raise ValueError("eval.every: needs the evaluation; set eval.enabled = true")
        return self

    @model_validator(mode="after")
    def _enough_distinct_trials(self) -> StudySpec:
        if self.eval_data is not None and self.data.kind == "synthetic":
            raise ValueError("eval_data: needs data on disk for training too (data.kind = mvtec, visa or manifest)")
        limit = self.max_distinct_trials
        if limit is not None and self.study.trials > limit:
            raise ValueError(f"study.trials: {self.distinct_limit_message(self.study.trials)}")
        return self

    @property
    def max_distinct_trials(self) -> int | None:
        """How many distinct parameter sets the search has; None when a scale is searched (unbounded)."""
        fixes = self.search.fixes
        return None if any(parse_fix(f).scale is not None for f in fixes) else len(fixes)

    def distinct_limit_message(self, trials: int) -> str:
        return (
            f"{trials} trials asked, but no fix in search.fixes takes a scale, so the search has only "
            f"{self.max_distinct_trials} distinct parameter sets (a study never repeats one; seeds are the replicates)"
        )

    @property
    def trials_per_pack(self) -> int:
        """Trials trained together: ``training.pack // len(seeds)`` (at least 1); every seed of each."""
        return max(1, self.training.pack // len(self.study.seeds))

    @property
    def trains_stage1(self) -> bool:
        """Whether the study trains a text adapter per seed (Stage 1 on, no checkpoint given)."""
        return self.subject is None and self.stage1.enabled and self.model.text_adapter is None

    @property
    def evaluates(self) -> bool:
        """Whether runs end with the AUROC/AP evaluation: ``eval.enabled``, else on for data on disk."""
        return self.eval.enabled if self.eval.enabled is not None else self.data.kind != "synthetic"

    def subject_config(self) -> Any:
        """The subject's own config object (``ArmConfig.subject``): AA-CLIP's, or the user model's."""
        if self.subject is not None:
            return self._module_config(self.subject)
        return AAClipSubjectConfig(
            model=AAClipConfig(
                backbone=self.model.backbone,
                pretrained=self.model.pretrained,
                inject_at=self.model.inject_at,
                context_norm=self.model.context_norm,
                adapter_weight=self.model.adapter_weight,
                backbone_seed=self.model.backbone_seed,
                quick_gelu=self.model.quick_gelu,
                detection_logit_scale=self.model.detection_logit_scale,
                text_adapter=self.model.text_adapter,
            ),
            data=DataConfig(
                seed=self.data.seed,
                batch_size=self.data.batch_size,
                train_size=self.data.train_size,
                anomaly_fraction=self.data.anomaly_fraction,
                folders=self.data.folders(self.eval_data),
                augment=self.data.augment,
            ),
            eval=EvalConfig(
                enabled=self.evaluates,
                batches=self.eval.batches,
                bins=self.eval.bins,
                scoring=self.eval.scoring,
                domain=self.eval.domain,
                pixel_metrics=self.eval.pixel_metrics,
                every=self.eval.every,
            ),
            stage1=self.stage1.config() if self.trains_stage1 else None,
        )

    def _module_config(self, sub: SubjectSection) -> ModuleSubjectConfig:
        here = Path(self._source_dir or ".")
        path = str((here / sub.path).resolve()) if sub.path is not None else str(here.resolve())
        return ModuleSubjectConfig(
            factory=sub.factory,
            batches=sub.batches,
            loss=sub.loss,
            groups=tuple((name, tuple(patterns)) for name, patterns in sub.groups.items()),
            branch_at=sub.branch.at,
            branch_build=sub.branch.build,
            path=path,
            batch_size=sub.batch_size,
            args=tuple(sorted((k, frozen_value(v)) for k, v in sub.args.items())),
            branch_output=sub.branch.output,
            branch_zero=sub.branch.zero,
            backbone_seed=sub.backbone_seed,
        )

    def arm(self, fix: str, scale: float | None, seed: int, frozen: bool = False) -> ArmConfig:
        """The engine's config for one arm of this study (``frozen``: the frozen control)."""
        return ArmConfig(
            subject=self.subject_config(),
            fix=fix,
            scale=scale,
            run=RunConfig(
                steps=self.training.steps,
                lr=self.training.lr,
                probe_every=self.probe.every,
                threshold=self.probe.threshold,
                group=self.judged_group,
                compile=self.training.compile,
                precision=self.training.precision,
            ),
            probe_batches=self.probe.batches,
            seed=seed,
            device=self.training.device,
            frozen=frozen,
            gain_batches=self.probe.gain_batches,
        )

    def with_source(self, folder: str | Path | None) -> StudySpec:
        """This spec, remembering the folder its file is in (a subject's ``path`` is relative to it)."""
        self._source_dir = None if folder is None else str(folder)
        return self


def _inner(annotation: object) -> tuple[type[BaseModel] | None, bool]:
    """(the model a field holds, whether a dict key comes first): ``X | None`` and ``dict[str, X]``."""
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is dict:
        model, _ = _inner(args[-1])
        return model, True
    if args and typing.get_origin(annotation) is not list:
        return _inner(args[0])
    is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return (annotation if is_model else None), False


def known_keys(loc: list[str]) -> list[str]:
    """The keys the spec allows beside the last key of ``loc`` (its siblings), for "did you mean"."""
    model: type[BaseModel] | None = StudySpec
    skip_key = False
    for part in loc[:-1]:
        if skip_key:
            skip_key = False
            continue
        if model is None or part not in model.model_fields:
            return []
        model, skip_key = _inner(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None and not skip_key else []


def _first_error(exc: ValidationError) -> AblateInputError:
    e = exc.errors()[0]
    loc = [str(p) for p in e["loc"]]
    msg = str(e["msg"]).removeprefix("Value error, ")
    bound = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if e["type"] in bound:
        limit = next(iter((e.get("ctx") or {}).values()), "?")
        msg = f"must be {bound[e['type']]} {limit}, got {e.get('input')!r}"
    elif e["type"] == "extra_forbidden":
        msg = "unknown key" + did_you_mean(loc[-1], known_keys(loc))
    elif e["type"] == "missing":
        msg = "required"
    # A model-level check may already name a sub-field in its message ("scale: ...").
    if ": " in msg and msg.split(": ", 1)[0].replace(".", "").replace("-", "").replace("_", "").isalnum():
        head, rest = msg.split(": ", 1)
        if " " not in head:
            loc, msg = [*loc, head], rest
    return SpecInputError(".".join(loc) or "spec", msg)


def parse_spec(text: str, default_name: str = "study") -> StudySpec:
    """Parse and validate spec text; raises AblateInputError naming the first bad field."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecInputError("spec", f"not valid TOML: {exc}") from None
    raw.setdefault("name", default_name)
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc) from None


def load_spec(path: str | Path) -> tuple[StudySpec, str]:
    """(validated spec, its exact text) from a TOML file; the text is what the database keeps."""
    p = Path(path)
    if not p.is_file():
        raise AblateInputError("SPEC", f"no such file: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AblateInputError("SPEC", f"{p} is not UTF-8 text (byte {exc.start}); a spec is a TOML file") from None
    return parse_spec(text, default_name=p.stem).with_source(p.resolve().parent), text


def spec_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Command-line overrides of a spec: the option each spec key answers to in error messages.
_OVERRIDE_OPTIONS = {
    "data.root": "--data",
    "data.manifest": "--data",
    "data.kind": "--data-kind",
    "eval_data.root": "--eval-data",
    "eval_data.manifest": "--eval-data",
    "eval_data.kind": "--eval-data-kind",
    "eval_data": "--eval-data",
    "model.pretrained": "--pretrained",
}
DATA_KINDS = ("mvtec", "visa", "manifest")


def _data_block(current: dict, where: str | None, kind: str | None, option: str) -> dict:
    from ablate.subjects.aaclip.data.folders import detect_kind

    if kind is not None and kind not in DATA_KINDS:
        raise AblateInputError(f"{option}-kind", f"must be one of {', '.join(DATA_KINDS)}, got {kind!r}")
    if where is None:
        if kind is None:
            return current
        where = current.get("manifest") or current.get("root")
        if where is None:
            raise AblateInputError(option, f"give the data set's location with {option} along with {option}-kind")
    if not where.strip():
        raise AblateInputError(option, "must not be empty")
    old = current.get("kind")
    kind = kind or (old if old not in (None, "synthetic") else detect_kind(where))
    out = {**current, "kind": kind, "root": None, "manifest": None}
    out["manifest" if kind == "manifest" else "root"] = where
    if kind != "visa":
        out["split_csv"] = None
    return out


def with_overrides(
    spec: StudySpec,
    text: str,
    data: str | None = None,
    data_kind: str | None = None,
    eval_data: str | None = None,
    eval_data_kind: str | None = None,
    pretrained: str | None = None,
) -> tuple[StudySpec, str]:
    """The spec with ``study run``'s --data/--eval-data/--pretrained applied, and its text with the
    overrides appended as comments (so the database records them and a study run on other data has
    another spec hash). Errors name the option, not the spec key."""
    given = {"--data": data, "--data-kind": data_kind, "--eval-data": eval_data, "--eval-data-kind": eval_data_kind}
    given["--pretrained"] = pretrained
    if all(v is None for v in given.values()):
        return spec, text
    if spec.subject is not None:
        flag = next(k for k, v in given.items() if v is not None)
        raise AblateInputError(flag, "applies to the AA-CLIP subject; this spec names its own model in [subject]")
    raw = spec.model_dump(exclude_unset=True, exclude_none=True)
    raw["data"] = _data_block(raw.get("data", {}), data, data_kind, "--data")
    if eval_data is not None or eval_data_kind is not None:
        raw["eval_data"] = _data_block(raw.get("eval_data", {}), eval_data, eval_data_kind, "--eval-data")
    if pretrained is not None:
        if not pretrained.strip():
            raise AblateInputError("--pretrained", "must not be empty")
        raw.setdefault("model", {})["pretrained"] = pretrained
    for block in ("data", "eval_data"):
        if block in raw:
            raw[block] = {k: v for k, v in raw[block].items() if v is not None}
    try:
        new = StudySpec.model_validate(raw)
    except ValidationError as exc:
        err = _first_error(exc)
        raise AblateInputError(_OVERRIDE_OPTIONS.get(err.field, err.field), err.message) from None
    new.with_source(spec._source_dir)
    note = ", ".join(f"{k} {v!r}" for k, v in given.items() if v is not None)
    return new, text.rstrip("\n") + f"\n# command-line overrides: {note}\n"


def override_option(field: str) -> str | None:
    """The CLI option that set a spec key, for an error raised after the overrides were applied."""
    return _OVERRIDE_OPTIONS.get(field)


# ``ablate probe`` / ``ablate train`` options -> the spec key each sets (AA-CLIP's own options apply
# to the AA-CLIP subject only; --batch-size sets subject.batch_size for a [subject] spec).
COMMAND_OPTIONS = {
    "--steps": "training.steps",
    "--device": "training.device",
    "--batches": "probe.batches",
    "--probe-every": "probe.every",
    "--threshold": "probe.threshold",
    "--group": "probe.group",
    "--batch-size": "data.batch_size",
    "--backbone": "model.backbone",
    "--pretrained": "model.pretrained",
    "--context-norm": "model.context_norm",
    "--inject-at": "model.inject_at",
    "--eval-batches": "eval.batches",
}


def command_spec(path: str | None, options: dict[str, Any]) -> StudySpec:
    """The spec ``ablate probe`` and ``ablate train`` run on: the file's (without one, AA-CLIP with
    the spec defaults), with the command-line ``options`` set (``{"--steps": 100, ...}``; None = not
    given). Errors name the option that set a key, else the spec key."""
    if path is not None:
        spec, _ = load_spec(path)
        raw = spec.model_dump(exclude_unset=True)
        source = spec._source_dir
    else:
        raw, source = {"name": "command-line"}, None
    module = "subject" in raw
    owner: dict[str, str] = {}
    for option, value in options.items():
        if value is None:
            continue
        key = COMMAND_OPTIONS[option]
        if module and key.startswith(tuple(f"{s}." for s in AACLIP_SECTIONS)):
            if option != "--batch-size":
                raise AblateInputError(option, "applies to the AA-CLIP subject; this spec names its own model")
            key = "subject.batch_size"
        if option == "--eval-batches":
            if module:
                continue
            raw.setdefault("eval", {})["enabled"] = value > 0
            value = max(value, 1)
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
        owner[key] = option
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        err = _first_error(exc)
        raise AblateInputError(owner.get(err.field, err.field), err.message) from None
    return spec.with_source(source)
