"""What a study costs beyond its training: the quick study against the bare training of its arms, as JSON.

    python bench/bench_study_overhead.py                       # studies/quick.toml, 1 thread
    python bench/bench_study_overhead.py --reference-db a.db   # also: same numbers as that study's?

The study: ``ablate study run SPEC --threads N --no-plots --quiet`` in a fresh SQLite file, timed
from the process's start to its exit, with ``ABLATE_TIMINGS`` set so the process writes where its
time went (ablate/timers.py: exclusive spans, so the parts add up; ``startup`` is the process start
and the CLI's own imports before the command runs, ``teardown`` the interpreter's exit, ``other``
what no span covers: the CLI, the spec, the preflight, the runner's own bookkeeping).

The bare training (``bare_s``), in this process with the same torch thread count: for every arm the
study trains (each fix of ``search.fixes`` at its default scale, the no-branch baseline and the
frozen control, for every seed), the same model built by the same code from the same spec (frozen
backbone, adapters, branch, its seed's Stage 1 text side), then a hand-written loop: for each of
``training.steps`` steps, the arm's training batch of that step (the same synthetic images and
augmentation as the study's), ``zero_grad``, ``compute_loss``, ``backward``, ``Adam.step``, with the
study's learning rate and betas, on every trainable parameter (the frozen control: its block
adapters get ``requires_grad = False``, so its backward stops before them); one arm at a time, as a
hand-written script would run them. Plus each seed's Stage 1 text adapter, trained by the subject's
own Stage 1 loop (it is training, not overhead). Not in it: building the models (the study's builds
are in its breakdown), probes, the adapter gain, diagnostics, the database, Optuna.

Side by side on a shared machine: half of the bare arms run before the study and half after, so a
load that drifts during the run shifts both about equally; the load before, between and after is
recorded. The bare training runs twice: in this process with glibc's allocator as it is (``bare_s``, as
a hand-written script runs) and in a child process whose allocator keeps freed memory as ablate's
training processes do (``bare_same_allocator_s``, ablate/allocator.py): the first is what a user's own
loop costs, the second isolates what the study adds. ``measurement_s`` is the probes' and the adapter
gain's time (the passes the spec asks for); ``ratio_without_measurement`` the rest of the study over
the bare training. ``bare_packed_s`` times the same hand-written loop over the study's packs (its seeds
stacked in one model, as ``training.pack`` trains them), the stricter reference when packing pays.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ablate import arms  # noqa: E402
from ablate.allocator import keep_freed_memory  # noqa: E402
from ablate.engine.arm import ArmConfig  # noqa: E402
from ablate.engine.device import autocast  # noqa: E402
from ablate.engine.fixes import NO_BRANCH  # noqa: E402
from ablate.spec import StudySpec, load_spec  # noqa: E402
from ablate.study.space import arm_of, default_arm_params  # noqa: E402
from ablate.subjects.aaclip.arm import arm_data  # noqa: E402
from ablate.timers import PHASES  # noqa: E402
from bench.provenance import provenance  # noqa: E402
from bench.study_numbers import differences, numbers  # noqa: E402


@dataclass(frozen=True)
class Arm:
    label: str
    fix: str
    scale: float | None
    seed: int
    frozen: bool = False


def study_arms(spec: StudySpec) -> list[Arm]:
    """Every arm the study trains, seed by seed: baseline, control, then each trial's fix."""
    fixes = spec.search.fixes
    if spec.study.trials > len(fixes):
        raise SystemExit("this benchmark knows the default-scale trials only: give a spec with trials <= its fixes")
    out = []
    for seed in spec.study.seeds:
        out.append(Arm("baseline", NO_BRANCH, None, seed))
        if spec.study.frozen_control:
            out.append(Arm("control", NO_BRANCH, None, seed, frozen=True))
        for fix in fixes[: spec.study.trials]:
            name, scale = arm_of(default_arm_params(fix))
            out.append(Arm(name, name, scale, seed))
    return out


