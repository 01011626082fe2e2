"""The trainable pieces of AA-CLIP and the injected branch.

AA-CLIP's own: the residual adapter (image blocks 0..5, text blocks 0..2), the bias-free projections,
and the text adapter that Stage 1 trains (docs/parity.md maps each to the authors' code). The branch
(image-to-text cross-attention) is the new piece ablate studies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ResidualAdapter(nn.Module):
    """AA-CLIP's residual adapter: a = LeakyReLU(W x) (no bias), then a norm-matched blend with weight w.

    ``x <- w * a * |x|/|a| + (1 - w) * x``: the adapter output is rescaled to the token's own norm,
    so it can redirect but never inflate the stream. (|a| is clamped at 1e-12 only so an all-zero
    output gives no NaN; AA-CLIP divides as is.)
    """

    def __init__(self, width: int, weight: float = 0.1) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width, bias=False)
        nn.init.xavier_uniform_(self.fc.weight)
        self.act = nn.LeakyReLU()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.fc(x))
        a = a * (x.norm(dim=-1, keepdim=True) / a.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return self.weight * a + (1.0 - self.weight) * x


def projection(d_in: int, d_out: int) -> nn.Linear:
    """AA-CLIP's per-level and detection projection: bias-free, Xavier-uniform (its ``relu`` flag is
    off by default, so no activation follows)."""
    lin = nn.Linear(d_in, d_out, bias=False)
    nn.init.xavier_uniform_(lin.weight)
    return lin


class TextAdapter(nn.Module):
    """AA-CLIP's Stage 1 text adapter: residual adapters after the first ``layers`` text blocks and a
    learned ``LeakyReLU(W x)`` (bias-free, d_txt -> embed) in place of CLIP's ``text_projection``.

    At ViT-L-14 width (768 -> 768, 3 layers): 3 x 768^2 + 768^2 = 2,359,296 parameters.
    """

    def __init__(self, d_txt: int, embed: int, layers: int = 3, weight: float = 0.1) -> None:
        super().__init__()
        self.adapters = nn.ModuleList(ResidualAdapter(d_txt, weight) for _ in range(layers))
        self.proj = nn.Sequential(projection(d_txt, embed), nn.LeakyReLU())

    def encode(self, clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings [P, embed] (not normalised) of the tokenised prompts through the frozen text
        tower with the adapters: the EOT token's features after ``ln_final``, through ``proj``."""
        x = clip.token_embedding(tokens) + clip.positional_embedding
        for i, block in enumerate(clip.transformer.resblocks):
            x = block(x, attn_mask=clip.attn_mask)
            if i < len(self.adapters):
                x = self.adapters[i](x)
        x = clip.ln_final(x)
        return self.proj(x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)])


class CrossAttentionBranch(nn.Module):
    """Image-to-text cross-attention: image tokens query the prompts' text-token features.

    q: d_img->d_txt, k/v: d_txt->d_txt, out: d_txt->d_img; Xavier weights, zero biases
    (docs/concepts.md, "The AA-CLIP subject").
    """

    def __init__(self, d_img: int, d_txt: int, heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        if d_txt % heads:
            raise ValueError(f"text width {d_txt} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_img, d_txt)
        self.k_proj = nn.Linear(d_txt, d_txt)
        self.v_proj = nn.Linear(d_txt, d_txt)
        self.out_proj = nn.Linear(d_txt, d_img)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def zero_output(self) -> None:
        """Zero-init: out_proj weight and bias = 0, so the branch starts as an exact no-op."""
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, d_img]; context: [B, M, d_txt] -> [B, L, d_img].

        ``keep`` is the attention-dropout mask ([B, heads, L, M], True = kept) drawn by the caller from
        the arm's own generator, so a packed arm sees exactly the draws it would see alone; None = no
        dropout (eval, or dropout 0), which takes the fused SDPA kernel.
        """
        return self.output(attend(*self.qkv(x, context), keep, self.dropout))

    def qkv(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head queries [B, heads, L, d] and keys, values [B, heads, M, d]."""
        b, n, _ = x.shape
        m = context.shape[1]
        h = self.heads
        q = self.q_proj(x).view(b, n, h, -1).transpose(1, 2)
        k = self.k_proj(context).view(b, m, h, -1).transpose(1, 2)
        v = self.v_proj(context).view(b, m, h, -1).transpose(1, 2)
        return q, k, v

    def output(self, attended: torch.Tensor) -> torch.Tensor:
        """[B, heads, L, d] -> [B, L, d_img]."""
        b, _, n, _ = attended.shape
        return self.out_proj(attended.transpose(1, 2).reshape(b, n, -1))

    def keep_shape(self, x: torch.Tensor, context: torch.Tensor) -> tuple[int, int, int, int]:
        """Shape of the dropout mask ``forward`` takes for these inputs."""
        return (x.shape[0], self.heads, x.shape[1], context.shape[1])


# On CPU the explicit path runs the batch in slices of at most this many attention scores (8 MiB in
# fp32). It materialises scores, probabilities, the float mask and their product, [B, heads, L, M]
# each; for a pack of 3 quick arms ([12, 8, 65, 1232], 31.5 MiB apiece) some training steps took
# 5-7x the median, which slices of the batch avoid (bench/bench_attention_slices.py). Attention is
# per sample, so a slice computes exactly what the whole batch would.
CPU_SLICE_SCORES = 1 << 21


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None, dropout: float
) -> torch.Tensor:
    """Scaled dot-product attention with an explicit dropout mask (None: SDPA, no dropout).

    Kept outside the module so packed arms can run it once on their stacked heads.
    """
    if keep is None:
        return F.scaled_dot_product_attention(q, k, v)
    n = q.shape[0]
    per_sample = math.prod(q.shape[1:-1]) * k.shape[-2]  # heads x L x M
    most = max(1, CPU_SLICE_SCORES // max(per_sample, 1))
    if q.device.type != "cpu" or most >= n:
        return _attend_dropped(q, k, v, keep, dropout)
    count = -(-n // most)
    size = -(-n // count)  # even slices, none over the budget
    parts = [slice(i, i + size) for i in range(0, n, size)]
    return torch.cat([_attend_dropped(q[s], k[s], v[s], keep[s], dropout) for s in parts])


def _attend_dropped(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, dropout: float
) -> torch.Tensor:
    attn = torch.softmax((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)
    return (attn * keep.to(attn.dtype) * (1.0 / (1.0 - dropout))) @ v
