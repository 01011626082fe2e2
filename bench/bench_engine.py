"""Engine timings, side by side in one process: the probe of every fix and short training runs.

    python bench/bench_engine.py                       # tiny default on CPU (the README's figures)
    python bench/bench_engine.py --device cuda --backbone vit-l-14-336@518 --batch-size 2 --steps 50

Prints one JSON document: seconds for the probe of each fix and in all, seconds and steps/s for a
training run with the full-scale branch (`none`) and without it (`no-branch`), their ratio, and
the peak memory. Model building is timed separately so the figures are the probe and the loop.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ablate.arms import train_arm
from ablate.engine.fixes import fix_names  # noqa: E402
from ablate.engine.loop import RunConfig  # noqa: E402
from ablate.engine.probe import run_probe  # noqa: E402
from ablate.subjects.aaclip.arm import ArmSetup, DataConfig, aaclip_arm  # noqa: E402
from bench.provenance import provenance  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--batches", type=int, default=8, help="probe batches")
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args(argv)
    made = provenance("bench_engine.py", argv)

    base = aaclip_arm(
        data=DataConfig(batch_size=args.batch_size),
        run=RunConfig(steps=args.steps, probe_every=50),
        probe_batches=args.batches,
        device=args.device,
    )
    base = replace(base, subject=replace(base.subject, model=replace(base.subject.model, backbone=args.backbone)))
    probe_s, build_s = {}, {}
    for fix in fix_names():
        t = time.perf_counter()
        setup = ArmSetup(base.with_fix(fix, None))
        build_s[fix] = time.perf_counter() - t
        t = time.perf_counter()
        run_probe(setup.model, setup.probe_batches, setup.device, setup.fix_name, setup.scale)
        if setup.device.type == "cuda":
            torch.cuda.synchronize()
        probe_s[fix] = time.perf_counter() - t
    train = {}
    for fix in ("none", "no-branch"):
        r = train_arm(base.with_fix(fix, None))
        train[fix] = {"wall_s": r.wall_s, "steps_per_s": r.steps_per_s, "peak_mem_mb": r.peak_mem_mb}
    doc = {
        **made,
        "device": str(setup.device),
        "backbone": args.backbone,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "probe_s": probe_s,
        "probe_all_s": sum(probe_s.values()),
        "build_all_s": sum(build_s.values()),
        "train": train,
        "train_branch_over_baseline_wall": train["none"]["wall_s"] / train["no-branch"]["wall_s"],
    }
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