def bare_loop(built: Any, cfg: ArmConfig) -> tuple[float, float]:
    """A hand-written Adam loop over the built arm(s); (wall, CPU) seconds."""
    model, device = built.model, built.device
    if cfg.frozen:
        for p in model.adapter_groups()[cfg.run.group]:
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.run.lr, betas=cfg.run.betas, fused=device.type == "cuda" or None)
    model.train(True)
    t, c = time.perf_counter(), time.process_time()
    for step in range(cfg.run.steps):
        batch = built.train_batch(step)
        opt.zero_grad(set_to_none=True)
        with autocast(device, cfg.run.precision):
            loss, _ = model.compute_loss(batch)
        loss.sum().backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t, time.process_time() - c


class Bare:
    """The bare training of the study's arms, in parts (so they can run before and after the study)."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self.like: Any = None
        self.stage1: dict[int, Any] = {}
        self.stage1_s: dict[int, tuple[float, float]] = {}

    def text_side(self, seed: int) -> Any:
        """The seed's Stage 1 weights, trained (and timed) the first time they are needed."""
        if seed not in self.stage1 and self.spec.trains_stage1:
            cfg = self.spec.arm(NO_BRANCH, None, seed)
            kind = arms.kind_of(cfg)
            if self.like is None:  # the backbone and data set, built untimed
                self.like = arm_data(cfg)
            t, c = time.perf_counter(), time.process_time()
            result, data = kind.run_stage1(cfg, self.like, None, None)
            self.stage1_s[seed] = (time.perf_counter() - t, time.process_time() - c)
            self.like = self.like or data
            self.stage1[seed] = result.state
        return self.stage1.get(seed)

    def cfg(self, arm: Arm) -> ArmConfig:
        return self.spec.arm(arm.fix, arm.scale, arm.seed, frozen=arm.frozen)

    def unpacked(self, arm: Arm) -> tuple[float, float]:
        weights = self.text_side(arm.seed)
        cfg = self.cfg(arm)
        built = arms.build(cfg, like=self.like, stage1=weights)
        self.like = self.like or built
        return bare_loop(built, cfg)

    def packed(self, pack: list[Arm]) -> tuple[float, float]:
        weights = [self.text_side(a.seed) for a in pack]
        cfgs = [self.cfg(a) for a in pack]
        built = arms.build_pack(cfgs, like=self.like, stage1=weights) if len(cfgs) > 1 else None
        built = built or arms.build(cfgs[0], like=self.like, stage1=weights[0])
        self.like = self.like or built
        return bare_loop(built, cfgs[0])


def run_study(spec_path: str, db: Path, threads: int) -> dict[str, Any]:
    """The study as a user runs it: its wall and CPU time (every thread of the process) and where they went."""
    timings = db.with_suffix(".timings.json")
    cmd = [sys.executable, "-m", "ablate", "study", "run", spec_path, "--storage", f"sqlite:///{db}"]
    cmd += ["--threads", str(threads), "--no-plots", "--quiet"]
    env = {**os.environ, "ABLATE_TIMINGS": str(timings), "PYTHONPATH": str(ROOT)}
    started = time.time()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=db.parent, env=env, stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"the study failed (exit {proc.returncode}): {' '.join(cmd)}")
    cpu = usage.ru_utime + usage.ru_stime
    doc = json.loads(timings.read_text())

    def parts(spans: dict[str, float], start: float, end: float, total: float) -> dict[str, float]:
        out = {"startup": start}
        out.update({name: spans.get(name, 0.0) for name in PHASES})
        out.update({name: s for name, s in spans.items() if name not in PHASES})
        out["teardown"] = max(total - end, 0.0)
        out["other"] = total - sum(out.values())
        return out

    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "parts_s": parts(doc["seconds"], doc["entered_unix"] - started, doc["exited_unix"] - started, wall),
        "parts_cpu_s": parts(doc["cpu_seconds"], doc["entered_process_cpu_s"], doc["exited_process_cpu_s"], cpu),
        "calls": doc["calls"],
    }


