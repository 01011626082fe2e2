"""What the probe and the training loop need from a model under study, and nothing more.

Any PyTorch model can be a subject: name the adapter groups whose gradient we watch, the injected
branch, give a switch that bypasses the branch, and a loss on a batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from torch import nn

# The union of every adapter group is reported as this group (the seed's "image adapter").
ALL_GROUP = "all"


class SubjectOutput(Protocol):
    final_features: torch.Tensor  # used for the with/without cosine
    norm_inflation: torch.Tensor | None  # |x + join(c)| / |x| at the injection point


class Subject(Protocol):
    has_branch: bool
    # Arms trained side by side (packed); parameters then carry a leading [n_arms] dimension and
    # losses, gate values and norm inflation are [n_arms]. A plain model is one arm.
    n_arms: int

    def adapter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named, disjoint groups of trainable adapter parameters, e.g. {"layers": ..., "proj": ...}."""
        ...

    def branch_parameters(self) -> list[nn.Parameter]: ...

    def gate_values(self) -> dict[str, torch.Tensor]: ...

    def branch_bypassed(self) -> AbstractContextManager[None]: ...

    def dropout_seeded(self, seeds: Sequence[int]) -> AbstractContextManager[None]:
        """Draw arm a's dropout from ``seeds[a]`` inside the block, restoring each arm's stream after."""
        ...

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, SubjectOutput]: ...

    def train(self, mode: bool = True) -> Any: ...

    def parameters(self) -> Any: ...

    # Optional: ``bypass_state()`` -> (a hashable signature, the tensors) of what the loss with the
    # branch bypassed reads besides the batch; passes equal in both are run once (ablate/engine/probe.py).
    # Optional: ``loss_after(batch, group)`` -> a function returning ``compute_loss(batch)`` that runs
    # the forward pass up to the first use of ``group``'s parameters only once, for passes that change
    # only that group's weights (the adapter gain's two passes per batch; the same numbers, less work).


class BranchSwitch:
    """``branch_bypassed()`` for a subject whose forward skips the branch while ``branch_active`` is
    False (the probe's pass without it, on the same weights)."""

    branch_active: bool

    @contextlib.contextmanager
    def branch_bypassed(self) -> Iterator[None]:
        prev, self.branch_active = self.branch_active, False
        try:
            yield
        finally:
            self.branch_active = prev


def watched_groups(subject: Subject) -> dict[str, list[nn.Parameter]]:
    """The subject's adapter groups plus their union under ``ALL_GROUP``, in that order."""
    groups = dict(subject.adapter_groups())
    if ALL_GROUP in groups:
        raise ValueError(f"an adapter group may not be called {ALL_GROUP!r}: that name is the union")
    groups[ALL_GROUP] = [p for ps in list(groups.values()) for p in ps]
    return groups
