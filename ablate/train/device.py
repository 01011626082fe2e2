"""Device choice and the autocast context: bf16 on CUDA, plain fp32 on CPU, same code path."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ablate.errors import AblateInputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    if name not in DEVICE_CHOICES:
        raise AblateInputError("device", f"must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AblateInputError("device", "cuda requested but torch sees no CUDA device")
    return torch.device(name)


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of the parameters' gradients, computed on device (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else "cpu")
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
