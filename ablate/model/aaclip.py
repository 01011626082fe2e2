"""The AA-CLIP Stage 2 subject: frozen open_clip ViT + image adapters + the injected branch.

One readable model file with a config dataclass (nanoGPT's habit). Everything AA-CLIP specific
lives here; the probe and the training loop see only the ``Subject`` interface
(ablate/train/subject.py): two parameter groups, a branch-bypass switch, and a loss.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ablate.data.prompts import class_prompts
from ablate.errors import AblateInputError
from ablate.model.backbone import backbone_spec, build_clip, encode_prompts
from ablate.model.fixes import FixChoice, parse_fix
from ablate.model.layers import CrossAttentionBranch, ImageAdapter
from ablate.train.loss import stage2_loss

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


@dataclass
class ForwardOut:
    seg_logits: list[torch.Tensor]  # per level [B, 2, h, w]
    det_logits: torch.Tensor  # [B, 2]
    final_features: torch.Tensor  # [B, N, E], L2-normalised, last level
    norm_inflation: torch.Tensor | None  # 0-d, at the injection point; None when the branch is off


class AAClipModel(nn.Module):
    def __init__(self, cfg: AAClipConfig, classes: Sequence[str], seed: int = 0) -> None:
        super().__init__()
        spec = backbone_spec(cfg.backbone)
        self.cfg = cfg
        self.fix: FixChoice = parse_fix(cfg.fix, cfg.scale)
        self.classes = list(classes)
        torch.manual_seed(seed)
        self.clip = build_clip(spec, cfg.pretrained)
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
        self.image_size = spec.image_size
        self.grid = visual.grid_size[0]

        self.adapters = nn.ModuleList(ImageAdapter(d_img, cfg.adapter_weight) for _ in range(self.adapter_layers))
        self.seg_proj = nn.ModuleList(nn.Linear(d_img, embed) for _ in self.levels)
        self.det_proj = nn.Linear(d_img, embed)

        # The branch draws from its own RNG stream so every arm with the same seed shares the
        # adapter and backbone initialisation: the pairing the comparison rests on.
        torch.manual_seed(seed + 1_000_003)
        self.branch: CrossAttentionBranch | None = None
        self.join: nn.Module | None = None
        if self.fix.has_branch:
            self.branch = CrossAttentionBranch(d_img, d_txt, cfg.branch_heads, cfg.branch_dropout)
            if self.fix.zero_init:
                self.branch.zero_output()
            self.join = self.fix.build_join(d_img)
        self.branch_active = True

        text_embeds, text_context = self._encode_classes(self.classes, cfg.context_norm)
        self.register_buffer("text_embeds", text_embeds, persistent=False)  # [C, E, 2]
        self.register_buffer("text_context", text_context, persistent=False)  # [C, 16*77, d_txt]

    @torch.no_grad()
    def _encode_classes(self, classes: Sequence[str], context_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
        import open_clip

        embeds, contexts = [], []
        for name in classes:
            normal, abnormal = class_prompts(name)
            tokens = open_clip.tokenize(normal + abnormal)
            emb, ctx = encode_prompts(self.clip, tokens)
            t = torch.stack([emb[: len(normal)].mean(0), emb[len(normal) :].mean(0)], dim=-1)
            embeds.append(F.normalize(t, dim=0))
            ctx = ctx.reshape(-1, ctx.shape[-1])
            contexts.append(F.normalize(ctx, dim=-1) if context_norm else ctx)
        return torch.stack(embeds), torch.stack(contexts)

    # --- the Subject interface -------------------------------------------------------------
    @property
    def has_branch(self) -> bool:
        return self.branch is not None

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

    @contextlib.contextmanager
    def branch_bypassed(self) -> Iterator[None]:
        """Run with the branch skipped on the same weights: the probe's 'without' arm."""
        prev, self.branch_active = self.branch_active, False
        try:
            yield
        finally:
            self.branch_active = prev

    def train(self, mode: bool = True) -> AAClipModel:
        super().train(mode)
        self.clip.eval()  # the frozen backbone never switches to training behaviour
        return self

    # --- forward ---------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, class_idx: torch.Tensor) -> ForwardOut:
        visual = self.clip.visual
        x = visual._embeds(images)
        use_branch = self.branch is not None and self.branch_active
        level_set = {lv: i for i, lv in enumerate(self.levels)}
        feats: list[torch.Tensor] = []
        inflation = None
        for i, block in enumerate(visual.transformer.resblocks):
            x = block(x)
            if use_branch and i == self.cfg.inject_at:
                c = self.branch(x, self.text_context[class_idx].to(x.dtype))
                joined = self.join(x, c)
                inflation = (joined.norm(dim=-1) / x.norm(dim=-1)).mean().detach()
                x = joined
            if i < self.adapter_layers:
                x = self.adapters[i](x)
            if (i + 1) in level_set:
                feats.append(x)
        text = self.text_embeds[class_idx]  # [B, E, 2]
        seg_logits, final = [], None
        b = images.shape[0]
        for proj, f in zip(self.seg_proj, feats):
            f = F.normalize(proj(visual.ln_post(f[:, 1:])), dim=-1)
            logits = LOGIT_SCALE * torch.bmm(f, text.to(f.dtype))  # [B, N, 2]
            seg_logits.append(logits.transpose(1, 2).reshape(b, 2, self.grid, self.grid))
            final = f
        pooled = visual.ln_post(feats[-1][:, 1:]).mean(dim=1)
        det = F.normalize(self.det_proj(pooled), dim=-1)
        det_logits = LOGIT_SCALE * torch.bmm(det.unsqueeze(1), text.to(det.dtype)).squeeze(1)
        return ForwardOut(seg_logits, det_logits, final, inflation)

    def compute_loss(self, batch) -> tuple[torch.Tensor, ForwardOut]:
        out = self(batch.images, batch.class_idx)
        return stage2_loss(out.seg_logits, out.det_logits, batch.masks, batch.labels), out


def build_model(cfg: AAClipConfig, classes: Sequence[str], seed: int = 0) -> AAClipModel:
    """Config -> model (open_clip's config-to-builder habit)."""
    if not (isinstance(cfg.adapter_weight, float | int) and 0 < cfg.adapter_weight <= 1):
        raise AblateInputError("adapter_weight", "must be in (0, 1]")
    if not math.isfinite(float(cfg.adapter_weight)):
        raise AblateInputError("adapter_weight", "must be finite")
    return AAClipModel(cfg, classes, seed)
