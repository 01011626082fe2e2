"""AA-CLIP Stage 1: train the text adapter on frozen image features, before Stage 2.

Per step, on a batch of training images (geometric augmentation only, no colour jitter):

- image side, no gradient: the frozen CLIP with value-value attention in its last
  ``surgery_blocks`` blocks (AA-CLIP's "DPAM" surgery), each feature level's patch tokens through
  ``ln_post`` and CLIP's ``proj``, L2-normalised, plus the L2-normalised CLIP image embedding (the
  unmodified model's pooled output) added to every token (the sum is not normalised again);
- text side, with gradient: each class's normal and abnormal embedding through the adapted text
  tower (ablate/subjects/aaclip/text.py);
- loss: the segmentation loss (ablate/subjects/aaclip/loss.py) of the *last* level's logits
  ``100 f . t``, plus ``orthogonal_weight x (mean_b <t_normal, t_abnormal>)^2``. AA-CLIP's training
  loop reassigns the loss at every level, so only its last level trains the adapter; ablate computes
  that level alone.

Adam (lr 1e-5, betas 0.5 / 0.999), 5 epochs of batch 16 by default, no schedule. The value-value
attention of AA-CLIP's code attends across the images of the batch at each token position (its
surgery block gets [tokens, batch, width] and treats the first axis as the batch); ``surgery_attention
= "batch"`` reproduces that, ``"tokens"`` attends across tokens within each image instead.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ablate.engine.device import autocast
from ablate.errors import AblateInputError
from ablate.subjects.aaclip.data.order import batch_indices, steps_per_epoch
from ablate.subjects.aaclip.layers import TextAdapter
from ablate.subjects.aaclip.loss import segmentation_loss
from ablate.subjects.aaclip.text import adapted_encoder, embed_classes, prompt_tokens

SURGERY_ATTENTIONS = ("batch", "tokens")
STAGE1_SEED_OFFSET = 3_000_017  # Stage 1's adapter initialisation and data order: apart from Stage 2's
STAGE1_STEP_OFFSET = 1_000_000_007  # Stage 1's augmentation draws: apart from Stage 2's steps
CHECKPOINT_KEY = "text_adapter"  # the state dict's key in a checkpoint (AA-CLIP's text_adapter.pth too)
FIELD = "model.text_adapter"


@dataclass(frozen=True)
class Stage1Config:
    epochs: int = 5
    steps: int = 0  # > 0: this many steps instead of the epochs (a quick check)
    lr: float = 1e-5
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 16
    orthogonal_weight: float = 0.1
    surgery_attention: str = "batch"


@dataclass
class Stage1Result:
    state: dict[str, torch.Tensor]  # the TextAdapter's state dict, on the CPU
    metrics: dict[str, list[float]] = field(default_factory=dict)  # per step: loss, segmentation, orthogonal
    steps: int = 0
    wall_s: float = 0.0


def value_attention_block(block: nn.Module, x: torch.Tensor, over: str) -> torch.Tensor:
    """One frozen block with its self-attention replaced by value-value attention (queries and keys
    are the values), ``over`` the tokens of each image or the images of the batch at each token."""
    attn = block.attn
    width = x.shape[-1]
    heads = attn.num_heads
    y = block.ln_1(x)
    v = F.linear(y, attn.in_proj_weight[2 * width :], attn.in_proj_bias[2 * width :])
    n, length, _ = v.shape
    v = v.view(n, length, heads, -1)
    v = v.permute(0, 2, 1, 3) if over == "tokens" else v.permute(1, 2, 0, 3)  # [.., heads, attended, d]
    out = F.scaled_dot_product_attention(v, v, v)
    out = out.permute(0, 2, 1, 3) if over == "tokens" else out.permute(2, 0, 1, 3)  # back to [n, L, heads, d]
    x = x + block.ls_1(attn.out_proj(out.reshape(n, length, width)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


@torch.no_grad()
def surgery_features(
    clip: nn.Module, images: torch.Tensor, levels: Sequence[int], surgery_blocks: int, over: str = "batch"
) -> list[torch.Tensor]:
    """Stage 1's patch features per level [n, N, E]: normalised projected tokens + the image embedding."""
    visual = clip.visual
    blocks = visual.transformer.resblocks
    first = len(blocks) - surgery_blocks
    x = visual._embeds(images)
    feats = []
    for i, block in enumerate(blocks[:first]):  # unchanged blocks: shared by both paths
        x = block(x)
        if i + 1 in levels:
            feats.append(x)
    plain = x
    for i in range(first, len(blocks)):
        x = value_attention_block(blocks[i], x, over)
        plain = blocks[i](plain)
        if i + 1 in levels:
            feats.append(x)
    pooled, _ = visual._pool(plain)
    image = F.normalize(pooled @ visual.proj, dim=-1)
    return [F.normalize(visual.ln_post(f[:, 1:]) @ visual.proj, dim=-1) + image.unsqueeze(1) for f in feats]


