"""Packed against unpacked arms on one machine, side by side in one process, as JSON.

    python bench/bench_packed.py                   # tiny default on CPU: 3 seeds, 60 steps, 3 rounds
    python bench/bench_packed.py --trials 3        # 3 trials' seeds in one pack against a pack per trial
    python bench/bench_packed.py --device cuda --backbone vit-l-14-336@518 --batch-size 2

Default: a trial's seeds trained one after another (what ``pack = 1`` does) against the same seeds
trained side by side in one forward/backward (``pack = seeds``). With ``--trials N``: N trials of the
fix (at N scales) as a study with ``pack = seeds`` runs them, one pack per trial, against one pack of
all N x seeds arms (``pack = N x seeds``). Quick study's probe settings. The backbone and training pool
are built once before timing; each round builds fresh arms. Reports the median wall time of each and
``speedup`` = the first / the second.
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

from ablate.arms import train_arm, train_pack
from ablate.engine.loop import RunConfig  # noqa: E402
from ablate.subjects.aaclip.arm import ArmSetup, DataConfig, PackSetup, aaclip_arm  # noqa: E402
from bench.provenance import provenance  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--fix", default="learnable-alpha")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=1, help="trials per pack (> 1: trials packed together)")
    args = ap.parse_args(argv)
    made = provenance("bench_packed.py", argv)

    run = RunConfig(steps=args.steps, probe_every=30)
    cfg = aaclip_arm(
        data=DataConfig(batch_size=args.batch_size), run=run, probe_batches=6, gain_batches=16, device=args.device
    )
    cfg = replace(cfg, subject=replace(cfg.subject, model=replace(cfg.subject.model, backbone=args.backbone)))
    scales = [0.1 * 3**k for k in range(args.trials)] if args.trials > 1 else [None]
    trials = [[replace(cfg.with_fix(args.fix, sc), seed=s) for s in range(args.seeds)] for sc in scales]
    shared = ArmSetup(trials[0][0])
    shared.dataset.batch(list(range(cfg.subject.data.train_size)))  # the pool, drawn once before timing
    first_s, second_s, worst = [], [], 0.0
    for _ in range(args.rounds):
        t = time.perf_counter()
        if args.trials > 1:  # a pack per trial
            apart = [r for cfgs in trials for r in train_pack(cfgs, built=PackSetup(cfgs, like=shared))]
        else:  # one seed at a time
            apart = [train_arm(c, built=ArmSetup(c, like=shared)) for c in trials[0]]
        first_s.append(time.perf_counter() - t)
        every = [c for cfgs in trials for c in cfgs]
        t = time.perf_counter()
        together = train_pack(every, built=PackSetup(every, like=shared))
        second_s.append(time.perf_counter() - t)
        for a, p in zip(apart, together, strict=True):  # the same numbers, or the speed means nothing
            worst = max(worst, *(abs(x - y) / max(abs(x), 1e-9) for x, y in zip(a.metrics["loss"], p.metrics["loss"])))
    first, second = ("one_pack_per_trial_s", "trials_packed_s") if args.trials > 1 else ("unpacked_s", "packed_s")
    doc = {
        **made,
        "device": args.device,
        "backbone": args.backbone,
        "fix": args.fix,
        "seeds": args.seeds,
        "trials": args.trials,
        "arms_packed": args.trials * args.seeds,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0],
        first: first_s,
        second: second_s,
        "speedup": statistics.median(first_s) / statistics.median(second_s),
        "max_rel_loss_diff": worst,
    }
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
