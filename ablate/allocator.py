"""How the C allocator serves torch's CPU tensors in a process that trains: freed memory is reused.

torch allocates CPU tensors with the C library's ``malloc``. With glibc's defaults, a large block
(above the dynamic mmap threshold, or freed at the top of a heap grown past the trim threshold)
goes back to the kernel when freed, so the next tensor of that size is fresh memory the kernel
zero-fills page by page. A training step allocates and frees the same large tensors every step
(on the quick study's CPU run, the branch's attention weights and their dropout mask, 31.5 MiB each),
so it pays those page faults again every step: ``bench/bench_study_overhead.py`` times the same bare
loop both ways (``bare_s`` against ``bare_same_allocator_s``, docs/performance.md).

:func:`keep_freed_memory` tells glibc to keep freed memory for reuse (``mallopt``: no mmap'd
blocks, trim only beyond 256 MiB free at the heap's top). Arithmetic is untouched (same numbers);
the cost is resident memory: up to 256 MiB freed but held, per process. Not glibc (macOS, musl):
nothing is changed. ``ABLATE_MALLOC=default`` leaves the allocator as it is.

:func:`return_freed_memory` undoes that for a block of code that allocates large arrays of many
sizes once each rather than the same ones every step: the evaluation of a full test set. Kept, the
freed blocks of one size are holes the next size does not fit, and resident memory grows batch by
batch (gigabytes at VisA's test size, ``bench/bench_eval_metrics.py``); with mmap'd blocks back,
each large array goes back to the kernel when freed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

ENV_VAR = "ABLATE_MALLOC"

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
# glibc's defaults (malloc.h, mallopt(3)): what return_freed_memory restores for a while.
DEFAULT_MMAP_MAX = 65536
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_TOP_PAD = 128 * 1024

TRIM_THRESHOLD = 256 << 20  # bytes free at the heap's top before glibc returns them to the kernel
TOP_PAD = 64 << 20  # extra bytes asked of the kernel each time the heap grows

_state: str | None = None  # what the first call did: "kept", "default" or "unavailable"


def keep_freed_memory() -> str:
    """Set the allocator once per process; returns what was done ("kept", "default", "unavailable")."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get(ENV_VAR, "").strip().lower() == "default":
        _state = "default"
        return _state
    mallopt = _glibc_mallopt()
    ok = mallopt is not None and all(
        mallopt(param, value) == 1
        for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD))
    )
    _state = "kept" if ok else "unavailable"
    return _state


def _glibc_mallopt():  # noqa: ANN202 - a ctypes function or None
    """glibc's ``mallopt``, or None where the C library is another (its name and ``gnu_get_libc_version`` tell)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


@contextlib.contextmanager
def return_freed_memory() -> Iterator[None]:
    """Within the block, glibc's own policy (large blocks mmap'd, freed memory returned) when
    :func:`keep_freed_memory` set the other; the kept policy again after it. Elsewhere: nothing."""
    mallopt = _glibc_mallopt() if _state == "kept" else None
    if mallopt is None:
        yield
        return
    _set(mallopt, DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD, DEFAULT_TOP_PAD)
    try:
        yield
    finally:
        _set(mallopt, 0, TRIM_THRESHOLD, TOP_PAD)


def _set(mallopt, mmap_max: int, trim: int, top_pad: int) -> None:  # noqa: ANN001 - a ctypes function
    for param, value in ((_M_MMAP_MAX, mmap_max), (_M_TRIM_THRESHOLD, trim), (_M_TOP_PAD, top_pad)):
        mallopt(param, value)