def stage1_loss(
    features: torch.Tensor, text: torch.Tensor, masks: torch.Tensor, grid: int, orthogonal_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, segmentation part, orthogonality part) of one batch: features [B, N, E] of the last level,
    text [B, E, 2] (each sample's class), masks [B, H, W]."""
    logits = 100.0 * torch.bmm(features, text.to(features.dtype))  # [B, N, 2]
    logits = logits.transpose(1, 2).reshape(len(features), 2, grid, grid)
    seg = segmentation_loss(logits, masks)[0]
    orth = (text[:, :, 0] * text[:, :, 1]).sum(1).mean() ** 2
    return seg + orthogonal_weight * orth, seg, orth


def train_text_adapter(
    clip: nn.Module,
    dataset: Any,
    pool: int,
    classes: Sequence[str],
    cfg: Stage1Config,
    adapter: TextAdapter,
    levels: Sequence[int],
    surgery_blocks: int,
    seed: int,
    device: torch.device,
    precision: str = "fp32",
    on_step: Callable[[int], None] | None = None,
) -> Stage1Result:
    """Train ``adapter`` (initialised by the caller) on ``dataset``'s first ``pool`` images; returns its
    weights and per-step losses. ``dataset.batch(indices, step, colour)`` gives training batches."""
    adapter.to(device).train(True)
    opt = torch.optim.Adam(adapter.parameters(), lr=cfg.lr, betas=cfg.betas)
    tokens = prompt_tokens(classes, device)
    steps = cfg.steps if cfg.steps > 0 else cfg.epochs * steps_per_epoch(pool, cfg.batch_size)
    grid = clip.visual.grid_size[0]
    order_seed = seed + STAGE1_SEED_OFFSET
    metrics: dict[str, list[torch.Tensor]] = {"loss": [], "segmentation_loss": [], "orthogonal_loss": []}
    t0 = time.perf_counter()
    for step in range(steps):
        idx = batch_indices(order_seed, pool, cfg.batch_size, step)
        batch = dataset.batch(idx, STAGE1_STEP_OFFSET + step, colour=False).to(device)
        present = sorted(set(batch.class_idx.tolist()))
        with autocast(device, precision):
            feats = surgery_features(clip, batch.images, levels, surgery_blocks, cfg.surgery_attention)
            embeds = embed_classes(adapted_encoder(clip, adapter), [tokens[c] for c in present])  # [C', E, 2]
            where = torch.tensor([present.index(c) for c in batch.class_idx.tolist()], device=device)
            loss, seg, orth = stage1_loss(feats[-1], embeds[where], batch.masks, grid, cfg.orthogonal_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for name, v in zip(metrics, (loss, seg, orth)):
            metrics[name].append(v.detach().float())
        if on_step is not None:
            on_step(step)
    values = {k: torch.stack(v).cpu().double().tolist() if v else [] for k, v in metrics.items()}
    adapter.train(False)
    state = {k: v.detach().cpu().clone() for k, v in adapter.state_dict().items()}
    return Stage1Result(state, values, steps, time.perf_counter() - t0)


@torch.no_grad()
def adapted_class_embeddings(
    clip: nn.Module, classes: Sequence[str], adapter: TextAdapter, device: torch.device
) -> torch.Tensor:
    """[C, E, 2]: every class through the adapted text tower (what Stage 2 uses, frozen)."""
    adapter.to(device).train(False)
    return embed_classes(adapted_encoder(clip, adapter), prompt_tokens(classes, device))


# --- checkpoints ------------------------------------------------------------------------------
def to_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({CHECKPOINT_KEY: state}, buf)
    return buf.getvalue()


def _from_aaclip(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """AA-CLIP's key names (a ModuleList: ``i.fc.0.weight``, the projection last) -> this adapter's."""
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head.isdigit() and rest == "fc.0.weight":
            i = int(head)
            out[f"adapters.{i}.fc.weight" if i < layers else f"proj.{i - layers}.weight"] = value
        else:
            out[key] = value
    return out


def read_checkpoint(source: str | bytes, template: TextAdapter) -> dict[str, torch.Tensor]:
    """The text adapter state in ``source`` (a file path or checkpoint bytes), checked against
    ``template``'s shapes; AblateInputError naming model.text_adapter otherwise."""
    try:
        if isinstance(source, bytes):
            obj = torch.load(io.BytesIO(source), map_location="cpu", weights_only=True)
        else:
            if not Path(source).expanduser().is_file():
                raise AblateInputError(FIELD, f"checkpoint file not found: {source}")
            obj = torch.load(Path(source).expanduser(), map_location="cpu", weights_only=True)
    except AblateInputError:
        raise
    except Exception as exc:
        raise AblateInputError(FIELD, f"cannot read {source}: {str(exc).splitlines()[0]}") from None
    state = obj.get(CHECKPOINT_KEY, obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AblateInputError(FIELD, f"{source} holds no text adapter state dict")
    state = _from_aaclip(state, len(template.adapters))
    want = {k: tuple(v.shape) for k, v in template.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        wrong = [k for k in sorted(set(want) & set(got)) if want[k] != got[k]]
        if wrong:
            k = wrong[0]
            why = f"{k} has shape {list(got[k])}, this model needs {list(want[k])}"
        elif missing:
            why = f"no {missing[0]} (the model has {len(template.adapters)} text adapters and a projection)"
        else:
            why = f"unexpected {extra[0]} (the model has {len(template.adapters)} text adapters and a projection)"
        raise AblateInputError(FIELD, f"{source if isinstance(source, str) else 'checkpoint'}: {why}")
    return state
