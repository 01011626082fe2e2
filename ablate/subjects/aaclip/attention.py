"""Batch-first self-attention for the frozen CLIP blocks (same weights, same maths, faster layout).

``nn.MultiheadAttention`` (open_clip's blocks use it with ``batch_first=True``) transposes its input
to [L, N, D] on the training path, and a linear layer on that non-contiguous 3-D view runs as L
small matrix products of N rows each: on a packed step at real scale (1370 tokens, 16 images) that
batched product was the largest single kernel of the step. This module keeps [N, L, D]: one GEMM
for q, k and v, SDPA on [N, heads, L, d], one GEMM out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchFirstSelfAttention(nn.Module):
    """Drop-in for a batch-first, self-attention ``nn.MultiheadAttention``; shares its parameters."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not (mha.batch_first and mha._qkv_same_embed_dim and mha.bias_k is None and not mha.add_zero_attn):
            raise ValueError("only batch-first self-attention with packed q/k/v weights is supported")
        self.num_heads = mha.num_heads
        self.dropout = mha.dropout
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        if key is not query or value is not query or need_weights:
            raise ValueError("BatchFirstSelfAttention computes self-attention without weights only")
        n, length, width = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width)), None


def use_batch_first_attention(blocks: nn.ModuleList) -> int:
    """Swap every eligible block's ``attn`` for the batch-first module; returns how many were swapped."""
    swapped = 0
    for block in blocks:
        attn = getattr(block, "attn", None)
        if isinstance(attn, nn.MultiheadAttention) and attn.batch_first and attn._qkv_same_embed_dim:
            block.attn = BatchFirstSelfAttention(attn)
            swapped += 1
    return swapped
