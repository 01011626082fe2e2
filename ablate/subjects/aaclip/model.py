"""The AA-CLIP Stage 2 subject: frozen open_clip ViT + image adapters + the injected branch.

One readable model file with a config dataclass (nanoGPT's habit). Everything AA-CLIP specific
lives here; the probe and the training loop see only the ``Subject`` interface
(ablate/engine/subject.py): two parameter groups, a branch-bypass switch, and a loss.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ablate.engine.dropout import DropoutStream
from ablate.engine.fixes import FixChoice, parse_fix
from ablate.engine.subject import BranchSwitch
from ablate.errors import AblateInputError
from ablate.subjects.aaclip.backbone import backbone_spec, build_clip, text_block0
from ablate.subjects.aaclip.layers import CrossAttentionBranch, ResidualAdapter, projection
from ablate.subjects.aaclip.loss import stage2_loss
from ablate.subjects.aaclip.scoring import BatchScores, Scoring, batch_scores
from ablate.subjects.aaclip.text import clip_encoder, embed_classes, prompt_tokens

LOGIT_SCALE = 100.0  # AA-CLIP's fixed temperature on the segmentation cosines


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
    # The backbone's MLP activation: nn.GELU as AA-CLIP builds it (its model config has no quick_gelu,
    # even for OpenAI's weights); True = QuickGELU, what OpenAI's weights were trained with.
    quick_gelu: bool = False
    # The detection logits the cross-entropy sees: AA-CLIP's raw cosines (1.0); 100 = CLIP's temperature.
    detection_logit_scale: float = 1.0
    # The Stage 1 text adapter (a checkpoint file; None: trained by Stage 1, or none when it is off).
    text_adapter: str | None = None
    text_adapter_layers: int = 3  # residual adapters after text blocks 0..k-1
    text_adapter_weight: float = 0.1

    def shared_part(self) -> tuple:
        """What arms must agree on to share one frozen backbone (and so train packed)."""
        return (self.backbone, self.pretrained, self.backbone_seed, self.context_norm, self.quick_gelu)


@dataclass
class ForwardOut:
    seg_logits: list[torch.Tensor]  # per level [n, 2, h, w] (100 x cosine); n = arms x batch when packed
    det_logits: torch.Tensor  # [n, 2]: detection_logit_scale x det_cosine
    final_features: torch.Tensor  # [n, N, E], L2-normalised, last level
    norm_inflation: torch.Tensor | None  # [arms] (0-d for one model), at the injection point; None = branch off
    det_cosine: torch.Tensor | None = None  # [n, 2]: the detection token . (t_normal, t_abnormal)


@dataclass
class Upstream:
    """The forward pass on a batch, run to a position: block ``pos`` (and the branch, if it joins
    there) has run, its adapter and level not yet; ``pos`` = depth: every block done, the heads next."""

    x: torch.Tensor  # the residual stream [n, L, D]
    pos: int
    feats: list[torch.Tensor]  # the levels so far
    inflation: torch.Tensor | None
    class_idx: torch.Tensor  # [n]
    use_branch: bool


@dataclass
class SharedBackbone:
    """The frozen CLIP and the class prompts encoded by it: built once, shared by every arm of a pack."""

    clip: nn.Module
    classes: list[str]
    text_embeds: torch.Tensor  # [C, E, 2], the frozen CLIP's (what Stage 2 uses with Stage 1 off)
    text_context: torch.Tensor  # [C, 16*77, d_txt]


def build_backbone(cfg: AAClipConfig, classes: Sequence[str]) -> SharedBackbone:
    torch.manual_seed(cfg.backbone_seed)
    clip = build_clip(backbone_spec(cfg.backbone), cfg.pretrained, cfg.quick_gelu)
    tokens = prompt_tokens(classes)
    contexts = []
    with torch.no_grad():
        embeds = embed_classes(clip_encoder(clip), tokens)
        for toks, _ in tokens:
            ctx = text_block0(clip, toks)
            ctx = ctx.reshape(-1, ctx.shape[-1])
            contexts.append(F.normalize(ctx, dim=-1) if cfg.context_norm else ctx)
    return SharedBackbone(clip, list(classes), embeds, torch.stack(contexts))


class _AAClipBase(BranchSwitch, nn.Module):
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
    adapter_weight: float

    def _init_shared(self, shared: SharedBackbone, text_embeds: torch.Tensor) -> None:
        """``text_embeds``: [C, E, 2] for one model, [arms, C, E, 2] packed (each arm its own text side)."""
        self.shared = shared
        self.clip = shared.clip
        self.classes = list(shared.classes)
        self.register_buffer("text_embeds", text_embeds, persistent=False)
        self.register_buffer("text_context", shared.text_context, persistent=False)
        self.branch_active = True

    @property
    def has_branch(self) -> bool:
        return self.branch is not None

    def bypass_state(self) -> tuple[tuple, list[torch.Tensor]]:
        """What the loss with the branch bypassed reads besides the batch: (a signature, tensors). Equal
        signatures and tensors give equal passes (BypassedPasses, ablate/engine/probe.py). The backbone
        is in the signature as the object: its structure (e.g. QuickGELU) is not in its tensors."""
        layout = (self.adapter_layers, self.levels, self.grid, self.adapter_weight, self.detection_logit_scale)
        branch = [m for m in (self.branch, getattr(self, "join", None)) if m is not None]
        skip = {id(t) for m in branch for t in (*m.parameters(), *m.buffers())}
        tensors = [t for t in (*self.parameters(), *self.buffers()) if id(t) not in skip]
        return (type(self).__name__, self.n_arms, self.clip, *layout), tensors

    def train(self, mode: bool = True) -> _AAClipBase:
        super().train(mode)
        self.clip.eval()  # the frozen backbone never switches to training behaviour
        return self

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
        return self._heads(self._advance(self._begin(images, class_idx), self._depth))

    @property
    def _depth(self) -> int:
        return len(self.clip.visual.transformer.resblocks)

    def _begin(self, images: torch.Tensor, class_idx: torch.Tensor) -> Upstream:
        """Embed the images and run block 0 (and the branch, when it joins there): position 0."""
        images = images.reshape(-1, *images.shape[-3:])
        use_branch = self.branch is not None and self.branch_active
        s = Upstream(self.clip.visual._embeds(images), -1, [], None, class_idx.reshape(-1), use_branch)
        return self._run_block(s, 0)

    def _run_block(self, s: Upstream, i: int) -> Upstream:
        x, inflation = self.clip.visual.transformer.resblocks[i](s.x), s.inflation
        if s.use_branch and i == self.inject_at:
            x, inflation = self._join_branch(x, self.text_context[s.class_idx].to(x.dtype))
        return Upstream(x, i, s.feats, inflation, s.class_idx, s.use_branch)

    def _advance(self, s: Upstream, until: int) -> Upstream:
        """From position ``s.pos`` (block ``pos`` run, its adapter not yet) to position ``until``;
        ``until`` = depth: every block finished (adapter, level), the heads next."""
        feats = list(s.feats)
        for i in range(s.pos, until):
            x = self._adapt(i, s.x) if i < self.adapter_layers else s.x
            if (i + 1) in self.levels:
                feats.append(x)
            s = Upstream(x, i + 1, feats, s.inflation, s.class_idx, s.use_branch)
            if i + 1 < self._depth:
                s = self._run_block(s, i + 1)
        return s

    def _heads(self, s: Upstream) -> ForwardOut:
        visual = self.clip.visual
        text = self._class_text(s.class_idx)  # [n, E, 2]
        seg_logits, final = [], None
        n = s.class_idx.shape[0]
        tokens = None
        for level, f in enumerate(s.feats):
            tokens = visual.ln_post(f[:, 1:])
            f = F.normalize(self._seg_proj(level, tokens), dim=-1)
            logits = LOGIT_SCALE * torch.bmm(f, text.to(f.dtype))  # [n, N, 2]
            seg_logits.append(logits.transpose(1, 2).reshape(n, 2, self.grid, self.grid))
            final = f
        # The detection token: every patch token of the last level projected and L2-normalised, then
        # averaged (the mean is not normalised again, so its dot product is not quite a cosine).
        det = F.normalize(self._det_proj(tokens), dim=-1).mean(dim=1)
        det_cosine = torch.bmm(det.unsqueeze(1), text.to(det.dtype)).squeeze(1)  # [n, 2]
        det_logits = self.detection_logit_scale * det_cosine
        return ForwardOut(seg_logits, det_logits, final, s.inflation, det_cosine)

    def _class_text(self, class_idx: torch.Tensor) -> torch.Tensor:
        """Each sample's [E, 2] class text embedding (one model: one text side for every sample)."""
        return self.text_embeds[class_idx]

    def compute_loss(self, batch) -> tuple[torch.Tensor, ForwardOut]:
        """Loss per arm ([arms]; 0-d for one model) on a batch (packed: [arms, B, ...] tensors)."""
        out = self(batch.images, batch.class_idx)
        return self._loss(batch, out), out

    def _loss(self, batch, out: ForwardOut) -> torch.Tensor:
        masks, labels = batch.masks.reshape(-1, *batch.masks.shape[-2:]), batch.labels.reshape(-1)
        loss = stage2_loss(out.seg_logits, out.det_logits, masks, labels, self.n_arms)
        return loss if self.n_arms > 1 else loss[0]

    def loss_after(self, batch, group: str) -> Callable[[], tuple[torch.Tensor, ForwardOut]]:
        """``compute_loss(batch)`` as a function that runs the forward pass up to the first use of
        ``group``'s parameters once, however often it is called: for passes that change only that
        group's weights (the adapter gain's trained and reset passes, ablate/engine/loop.py). The
        same operations on the same values, so the same numbers as ``compute_loss``.

        The adapters are used from block 0's adapter on (after the branch, when it joins at block 0),
        the projections only in the heads.
        """
        until = 0 if group != "proj" and self.adapter_layers else self._depth
        held: list[Upstream] = []

        def loss() -> tuple[torch.Tensor, ForwardOut]:
            if not held:
                held.append(self._advance(self._begin(batch.images, batch.class_idx), until))
            out = self._heads(self._advance(held[0], self._depth))
            return self._loss(batch, out), out

        return loss

    @torch.no_grad()
    def anomaly_scores(self, batch, scoring: Scoring | None = None) -> BatchScores:
        """The batch's anomaly maps at the mask size and the parts of its image scores (n = arms x
        batch), made as ``scoring`` says (default: AA-CLIP's test; ablate/subjects/aaclip/scoring.py)."""
        out = self(batch.images, batch.class_idx)
        return batch_scores(out.seg_logits, out.det_cosine, batch.masks.shape[-2:], scoring or Scoring())

    # --- the per-arm pieces ----------------------------------------------------------------
    def _join_branch(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _adapt(self, i: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _seg_proj(self, level: int, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _det_proj(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class AAClipModel(_AAClipBase):
    """One arm: the frozen backbone, its adapters, projections and (unless no-branch) the branch."""

    def __init__(
        self,
        cfg: AAClipConfig,
        classes: Sequence[str],
        seed: int = 0,
        shared: SharedBackbone | None = None,
        text_embeds: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        spec = backbone_spec(cfg.backbone)
        self.cfg = cfg
        self.seed = seed
        self.fix: FixChoice = parse_fix(cfg.fix, cfg.scale)
        self.detection_logit_scale = float(cfg.detection_logit_scale)
        shared = shared if shared is not None else build_backbone(cfg, classes)
        self._init_shared(shared, shared.text_embeds if text_embeds is None else text_embeds)
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
        self.adapter_weight = cfg.adapter_weight
        self.image_size = spec.image_size
        self.grid = visual.grid_size[0]

        torch.manual_seed(seed)
        self.adapters, self.seg_proj, self.det_proj = image_adapter(
            d_img, embed, self.adapter_layers, len(self.levels), cfg.adapter_weight
        )

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

    def _det_proj(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.det_proj(tokens)


def image_adapter(
    d_img: int, embed: int, layers: int, levels: int, weight: float = 0.1
) -> tuple[nn.ModuleList, nn.ModuleList, nn.Linear]:
    """AA-CLIP's image adapter: residual adapters after blocks 0..layers-1, one projection per level
    and the detection projection (at ViT-L-14: 6 x 1024^2 + 5 x 1024 x 768 = 10,223,616 parameters)."""
    adapters = nn.ModuleList(ResidualAdapter(d_img, weight) for _ in range(layers))
    seg_proj = nn.ModuleList(projection(d_img, embed) for _ in range(levels))
    return adapters, seg_proj, projection(d_img, embed)


DROPOUT_SEED_OFFSET = 2_000_003  # an arm's dropout stream: its own, apart from its initialisation


def build_model(
    cfg: AAClipConfig,
    classes: Sequence[str],
    seed: int = 0,
    shared: SharedBackbone | None = None,
    text_embeds: torch.Tensor | None = None,
) -> AAClipModel:
    """Config -> model (open_clip's config-to-builder habit); ``shared`` reuses a built backbone;
    ``text_embeds`` [C, E, 2] replaces the frozen CLIP's class embeddings (Stage 1's text side)."""
    if not (isinstance(cfg.adapter_weight, float | int) and 0 < cfg.adapter_weight <= 1):
        raise AblateInputError("adapter_weight", "must be in (0, 1]")
    if not math.isfinite(float(cfg.adapter_weight)):
        raise AblateInputError("adapter_weight", "must be finite")
    return AAClipModel(cfg, classes, seed, shared, text_embeds)
