"""What the probe and the training loop need from a model under study, and nothing more.

Any PyTorch model can be a subject: name the adapters whose gradient we watch, the injected
branch, give a switch that bypasses the branch, and a loss on a batch.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from torch import nn


class SubjectOutput(Protocol):
    final_features: torch.Tensor  # used for the with/without cosine
    norm_inflation: torch.Tensor | None  # |x + join(c)| / |x| at the injection point


class Subject(Protocol):
    has_branch: bool

    def adapter_parameters(self) -> list[nn.Parameter]: ...

    def adapter_layer_parameters(self) -> list[nn.Parameter]: ...

    def branch_parameters(self) -> list[nn.Parameter]: ...

    def gate_values(self) -> dict[str, torch.Tensor]: ...

    def branch_bypassed(self) -> AbstractContextManager[None]: ...

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, SubjectOutput]: ...

    def train(self, mode: bool = True) -> Any: ...

    def parameters(self) -> Any: ...
