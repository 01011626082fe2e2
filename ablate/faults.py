"""Fault injection: ``ABLATE_FAULT=point[:n]`` kills this process outright (SIGKILL, no handler
runs) the n-th time it reaches ``point`` (n = 1 by default).

The tests and ``bench/fault_inject.py`` use it to stop a worker at an exact place (in a probe,
between a flush's rows and its commit, after a trial's runs completed but before Optuna heard of
it) and then check that the next worker repairs what it left. Unset, a point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("probe", "flush", "finish")
_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    raw = os.environ.get("ABLATE_FAULT")
    if not raw:
        return None
    name, _, n = raw.partition(":")
    return name, int(n) if n else 1


_TARGET = _target()


def point(name: str) -> None:
    """Die here if ABLATE_FAULT names this point and this is the chosen visit."""
    if _TARGET is None or _TARGET[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
