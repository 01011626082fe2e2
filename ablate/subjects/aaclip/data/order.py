"""The training order: epochs over the pool, reshuffled every epoch, as AA-CLIP's shuffling loader.

Step s is batch ``s mod per_epoch`` of epoch ``s // per_epoch`` (``per_epoch = ceil(n / batch)``,
so the last batch of an epoch is short when the batch does not divide the pool, as AA-CLIP's loader
keeps it); each epoch's permutation is drawn from (seed, epoch).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


@lru_cache(maxsize=64)
def _permutation(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


def batch_indices(seed: int, n: int, batch_size: int, step: int) -> list[int]:
    """The pool indices of training step ``step``."""
    epoch, i = divmod(step, steps_per_epoch(n, batch_size))
    return list(_permutation(seed, epoch, n)[i * batch_size : (i + 1) * batch_size])
