"""Each arm's own dropout randomness, kept apart from torch's global RNG."""

from __future__ import annotations

import torch


class DropoutStream:
    """An arm's own dropout randomness: a generator seeded from the arm's seed, on the arm's device.

    Kept apart from torch's global RNG so arms trained side by side (packed) draw exactly what they
    would draw alone, and so a probe can replay the same masks with and without the branch.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._gen: torch.Generator | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen

    def keep_mask(self, shape: tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator(device), device=device) >= p

    def reseed(self, seed: int, device: torch.device) -> torch.Tensor:
        """Seed the stream with ``seed``; returns the previous state for ``restore``."""
        gen = self.generator(device)
        state = gen.get_state()
        gen.manual_seed(seed)
        return state

    def restore(self, state: torch.Tensor, device: torch.device) -> None:
        self.generator(device).set_state(state)