def _revision() -> str:
    """This checkout's commit (with ``+changes`` when its tracked files differ from it)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        return "unknown"
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD"]).returncode != 0
    return head.stdout.strip() + ("+changes" if dirty else "")


def _halves(items: list[Any]) -> tuple[list[Any], list[Any]]:
    return items[0::2], items[1::2]  # every other one: both halves hold the same mix of arms


def _plan(spec: StudySpec) -> tuple[list[Arm], list[list[Arm]]]:
    """The study's arms, and its packs: one arm's seeds side by side, ``training.pack`` at a time."""
    plan = study_arms(spec)
    size = spec.training.pack
    by_arm: dict[tuple, list[Arm]] = {}
    for a in plan:
        by_arm.setdefault((a.label, a.fix, a.scale, a.frozen), []).append(a)
    return plan, [group[i : i + size] for group in by_arm.values() for i in range(0, len(group), size)]


def bare_half(spec: StudySpec, half: int, packed: bool) -> dict[str, Any]:
    """One half of the bare training (every other arm, and pack): (wall, CPU) per arm, pack and Stage 1."""
    plan, packs = _plan(spec)
    bare = Bare(spec)
    unpacked = [bare.unpacked(a) for a in _halves(plan)[half]]
    packed_times = [bare.packed(p) for p in _halves(packs)[half]] if packed else []
    return {"unpacked": unpacked, "packed": packed_times, "stage1": {str(k): v for k, v in bare.stage1_s.items()}}


def bare_half_elsewhere(spec_path: str, half: int, threads: int) -> dict[str, Any]:
    """:func:`bare_half` (unpacked only: its packed times are not reported) in a fresh process whose
    allocator keeps freed memory, as ablate's does."""
    cmd = [sys.executable, __file__, "--spec", spec_path, "--threads", str(threads), "--bare-half", str(half)]
    cmd += ["--no-packed-bare"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode:
        raise SystemExit(f"the bare loop with ablate's allocator failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="studies/quick.toml")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the study and the bare loop")
    ap.add_argument("--no-packed-bare", action="store_true", help="skip the packed bare loop")
    ap.add_argument("--keep-db", default=None, help="keep the study's database here")
    ap.add_argument("--reference-db", default=None, help="check the study's numbers equal this database's")
    ap.add_argument(
        "--code", default=None, help="what code is measured, for the JSON (default: this checkout's commit)"
    )
    ap.add_argument("--bare-half", type=int, choices=(0, 1), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    spec_path = str(ROOT / args.spec) if not Path(args.spec).is_absolute() else args.spec
    spec, _text = load_spec(spec_path)
    torch.set_num_threads(args.threads)
    if args.bare_half is not None:  # the child of bare_half_elsewhere
        keep_freed_memory()
        doc = bare_half(spec, args.bare_half, not args.no_packed_bare)
        print(json.dumps(doc))
        return doc
    made = provenance("bench_study_overhead.py", argv)
    plan, packs = _plan(spec)
    packed = not args.no_packed_bare

    loads = {"before": os.getloadavg()[0]}
    halves = [bare_half(spec, 0, packed), bare_half_elsewhere(spec_path, 0, args.threads)]
    loads["study_start"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.keep_db).resolve() if args.keep_db else Path(tmp) / "study.db"
        if db.exists():
            db.unlink()
        study = run_study(spec_path, db, args.threads)
        loads["study_end"] = os.getloadavg()[0]
        same = None
        if args.reference_db:
            diff = differences(numbers(args.reference_db), numbers(db))
            same = {"identical": not diff, "differences": diff, "reference": args.reference_db}
    halves += [bare_half(spec, 1, packed), bare_half_elsewhere(spec_path, 1, args.threads)]
    loads["after"] = os.getloadavg()[0]
    default, kept = [halves[0], halves[2]], [halves[1], halves[3]]

    def stage1(parts: list[dict[str, Any]]) -> list[tuple[float, float]]:
        """Each seed's Stage 1 once (both halves train it: every half holds arms of every seed)."""
        seen: dict[str, tuple[float, float]] = {}
        for h in parts:
            for seed, t in h["stage1"].items():
                seen.setdefault(seed, t)
        return list(seen.values())

    def total(parts: list[dict[str, Any]], key: str, i: int) -> float:
        return sum(t[i] for t in (*(t for h in parts for t in h[key]), *stage1(parts)))

    bare_s, bare_cpu = total(default, "unpacked", 0), total(default, "unpacked", 1)
    kept_s, kept_cpu = total(kept, "unpacked", 0), total(kept, "unpacked", 1)
    wall, cpu = study["wall_s"], study["cpu_s"]
    parts, parts_cpu = study["parts_s"], study["parts_cpu_s"]
    training = ("train_steps", "data", "stage1")
    measured = parts["probe"] + parts["gain"]
    doc: dict[str, Any] = {
        **made,
        "code": args.code or _revision(),
        "spec": args.spec,
        "threads": args.threads,
        "arms": len(plan),
        "steps": spec.training.steps,
        "pack": spec.training.pack,
        "study_wall_s": round(wall, 2),
        "bare_s": round(bare_s, 2),
        "ratio": round(wall / bare_s, 3),
        "study_cpu_s": round(cpu, 2),
        "bare_cpu_s": round(bare_cpu, 2),
        "ratio_cpu": round(cpu / bare_cpu, 3),
        "target": 1.2,
        "bare_same_allocator_s": round(kept_s, 2),
        "ratio_same_allocator": round(wall / kept_s, 3),
        "bare_same_allocator_cpu_s": round(kept_cpu, 2),
        "ratio_cpu_same_allocator": round(cpu / kept_cpu, 3),
        "bare_stage1_s": round(sum(t[0] for t in stage1(default)), 2),
        "bare_halves_s": [round(sum(t[0] for t in h["unpacked"]), 2) for h in default],
        "breakdown_s": {k: round(v, 2) for k, v in parts.items()},
        "breakdown_cpu_s": {k: round(v, 2) for k, v in parts_cpu.items()},
        # The probes and the adapter gain are the measurements the spec asks for (their passes are set
        # by probe.batches, probe.every and probe.gain_batches); the rest is the harness around them.
        "measurement_s": round(measured, 2),
        "ratio_without_measurement": round((wall - measured) / bare_s, 3),
        "ratio_without_measurement_same_allocator": round((wall - measured) / kept_s, 3),
        "overhead_s": round(wall - sum(parts[k] for k in training), 2),
        "overhead_cpu_s": round(cpu - sum(parts_cpu[k] for k in training), 2),
        "span_calls": study["calls"],
        "load_avg_1m_during": loads,
        "bare_includes": "per arm: the step's training batch, zero_grad, compute_loss, backward, Adam.step, for "
        "training.steps steps, one arm at a time, models built untimed; plus each seed's Stage 1 training",
        "bare_allocator": "bare_s: glibc's defaults, as a hand-written script runs; bare_same_allocator_s: in a "
        "process whose allocator keeps freed memory, as ablate's training processes do (ablate/allocator.py)",
    }
    if packed:
        packed_s, packed_cpu = total(default, "packed", 0), total(default, "packed", 1)
        doc.update(bare_packed_s=round(packed_s, 2), ratio_vs_packed_bare=round(wall / packed_s, 3))
        doc.update(bare_packed_cpu_s=round(packed_cpu, 2), ratio_cpu_vs_packed_bare=round(cpu / packed_cpu, 3))
    if same is not None:
        doc["numbers"] = same
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
