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

Where the time goes (ablate/timers.py, every span boundary synchronised with the device): the
trial's ``breakdown_s`` (training steps, data, FLOP count, probes, adapter gain), and ``study``: one
real-scale study run in this process (each seed's Stage 1 for ``--study-stage1-steps`` steps, the
no-branch baselines, one ``learnable-alpha`` trial of ``--study-steps`` steps, its 3 seeds packed, in
a fresh SQLite file), its wall time and its breakdown (builds, Stage 1, training steps, data, FLOP
count, probes, adapter gain, evaluation, database, Optuna, waiting, and what no span covers); the
process start and imports are not in it (the modules are loaded by then).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ablate import timers  # noqa: E402
from ablate.engine.arm import ArmConfig  # noqa: E402
from ablate.engine.fixes import fix_names  # noqa: E402
from ablate.engine.loop import RunConfig, train_arms  # noqa: E402
from ablate.subjects.aaclip.arm import ArmSetup, DataConfig, PackSetup, aaclip_arm  # noqa: E402
from bench.provenance import provenance  # noqa: E402

# One real-scale trial as a study runs it (the quick study's layout at the GPU's scale).
STUDY_SPEC = """\
name = "gpu-bench"
description = "One trial of bench/gpu_bench.py, run as a study runs it."

[model]
backbone = "{backbone}"
pretrained = "none"

[data]
batch_size = {batch_size}
train_size = {pool}

[training]
steps = {steps}
device = "{device}"
pack = 3
precision = "{precision}"

[stage1]
steps = {stage1_steps}

[probe]
batches = 8
gain_batches = 16
every = 50

[search]
fixes = ["learnable-alpha"]

[study]
trials = 1
seeds = [0, 1, 2]
frozen_control = false
"""


def _breakdown(wall: float, names: tuple[str, ...]) -> dict[str, float]:
    """The spans timed since the last ``timers.reset()``, ``rest`` for ``wall`` minus them."""
    spans = timers.snapshot()["seconds"]
    out = {name: round(spans.get(name, 0.0), 3) for name in names}
    out["rest"] = round(wall - sum(spans.values()), 3)
    return out


def _study(args: argparse.Namespace, pool: int, precision: str) -> dict:
    """One real-scale study run in this process: its wall time and where it went."""
    from ablate.spec import parse_spec
    from ablate.study import run_study

    text = STUDY_SPEC.format(
        backbone=args.backbone,
        batch_size=args.batch_size,
        pool=pool,
        steps=args.study_steps,
        device=args.device,
        precision=precision,
        stage1_steps=args.study_stage1_steps,
    )
    spec = parse_spec(text)
    with tempfile.TemporaryDirectory() as tmp:
        timers.reset()
        t = time.perf_counter()
        outcome = run_study(spec, text, f"sqlite:///{tmp}/gpu_bench.db", threads=None)
        wall = time.perf_counter() - t
    if outcome.n_trials != 1 or outcome.failed:
        raise SystemExit(f"the benchmark study did not finish its trial: {outcome}")
    names = tuple(p for p in timers.PHASES if p != "imports")
    return {
        "steps": args.study_steps,
        "stage1_steps": args.study_stage1_steps,
        "runs": "3 Stage 1 runs, 3 baselines and 3 seeds of one learnable-alpha trial (packs of 3)",
        "wall_s": round(wall, 2),
        "breakdown_s": _breakdown(wall, names),
    }


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
    images = cfg.subject.data.batch_size * arms
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
    timers.reset()
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
    # What no span covers is the training steps themselves (forward, backward, Adam, diagnostics).
    breakdown = _breakdown(wall, ("data", "flops", "probe", "gain"))
    breakdown["train_steps"] = breakdown.pop("rest")
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
        "breakdown_s": breakdown,
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
    ap.add_argument("--study-steps", type=int, default=300, help="steps of the study's runs; 0 skips the study")
    ap.add_argument("--study-stage1-steps", type=int, default=10, help="the study's Stage 1 steps per seed")
    args = ap.parse_args(argv)
    made = provenance("gpu_bench.py", argv)
    if torch.device(args.device).type == "cuda":
        timers.set_sync(torch.cuda.synchronize)  # asynchronous work is charged to the span that queued it

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
    study = None
    if args.study_steps:
        study = _study(args, pool, run.precision)
        print(json.dumps({"study": study}), file=sys.stderr, flush=True)
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
        "study": study,
    }
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
