"""Class text embeddings: each class's normal and abnormal prompt ensembles through a text encoder.

The encoder is the frozen CLIP's (Stage 1 off) or CLIP's text tower with the Stage 1 text adapter.
Per class: every prompt's embedding L2-normalised, averaged over the prompts of a state, the mean
normalised again: [E, 2] (normal, abnormal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ablate.subjects.aaclip.layers import TextAdapter
from ablate.subjects.aaclip.prompts import class_prompts


def prompt_tokens(classes: Sequence[str], device: torch.device | None = None) -> list[tuple[torch.Tensor, int]]:
    """Per class: the tokenised normal + abnormal prompts and how many are normal."""
    import open_clip

    out = []
    for name in classes:
        normal, abnormal = class_prompts(name)
        out.append((open_clip.tokenize(normal + abnormal).to(device), len(normal)))
    return out


def embed_classes(
    encode: Callable[[torch.Tensor], torch.Tensor], tokens: Sequence[tuple[torch.Tensor, int]]
) -> torch.Tensor:
    """[C, E, 2] from the prompts of each class (``tokens``: :func:`prompt_tokens`) and a text encoder
    ``encode(tokens) -> [P, E]`` (one call for every class's prompts)."""
    every = F.normalize(encode(torch.cat([toks for toks, _ in tokens])), dim=-1)
    embeds = []
    for emb, (_, n_normal) in zip(every.split([len(toks) for toks, _ in tokens]), tokens):
        t = torch.stack([emb[:n_normal].mean(0), emb[n_normal:].mean(0)], dim=-1)
        embeds.append(F.normalize(t, dim=0))
    return torch.stack(embeds)


def clip_encoder(clip: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda tokens: clip.encode_text(tokens)


def adapted_encoder(clip: nn.Module, adapter: TextAdapter) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda tokens: adapter.encode(clip, tokens)
