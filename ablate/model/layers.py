"""The two trainable pieces AA-CLIP Stage 2 adds to the frozen ViT: image adapters and the new branch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ImageAdapter(nn.Module):
    """AA-CLIP residual adapter: a = LeakyReLU(W x), then a norm-matched blend with weight w.

    ``x <- w * a * |x|/|a| + (1 - w) * x``: the adapter output is rescaled to the token's own norm,
    so it can redirect but never inflate the stream.
    """

    def __init__(self, width: int, weight: float = 0.1, eps: float = 1e-6) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width, bias=False)
        nn.init.xavier_uniform_(self.fc.weight)
        self.act = nn.LeakyReLU()
        self.weight = weight
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.fc(x))
        a = a * (x.norm(dim=-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) + self.eps))
        return self.weight * a + (1.0 - self.weight) * x


class CrossAttentionBranch(nn.Module):
    """Image-to-text cross-attention: image tokens query the prompts' text-token features.

    q: d_img->d_txt, k/v: d_txt->d_txt, out: d_txt->d_img; Xavier weights, zero biases (DESIGN §2).
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

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: [B, L, d_img]; context: [B, M, d_txt] -> [B, L, d_img]."""
        b, n, _ = x.shape
        m = context.shape[1]
        h = self.heads
        q = self.q_proj(x).view(b, n, h, -1).transpose(1, 2)
        k = self.k_proj(context).view(b, m, h, -1).transpose(1, 2)
        v = self.v_proj(context).view(b, m, h, -1).transpose(1, 2)
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))
