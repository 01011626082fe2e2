"""A tiny decoder-only language model as an ablate subject, written as a user would write one.

The model is frozen except for small residual adapters in its blocks and its output head. The new
branch is a cross-attention from the token stream to a context sequence, joined after block 0. The
task: each sequence steps through the vocabulary by an offset that its context announces, so the
model can learn it from the sequence itself (the adapters and head) or read it from the context (the
branch). ablate needs four functions from this file (named in study.toml): `build`, `batches`,
`loss` and `make_branch`; nothing in the model knows about ablate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Adapter(nn.Module):
    """A residual bottleneck adapter: x + up(gelu(down(x)))."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank)
        self.up = nn.Linear(rank, width)
        nn.init.normal_(self.up.weight, std=0.02)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, rank: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.adapter = Adapter(width, rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.adapter(x)


class TinyLM(nn.Module):
    def __init__(self, vocab: int, width: int, depth: int, heads: int, rank: int, seq_len: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        self.ctx = nn.Embedding(vocab, width)  # embeds the context tokens the branch attends to
        self.blocks = nn.ModuleList(Block(width, heads, rank) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.context_states: torch.Tensor | None = None

    def forward(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.context_states = self.ctx(context)  # read by the branch, if one is joined
        x = self.tok(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def build(
    vocab: int = 32, width: int = 64, depth: int = 2, heads: int = 4, rank: int = 16, seq_len: int = 24
) -> TinyLM:
    """The factory: ablate calls it with [subject.args] as keyword arguments."""
    return TinyLM(vocab, width, depth, heads, rank, seq_len)


class ContextCrossAttention(nn.Module):
    """The injected branch: the token stream x attends to the context sequence's states."""

    def __init__(self, model: TinyLM, heads: int = 4) -> None:
        super().__init__()
        width = model.tok.embedding_dim
        # A plain attribute, not a submodule: the model must not become part of the branch.
        self.__dict__["model"] = model
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.model.context_states
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v)
        return self.out(att.transpose(1, 2).reshape(b, n, d))


def make_branch(model: TinyLM) -> nn.Module:
    return ContextCrossAttention(model)


SPLIT_SEEDS = {"train": 0, "probe": 1, "gain": 2}
OFFSETS = 4  # the step sizes 1..4 a sequence may take


def batches(seed: int, split: str, batch_size: int, n_batches: int = 64, vocab: int = 32, seq_len: int = 24):
    """Batches of {"tokens": [B, seq_len], "context": [B, 8]}: token t+1 = token t + offset (mod vocab),
    the offset (1..4) announced by the context's first token; 5% of tokens are noise."""
    g = torch.Generator().manual_seed(seed * 1_000 + SPLIT_SEEDS[split])
    for _ in range(n_batches):
        offset = torch.randint(1, OFFSETS + 1, (batch_size, 1), generator=g)
        start = torch.randint(0, vocab, (batch_size, 1), generator=g)
        tokens = (start + offset * torch.arange(seq_len)) % vocab
        noise = torch.rand(batch_size, seq_len, generator=g) < 0.05
        tokens = torch.where(noise, torch.randint(0, vocab, (batch_size, seq_len), generator=g), tokens)
        context = torch.randint(0, vocab, (batch_size, 8), generator=g)
        context[:, 0] = offset[:, 0]
        yield {"tokens": tokens, "context": context}


def loss(model: TinyLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy (nats per token)."""
    tokens = batch["tokens"]
    logits = model(tokens[:, :-1], batch["context"])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
