"""Packed against unpacked seeds on one machine, side by side in one process, as JSON.

    python bench/bench_packed.py                   # tiny default on CPU: 3 seeds, 60 steps, 3 rounds
    python bench/bench_packed.py --device cuda --backbone vit-l-14-336@518 --batch-size 2

A trial's seeds trained one after another (what ``pack = 1`` does) against the same seeds trained
side by side in one forward/backward (``pack = N``), with the quick study's probe settings. The
backbone and training pool are built once before timing; each round builds fresh arms. Reports
the median wall time of each and ``speedup`` = unpacked / packed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ablate.train.arm import ArmConfig, ArmSetup, DataConfig, PackSetup, train_arm, train_pack  # noqa: E402
from ablate.train.run import RunConfig  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--fix", default="learnable-alpha")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    run = RunConfig(steps=args.steps, probe_every=30)
    cfg = ArmConfig(
        data=DataConfig(batch_size=args.batch_size), run=run, probe_batches=6, gain_batches=16, device=args.device
    )
    cfg = replace(cfg, model=replace(cfg.model, backbone=args.backbone)).with_fix(args.fix, None)
    cfgs = [replace(cfg, seed=s) for s in range(args.seeds)]
    shared = ArmSetup(cfg)
    shared.dataset.batch(list(range(cfg.data.train_size)))  # the pool, drawn once before timing
    unpacked, packed, worst = [], [], 0.0
    for _ in range(args.rounds):
        t = time.perf_counter()
        alone = [train_arm(c, setup=ArmSetup(c, like=shared)) for c in cfgs]
        unpacked.append(time.perf_counter() - t)
        t = time.perf_counter()
        together = train_pack(cfgs, setup=PackSetup(cfgs, like=shared))
        packed.append(time.perf_counter() - t)
        for a, p in zip(alone, together):  # the same numbers, or the speed means nothing
            worst = max(worst, *(abs(x - y) / max(abs(x), 1e-9) for x, y in zip(a.metrics["loss"], p.metrics["loss"])))
    doc = {
        "device": args.device,
        "backbone": args.backbone,
        "fix": args.fix,
        "seeds": args.seeds,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0],
        "unpacked_s": unpacked,
        "packed_s": packed,
        "speedup": statistics.median(unpacked) / statistics.median(packed),
        "max_rel_loss_diff": worst,
    }
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
