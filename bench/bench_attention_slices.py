"""The branch's dropout attention in batch slices against the whole batch at once, as JSON.

    python bench/bench_attention_slices.py                    # quick study's pack of 3, 1 thread
    python bench/bench_attention_slices.py --fix none --rounds 8

Two copies of one pack of the quick study's arms (its seeds side by side, studies/quick.toml), built
alike, take the same training steps in alternating rounds: one with the explicit attention run over
the whole stacked batch, the other in slices of at most ``CPU_SLICE_SCORES`` scores
(ablate/subjects/aaclip/layers.py, what training runs). Every step is timed; the JSON gives each
side's total, mean, median, 90th percentile and slowest step, ``speedup`` (whole / sliced, totals;
``speedup_median``: medians), and
``identical``: whether the two copies' losses were bitwise equal at every step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ablate import arms  # noqa: E402
from ablate.allocator import keep_freed_memory  # noqa: E402
from ablate.spec import load_spec  # noqa: E402
from ablate.study.space import arm_of, default_arm_params  # noqa: E402
from ablate.subjects.aaclip import layers  # noqa: E402
from bench.bench_study_overhead import Arm, Bare  # noqa: E402
from bench.provenance import provenance  # noqa: E402


def _stepper(built: Any, lr: float):  # noqa: ANN202
    model = built.model
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train(True)

    def step(i: int) -> tuple[float, float]:
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = model.compute_loss(built.train_batch(i))
        loss.sum().backward()
        opt.step()
        return time.perf_counter() - t, loss.detach().clone()

    return step


def _summary(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {
        "total_s": round(sum(times), 2),
        "mean_ms": round(statistics.fmean(ms), 1),
        "median_ms": round(statistics.median(ms), 1),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 1),
        "max_ms": round(ms[-1], 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="studies/quick.toml")
    ap.add_argument("--fix", default="learnable-alpha")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10, help="training steps per side and round")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    made = provenance("bench_attention_slices.py", argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as ablate's training processes run (ablate/allocator.py)
    spec, _ = load_spec(ROOT / args.spec if not Path(args.spec).is_absolute() else args.spec)
    bare = Bare(spec)
    name, scale = arm_of(default_arm_params(args.fix))
    pack = [Arm(name, name, scale, seed) for seed in spec.study.seeds]
    weights = [bare.text_side(a.seed) for a in pack]
    cfgs = [bare.cfg(a) for a in pack]
    sides = {}
    for side in ("whole", "sliced"):
        built = arms.build_pack(cfgs, like=bare.like, stage1=weights)
        bare.like = bare.like or built
        sides[side] = _stepper(built, spec.training.lr)
    budget = layers.CPU_SLICE_SCORES
    times: dict[str, list[float]] = {"whole": [], "sliced": []}
    losses: dict[str, list[torch.Tensor]] = {"whole": [], "sliced": []}
    for side, run in sides.items():  # one untimed step each: first-touch allocations
        layers.CPU_SLICE_SCORES = 1 << 62 if side == "whole" else budget
        losses[side].append(run(0)[1])
    step = 1
    for _ in range(args.rounds):
        for side, run in sides.items():
            layers.CPU_SLICE_SCORES = 1 << 62 if side == "whole" else budget
            for i in range(step, step + args.steps):
                seconds, loss = run(i)
                times[side].append(seconds)
                losses[side].append(loss)
        step += args.steps
    layers.CPU_SLICE_SCORES = budget
    identical = all(torch.equal(a, b) for a, b in zip(losses["whole"], losses["sliced"]))
    doc = {
        **made,
        "spec": args.spec,
        "fix": args.fix,
        "arms_in_pack": len(pack),
        "threads": args.threads,
        "steps_per_side": args.rounds * args.steps,
        "slice_scores": budget,
        "whole": _summary(times["whole"]),
        "sliced": _summary(times["sliced"]),
        "speedup": round(sum(times["whole"]) / sum(times["sliced"]), 3),
        "speedup_median": round(statistics.median(times["whole"]) / statistics.median(times["sliced"]), 3),
        "identical": identical,
    }
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
