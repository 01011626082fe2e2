"""The AA-CLIP Stage 2 subject: frozen open_clip ViT + image adapters + the injected branch.

One readable model file with a config dataclass (nanoGPT's habit). Everything AA-CLIP specific
lives here; the probe and the training loop see only the ``Subject`` interface
(ablate/engine/subject.py): two parameter groups, a branch-bypass switch, and a loss.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ablate.engine.dropout import DropoutStream
from ablate.engine.fixes import FixChoice, parse_fix
from ablate.errors import AblateInputError
from ablate.subjects.aaclip.backbone import backbone_spec, build_clip, encode_prompts
from ablate.subjects.aaclip.layers import CrossAttentionBranch, ImageAdapter
from ablate.subjects.aaclip.loss import stage2_loss
from ablate.subjects.aaclip.prompts import class_prompts

LOGIT_SCALE = 100.0  # AA-CLIP's fixed temperature on cosine similarities


@dataclass(frozen=True)
class AAClipConfig:
    backbone: str = "tiny"
    pretrained: str | None = None  # None | local checkpoint | cached open_clip tag
    fix: str = "none"
    scale: float | None = None  # None = the fix's default
    inject_at: int = 0  # the branch joins after this block (0-based)
    adapter_layers: int | None = None  # None = the backbone's default (AA-CLIP: 6)
    levels: tuple[int, ...] | None = None  # None = the backbone's default (AA-CLIP: 6, 12, 18, 24)
    adapter_weight: float = 0.1
    context_norm: bool = False  # L2-normalise each text-context token (the seed's were ~17)
    branch_heads: int = 8
    branch_dropout: float = 0.1
    # Seed of a randomly initialised backbone. Not the arm's seed: like pretrained weights, the frozen
    # backbone is one fixed network for every seed and arm, so packed arms can share it.
    backbone_seed: int = 0

    def shared_part(self) -> tuple:
        """What arms must agree on to share one frozen backbone (and so train packed)."""
        return (self.backbone, self.pretrained, self.backbone_seed, self.context_norm)


@dataclass
class ForwardOut:
    seg_logits: list[torch.Tensor]  # per level [n, 2, h, w]; n = arms x batch when packed
    det_logits: torch.Tensor  # [n, 2]
    final_features: torch.Tensor  # [n, N, E], L2-normalised, last level
    norm_inflation: torch.Tensor | None  # [arms] (0-d for one model), at the injection point; None = branch off


@dataclass
class SharedBackbone:
    """The frozen CLIP and the class prompts encoded by it: built once, shared by every arm of a pack."""

    clip: nn.Module
    classes: list[str]
    text_embeds: torch.Tensor  # [C, E, 2]
    text_context: torch.Tensor  # [C, 16*77, d_txt]


def build_backbone(cfg: AAClipConfig, classes: Sequence[str]) -> SharedBackbone:
    import open_clip

    torch.manual_seed(cfg.backbone_seed)
    clip = build_clip(backbone_spec(cfg.backbone), cfg.pretrained)
    embeds, contexts = [], []
    with torch.no_grad():
        for name in classes:
            normal, abnormal = class_prompts(name)
            emb, ctx = encode_prompts(clip, open_clip.tokenize(normal + abnormal))
            t = torch.stack([emb[: len(normal)].mean(0), emb[len(normal) :].mean(0)], dim=-1)
            embeds.append(F.normalize(t, dim=0))
            ctx = ctx.reshape(-1, ctx.shape[-1])
            contexts.append(F.normalize(ctx, dim=-1) if cfg.context_norm else ctx)
    return SharedBackbone(clip, list(classes), torch.stack(embeds), torch.stack(contexts))


class _AAClipBase(nn.Module):
    """The forward pass over the frozen blocks; subclasses supply the trainable per-arm pieces.

    The stream is [n, L, D] through the frozen blocks (n = arms x batch when packed, so the backbone
    sees one stacked batch); the hooks ``_join_branch``, ``_adapt`` and ``_heads`` apply each arm's own
    modules to its slice.
    """

    n_arms = 1
    adapter_layers: int
    levels: tuple[int, ...]
    grid: int
    inject_at: int

    def _init_shared(self, shared: SharedBackbone) -> None:
        self.clip = shared.clip
        self.classes = list(shared.classes)
        self.register_buffer("text_embeds", shared.text_embeds, persistent=False)
        self.register_buffer("text_context", shared.text_context, persistent=False)
        self.branch_active = True

    @property
    def has_branch(self) -> bool:
        return self.branch is not None

    def train(self, mode: bool = True) -> _AAClipBase:
        super().train(mode)
        self.clip.eval()  # the frozen backbone never switches to training behaviour
        return self

    @contextlib.contextmanager
    def branch_bypassed(self) -> Iterator[None]:
        """Run with the branch skipped on the same weights: the probe's 'without' arm."""
        prev, self.branch_active = self.branch_active, False
        try:
            yield
        finally:
            self.branch_active = prev

    @contextlib.contextmanager
    def dropout_seeded(self, seeds: Sequence[int]) -> Iterator[None]:
        """Draw dropout from ``seeds[a]`` for arm a inside the block (each arm's stream restored after)."""
        device = self.text_embeds.device
        states = [s.reseed(seed, device) for s, seed in zip(self.dropout_streams, seeds)]
        try:
            yield
        finally:
            for s, state in zip(self.dropout_streams, states):
                s.restore(state, device)

    def forward(self, images: torch.Tensor, class_idx: torch.Tensor) -> ForwardOut:
        visual = self.clip.visual
        images = images.reshape(-1, *images.shape[-3:])
        class_idx = class_idx.reshape(-1)
        x = visual._embeds(images)
        use_branch = self.branch is not None and self.branch_active
        level_set = set(self.levels)
        feats: list[torch.Tensor] = []
        inflation = None
        for i, block in enumerate(visual.transformer.resblocks):
            x = block(x)
            if use_branch and i == self.inject_at:
                x, inflation = self._join_branch(x, self.text_context[class_idx].to(x.dtype))
            if i < self.adapter_layers:
                x = self._adapt(i, x)
            if (i + 1) in level_set:
                feats.append(x)
        text = self.text_embeds[class_idx]  # [n, E, 2]
        seg_logits, final = [], None
        n = images.shape[0]
        for level, f in enumerate(feats):
            f = F.normalize(self._seg_proj(level, visual.ln_post(f[:, 1:])), dim=-1)
            logits = LOGIT_SCALE * torch.bmm(f, text.to(f.dtype))  # [n, N, 2]
            seg_logits.append(logits.transpose(1, 2).reshape(n, 2, self.grid, self.grid))
            final = f
        pooled = visual.ln_post(feats[-1][:, 1:]).mean(dim=1)
        det = F.normalize(self._det_proj(pooled), dim=-1)
        det_logits = LOGIT_SCALE * torch.bmm(det.unsqueeze(1), text.to(det.dtype)).squeeze(1)
        return ForwardOut(seg_logits, det_logits, final, inflation)

    def compute_loss(self, batch) -> tuple[torch.Tensor, ForwardOut]:
        """Loss per arm ([arms]; 0-d for one model) on a batch (packed: [arms, B, ...] tensors)."""
        out = self(batch.images, batch.class_idx)
        masks, labels = batch.masks.reshape(-1, *batch.masks.shape[-2:]), batch.labels.reshape(-1)
        loss = stage2_loss(out.seg_logits, out.det_logits, masks, labels, self.n_arms)
        return (loss if self.n_arms > 1 else loss[0]), out

    @torch.no_grad()
    def anomaly_scores(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly maps [n, H, W], image scores [n]), probabilities in [0, 1]; n = arms x batch.

        Map: per level the abnormal probability ``softmax(seg_logits)[:, 1]`` (the loss's p),
        upsampled bilinearly to the mask size, then the mean over levels (AA-CLIP's test averages
        its levels; its Gaussian smoothing of the map is left out). Image score: the mean of the
        detection head's abnormal probability and the map's maximum, so a defect the detection
        token misses but the map finds still raises the score (the usual fusion in CLIP anomaly
        detectors, e.g. AnomalyCLIP).
        """
        out = self(batch.images, batch.class_idx)
        size = batch.masks.shape[-2:]
        maps = [
            F.interpolate(torch.softmax(lg.float(), dim=1), size=size, mode="bilinear", align_corners=False)[:, 1]
            for lg in out.seg_logits
        ]
        amap = torch.stack(maps).mean(0)
        det = torch.softmax(out.det_logits.float(), dim=-1)[:, 1]
        return amap, 0.5 * (det + amap.flatten(1).amax(1))

    # --- the per-arm pieces ----------------------------------------------------------------
    def _join_branch(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _adapt(self, i: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _seg_proj(self, level: int, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _det_proj(self, pooled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class AAClipModel(_AAClipBase):
    """One arm: the frozen backbone, its adapters, projections and (unless no-branch) the branch."""

    def __init__(
        self, cfg: AAClipConfig, classes: Sequence[str], seed: int = 0, shared: SharedBackbone | None = None
    ) -> None:
        super().__init__()
        spec = backbone_spec(cfg.backbone)
        self.cfg = cfg
        self.seed = seed
        self.fix: FixChoice = parse_fix(cfg.fix, cfg.scale)
        self._init_shared(shared if shared is not None else build_backbone(cfg, classes))
        visual = self.clip.visual
        depth = len(visual.transformer.resblocks)
        d_img = visual.transformer.width
        d_txt = self.clip.transformer.width
        embed = self.clip.text_projection.shape[-1]
        self.adapter_layers = spec.adapter_layers if cfg.adapter_layers is None else cfg.adapter_layers
        self.levels = tuple(spec.levels if cfg.levels is None else cfg.levels)
        if not 0 <= cfg.inject_at < depth:
            raise AblateInputError("inject_at", f"must be in [0, {depth - 1}] for {spec.name}")
        if not 0 <= self.adapter_layers <= depth:
            raise AblateInputError("adapter_layers", f"must be in [0, {depth}] for {spec.name}")
        if not self.levels or any(not 1 <= lv <= depth for lv in self.levels):
            raise AblateInputError("levels", f"each level must be in [1, {depth}] for {spec.name}")
        self.inject_at = cfg.inject_at
        self.image_size = spec.image_size
        self.grid = visual.grid_size[0]

        torch.manual_seed(seed)
        self.adapters = nn.ModuleList(ImageAdapter(d_img, cfg.adapter_weight) for _ in range(self.adapter_layers))
        self.seg_proj = nn.ModuleList(nn.Linear(d_img, embed) for _ in self.levels)
        self.det_proj = nn.Linear(d_img, embed)

        # The branch draws from its own RNG stream so every arm with the same seed shares the
        # adapter initialisation: the pairing the comparison rests on.
        torch.manual_seed(seed + 1_000_003)
        self.branch: CrossAttentionBranch | None = None
        self.join: nn.Module | None = None
        if self.fix.has_branch:
            self.branch = CrossAttentionBranch(d_img, d_txt, cfg.branch_heads, cfg.branch_dropout)
            if self.fix.zero_init:
                self.branch.zero_output()
            self.join = self.fix.build_join(d_img)
        self.dropout_streams = [DropoutStream(seed + DROPOUT_SEED_OFFSET)]

    # --- the Subject interface -------------------------------------------------------------
    def adapter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trainable adapter groups: the per-block adapters (upstream of everything the branch
        touches) and the per-level + detection projections (which can learn the task alone)."""
        return {
            "layers": list(self.adapters.parameters()),
            "proj": [*self.seg_proj.parameters(), *self.det_proj.parameters()],
        }

    def branch_parameters(self) -> list[nn.Parameter]:
        """Group X: the branch and its join's own parameters (alpha, gate, lambda)."""
        mods = [m for m in (self.branch, self.join) if m is not None]
        return [p for m in mods for p in m.parameters()]

    def gate_values(self) -> dict[str, torch.Tensor]:
        return self.join.gate_values() if self.join is not None else {}

    # --- the per-arm pieces ----------------------------------------------------------------
    def _join_branch(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = None
        if self.training and self.branch.dropout > 0:
            shape = self.branch.keep_shape(x, context)
            keep = self.dropout_streams[0].keep_mask(shape, self.branch.dropout, x.device)
        c = self.branch(x, context, keep)
        joined = self.join(x, c)
        return joined, (joined.norm(dim=-1) / x.norm(dim=-1)).mean().detach()

    def _adapt(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.adapters[i](x)

    def _seg_proj(self, level: int, f: torch.Tensor) -> torch.Tensor:
        return self.seg_proj[level](f)

    def _det_proj(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.det_proj(pooled)


DROPOUT_SEED_OFFSET = 2_000_003  # an arm's dropout stream: its own, apart from its initialisation


def build_model(
    cfg: AAClipConfig, classes: Sequence[str], seed: int = 0, shared: SharedBackbone | None = None
) -> AAClipModel:
    """Config -> model (open_clip's config-to-builder habit); ``shared`` reuses a built backbone."""
    if not (isinstance(cfg.adapter_weight, float | int) and 0 < cfg.adapter_weight <= 1):
        raise AblateInputError("adapter_weight", "must be in (0, 1]")
    if not math.isfinite(float(cfg.adapter_weight)):
        raise AblateInputError("adapter_weight", "must be finite")
    return AAClipModel(cfg, classes, seed, shared)
