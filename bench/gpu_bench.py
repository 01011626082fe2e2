"""GPU benchmark at real scale: every fix unpacked and packed, and one realistic trial, as JSON.

    python bench/gpu_bench.py                      # ViT-L-14-336 at 518 px, random init, bf16
    python bench/gpu_bench.py --steps 40 --pack 8 --trial-steps 300

For each fix: ``--steps`` training steps at batch ``--batch-size`` (probes off), once alone and once
with ``--pack`` arms (seeds) side by side; the step time, images per second, MFU (FLOPs counted once
per configuration with torch's FlopCounterMode, over the device's peak bf16 rate) and peak memory.
Then a trial as a study runs it: ``--trial-steps`` steps of 3 seeds packed, probes every 50 steps and
the held-out gain included, wall-clock; and ``--trials-packed`` such trials (at different scales) in
one pack, as ``training.pack = 3 x trials`` runs them, with the wall-clock per trial. The training
pool is small and generated before timing, so the figures are the model's, not the synthetic-texture
generator's.
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

from ablate.engine.arm import ArmConfig  # noqa: E402
from ablate.engine.fixes import fix_names  # noqa: E402
from ablate.engine.loop import RunConfig, train_arms  # noqa: E402
from ablate.subjects.aaclip.arm import ArmSetup, DataConfig, PackSetup, aaclip_arm  # noqa: E402
from bench.provenance import provenance  # noqa: E402


def _timed(setup, cfg: ArmConfig, arms: int) -> dict:
    """Train ``setup``'s arms for cfg.run.steps steps; the pack's figures."""
    labels = setup.labels if hasattr(setup, "labels") else [setup.label]
    r = train_arms(
        setup.model,
        setup.train_batch,
        setup.probe_batches,
        cfg.run,
        setup.device,
        labels,
        eval_batches=setup.gain_batches,
    )[0]
    images = cfg.data.batch_size * arms
    return {
        "arms": arms,
        "step_ms": 1000.0 / r.steps_per_s,
        "images_per_s": r.steps_per_s * images,
        "step_tflop": r.step_flops / 1e12,
        "mfu": r.mfu,
        "peak_mem_gb": r.peak_mem_mb / 1024,
    }


def _trial(cfg: ArmConfig, scales: list[float | None], shared: ArmSetup, seeds: int = 3) -> dict:
    """Trials as a study trains them (probes and held-out gain included): one per scale, their
    seeds all in one pack; wall-clock in all and per trial."""
    cfgs = [replace(cfg.with_fix(cfg.fix, sc), seed=s) for sc in scales for s in range(seeds)]
    t = time.perf_counter()
    setup = PackSetup(cfgs, like=shared)
    setup_s = time.perf_counter() - t
    t = time.perf_counter()
    results = train_arms(
        setup.model,
        setup.train_batch,
        setup.probe_batches,
        cfg.run,
        setup.device,
        setup.labels,
        eval_batches=setup.gain_batches,
    )
    wall = time.perf_counter() - t
    return {
        "fix": cfg.fix,
        "trials": len(scales),
        "seeds": seeds,
        "steps": cfg.run.steps,
        "wall_s": wall,
        "wall_s_per_trial": wall / len(scales),
        "setup_s": setup_s,
        "train_steps_per_s": results[0].steps_per_s,
        "mfu": results[0].mfu,
        "peak_mem_gb": results[0].peak_mem_mb / 1024,
        "note": f"{len(cfgs)} arms packed, 8 probe batches every 50 steps, 16 held-out batches per seed; "
        "training images from a 16-image pool drawn before timing",
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Default: bf16 on CUDA, fp32 on the CPU, the precision the figures in bench/results were measured
    # at (ablate's only behaviour before training.precision; a spec's default is now AA-CLIP's fp32).
    ap.add_argument("--precision", default=None, choices=("fp32", "tf32", "bf16"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backbone", default="vit-l-14-336@518")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--pack", type=int, default=8)
    ap.add_argument("--fixes", default=",".join(fix_names()))
    ap.add_argument("--trial-steps", type=int, default=300, help="0 skips the trial")
    ap.add_argument("--trials-packed", type=int, default=3, help="then this many trials' seeds in one pack")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step")
    args = ap.parse_args(argv)
    made = provenance("gpu_bench.py", argv)

    pool = 16  # training images per data set: generated once, then cycled
    run = RunConfig(
        steps=args.steps,
        probe_every=-1,
        flush_every=50,
        compile=args.compile,
        precision=args.precision or ("bf16" if args.device.startswith("cuda") else "fp32"),
    )
    base = aaclip_arm(
        data=DataConfig(batch_size=args.batch_size, train_size=pool),
        run=run,
        probe_batches=1,
        gain_batches=2,
        device=args.device,
    )
    base = replace(base, subject=replace(base.subject, model=replace(base.subject.model, backbone=args.backbone)))
    t = time.perf_counter()
    shared = ArmSetup(base.with_fix("no-branch", None))
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    shared.dataset.batch(list(range(pool)))  # draw the pool before any timing
    draw_ms = 1000 * (time.perf_counter() - t) / pool
    _timed(shared, replace(base, run=replace(run, steps=5)), 1)  # CUDA context, kernels, allocator

    fixes: dict[str, dict] = {}
    for fix in args.fixes.split(","):
        cfg = base.with_fix(fix, None)
        alone = _timed(ArmSetup(cfg, like=shared), cfg, 1)
        pack = PackSetup([replace(cfg, seed=s) for s in range(args.pack)], like=shared)
        packed = _timed(pack, cfg, args.pack)
        del pack
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        fixes[fix] = {"unpacked": alone, "packed": packed, "speedup": alone["step_ms"] * args.pack / packed["step_ms"]}
        print(json.dumps({fix: fixes[fix]}), file=sys.stderr, flush=True)

    trial = trials_packed = None
    if args.trial_steps:
        cfg = replace(
            base.with_fix("learnable-alpha", None),
            run=replace(run, steps=args.trial_steps, probe_every=50),
            probe_batches=8,
            gain_batches=16,
        )
        trial = _trial(cfg, [None], shared)
        print(json.dumps({"trial": trial}), file=sys.stderr, flush=True)
        if args.trials_packed > 1:  # what pack = 3 x trials does in a study: several trials at once
            trials_packed = _trial(cfg, [0.1 * 3**k for k in range(args.trials_packed)], shared)
    dev = torch.device(args.device)
    dev = torch.device(args.device)
    doc = {
        **made,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
        "backbone": args.backbone,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "pack": args.pack,
        "compile": args.compile,
        "torch": torch.__version__,
        "build_s": build_s,
        "synthetic_draw_ms_per_image": draw_ms,
        "fixes": fixes,
        "packed_mfu_mean": sum(f["packed"]["mfu"] for f in fixes.values()) / max(len(fixes), 1),
        "trial": trial,
        "trials_packed": trials_packed,
    }
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
