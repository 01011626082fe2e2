"""How many CPU threads torch may use in this process: a share of the cores, not all of them.

torch starts one intra-op thread per core in every process. Two local workers then run twice as
many threads as there are cores, and the spinning OpenMP threads slow both down by far more than
2x (the quick study took 30 min instead of 158 s with two processes on two cores). So a worker
takes its share, chosen in this order:

1. ``--threads N`` on the command line;
2. ``$ABLATE_THREADS``;
3. ``$OMP_NUM_THREADS`` (the usual variable; torch reads it too);
4. the cores this process may use, divided by the live local ``ablate`` workers (at least 1).

Local workers are counted with one pid file each in a shared temporary folder. Every process that
trains registers while it runs and re-reads the count before each run, so a worker started later
makes the earlier ones take a smaller share at their next run. Files of dead processes are removed.
Torch-free except :func:`apply_threads`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

ENV_VAR = "ABLATE_THREADS"
REGISTRY_DIR = Path(tempfile.gettempdir()) / "ablate-workers"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else the count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return value if value >= 1 else None


def choose_threads(
    explicit: int | None,
    live_workers: int,
    env: Mapping[str, str] | None = None,
    cores: int | None = None,
) -> tuple[int, str]:
    """(threads, why) for this worker; ``why`` names the rule that decided, for the progress line."""
    env = os.environ if env is None else env
    if explicit is not None:
        return explicit, "--threads"
    for var in (ENV_VAR, "OMP_NUM_THREADS"):
        value = _positive_int(env.get(var))
        if value is not None:
            return value, f"${var}"
    cores = cores or available_cores()
    workers = max(1, live_workers)
    return max(1, cores // workers), f"{cores} cores / {workers} local worker{'s' if workers > 1 else ''}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class LocalWorkers:
    """Registers this process as a local worker while inside ``with``; :meth:`live` counts them."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or REGISTRY_DIR
        self.path = self.directory / f"{os.getpid()}.pid"

    def __enter__(self) -> LocalWorkers:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.path.write_text(str(os.getpid()))
        except OSError:  # a read-only temp dir: count this worker alone
            pass
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.path.unlink(missing_ok=True)

    def live(self) -> int:
        """Live registered workers on this machine, this one included; stale files are removed."""
        n = 0
        try:
            entries = list(self.directory.glob("*.pid"))
        except OSError:
            return 1
        for entry in entries:
            pid = _positive_int(entry.stem)
            if pid is not None and _alive(pid):
                n += 1
            else:
                entry.unlink(missing_ok=True)
        return max(1, n)


def apply_threads(n: int) -> None:
    """Set torch's intra-op thread count (inter-op threads are fixed once work has started)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
