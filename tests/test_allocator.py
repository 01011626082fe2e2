"""A process that trains keeps freed memory for reuse (ablate/allocator.py); the opt-out leaves glibc alone."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys

import pytest

# In a fresh process: free a 64 MiB tensor and report how much of it stayed resident, the allocator
# set as $MODE says ("kept": ablate's setting, "default": glibc's own).
PROBE = """
import json, os, sys
from ablate.allocator import keep_freed_memory
state = keep_freed_memory() if os.environ["MODE"] == "kept" else "untouched"
import torch

def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

before = resident_mib()
x = torch.ones(64 * 2**20 // 4)  # 64 MiB, written, so resident
during = resident_mib()
del x
after = resident_mib()
print(json.dumps({"state": state, "grew": during - before, "kept": after - before}))
"""


def _run(mode: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "MODE": mode, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not ctypes.util.find_library("c") or not os.path.exists("/proc/self/statm"),
    reason="glibc's allocator on Linux",
)


@glibc
def test_freed_tensor_memory_is_kept_with_ablates_setting_and_returned_without_it():
    kept, default = _run("kept"), _run("default")
    assert kept["state"] == "kept"
    assert kept["grew"] > 60 and default["grew"] > 60  # the tensor was resident in both
    # glibc's default hands a block this large back to the kernel when it is freed; ablate's keeps it
    # for the next tensor (the page faults a training step would otherwise pay again).
    assert default["kept"] < 8
    assert kept["kept"] > 60


@glibc
def test_ablate_malloc_default_leaves_the_allocator_alone():
    out = _run("kept", ABLATE_MALLOC="default")
    assert out["state"] == "default"
    assert out["kept"] < 8


def test_the_setting_is_made_once_per_process():
    from ablate import allocator

    first = allocator.keep_freed_memory()
    assert first in ("kept", "default", "unavailable")
    assert allocator.keep_freed_memory() == first


# Kept, then within return_freed_memory (an evaluation), then after it: a 64 MiB tensor freed each time.
PROBE_WITHIN = """
import json, os
from ablate.allocator import keep_freed_memory, return_freed_memory
keep_freed_memory()
import torch

def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def left_after_free():
    before = resident_mib()
    x = torch.ones(64 * 2**20 // 4 + 1024 * int(os.urandom(1)[0]))  # a size not freed before
    del x
    return resident_mib() - before

with return_freed_memory():
    within = left_after_free()
after = left_after_free()
print(json.dumps({"within": within, "after": after}))
"""


@glibc
def test_an_evaluation_returns_freed_memory_and_training_keeps_it_again():
    out = subprocess.run([sys.executable, "-c", PROBE_WITHIN], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["within"] < 8  # the evaluation's large arrays go back to the kernel: no growth batch by batch
    assert got["after"] > 60  # and the training's setting holds again after it
