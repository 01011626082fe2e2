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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV_VAR = "ABLATE_MALLOC"

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

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
