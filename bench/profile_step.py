"""Where a training step's time goes: torch.profiler over a few packed steps, top kernels as text.

python bench/profile_step.py --device cuda --backbone vit-l-14-336@518 --pack 8
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch.profiler import ProfilerActivity, profile  # noqa: E402

from ablate.engine.loop import RunConfig, train_arms  # noqa: E402
from ablate.subjects.aaclip.arm import DataConfig, PackSetup, aaclip_arm


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Default: bf16 on CUDA, fp32 on the CPU, the precision the figures in bench/results were measured
    # at (ablate's only behaviour before training.precision; a spec's default is now AA-CLIP's fp32).
    ap.add_argument("--precision", default=None, choices=("fp32", "tf32", "bf16"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backbone", default="vit-l-14-336@518")
    ap.add_argument("--fix", default="learnable-alpha")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--pack", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args(argv)
    run = RunConfig(
        steps=args.steps,
        probe_every=-1,
        count_flops=False,
        precision=args.precision or ("bf16" if args.device.startswith("cuda") else "fp32"),
    )
    cfg = aaclip_arm(
        data=DataConfig(batch_size=args.batch_size, train_size=16),
        run=run,
        probe_batches=1,
        gain_batches=2,
        device=args.device,
    )
    cfg = replace(cfg, subject=replace(cfg.subject, model=replace(cfg.subject.model, backbone=args.backbone))).with_fix(
        args.fix, None
    )
    setup = PackSetup([replace(cfg, seed=s) for s in range(args.pack)])
    setup.arms[0].dataset.batch(list(range(16)))

    def go() -> None:
        train_arms(
            setup.model,
            setup.train_batch,
            setup.probe_batches,
            run,
            setup.device,
            setup.labels,
            eval_batches=setup.gain_batches,
        )

    go()  # warm-up
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        go()
    key = "self_cuda_time_total" if setup.device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
