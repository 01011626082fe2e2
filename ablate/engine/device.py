"""Device choice and the precision context (fp32, tf32 or bf16 autocast), same code path on CPU and CUDA."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from ablate.errors import AblateInputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
# fp32: full float32 (TF32 off for matrix products and convolutions); tf32: float32 storage, TF32
# tensor-core products on CUDA (same as fp32 on a CPU); bf16: bfloat16 autocast (CUDA and CPU).
PRECISIONS = ("fp32", "tf32", "bf16")


def resolve_device(name: str) -> torch.device:
    if name not in DEVICE_CHOICES:
        raise AblateInputError("device", f"must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AblateInputError("device", "cuda requested but torch sees no CUDA device")
    return torch.device(name)


def check_precision(precision: str, field: str = "training.precision") -> str:
    if precision not in PRECISIONS:
        raise AblateInputError(field, f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@contextlib.contextmanager
def _tf32(on: bool) -> Iterator[None]:
    """TF32 for CUDA matrix products and cuDNN convolutions on or off inside the block, restored after."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; the legacy flags may not be mixed with it
        conv = torch.backends.cudnn.conv
        saved = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision = conv.fp32_precision = "tf32" if on else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
        return
    saved = (matmul.allow_tf32, conv.allow_tf32)
    matmul.allow_tf32 = conv.allow_tf32 = on
    try:
        yield
    finally:
        matmul.allow_tf32, conv.allow_tf32 = saved


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """Run the block at ``precision`` (PRECISIONS) on ``device``."""
    check_precision(precision)
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif device.type == "cuda":
        with _tf32(precision == "tf32"):
            yield
    else:
        yield


def arm_norms(tensors: list[torch.Tensor | None], arms: int, device: torch.device) -> torch.Tensor:
    """Global L2 norm of ``tensors`` per arm, [arms], computed on device (no host sync).

    With one arm the tensors are a model's own; packed, each has a leading [arms] dimension. Missing
    gradients (None) count as zero.
    """
    present = [t for t in tensors if t is not None]
    if not present:
        return torch.zeros(arms, device=device)
    if arms == 1:  # one fused kernel for the common case
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present))).reshape(1)
    per = torch.stack([torch.linalg.vector_norm(t.reshape(arms, -1), dim=1) for t in present])
    return torch.linalg.vector_norm(per, dim=0)


# Dense bf16 tensor-core peaks (vendor data sheets, no sparsity), matched on the CUDA device name.
PEAK_BF16_TFLOPS = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A10G", 70.0),
    ("RTX 4090", 165.2),
)


def peak_flops(device: torch.device) -> float | None:
    """The device's peak FLOP/s for the MFU: $ABLATE_PEAK_TFLOPS, else the table above; None if unknown.

    CPUs have no entry (their peak depends on cores, clocks and vector units), so a CPU run's MFU is
    NaN unless the variable is set.
    """
    env = os.environ.get("ABLATE_PEAK_TFLOPS")
    if env:
        try:
            value = float(env)
        except ValueError:
            raise AblateInputError("ABLATE_PEAK_TFLOPS", f"must be a number of TFLOP/s, got {env!r}") from None
        if not value > 0:
            raise AblateInputError("ABLATE_PEAK_TFLOPS", f"must be > 0, got {env!r}")
        return value * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def describe_hardware(device: torch.device) -> dict[str, object]:
    """What this worker runs on, for the study's record (``ablate report``'s setting section): the
    host, OS, CPU and its core count, and the CUDA device's name and memory when
    the study trains on one. Plain values only (stored as JSON)."""
    import platform
    import socket

    info: dict[str, object] = {
        "host": socket.gethostname(),
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def batch_tensors(batch: Any) -> list[torch.Tensor]:
    """The tensors of a batch: a pytree (tensor, tuple, list, dict) or an object with tensor fields."""
    from torch.utils._pytree import tree_leaves

    leaves = tree_leaves(vars(batch) if hasattr(batch, "__dict__") and not torch.is_tensor(batch) else batch)
    return [t for t in leaves if torch.is_tensor(t)]
