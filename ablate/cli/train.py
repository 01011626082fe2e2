"""``ablate train``: one arm's short training, compared with its baseline run."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from rich.table import Table

from ablate.cli.app import (
    BackboneOpt,
    BatchesOpt,
    BatchSizeOpt,
    ContextNormOpt,
    DeviceOpt,
    FreezeOpt,
    GroupOpt,
    InjectOpt,
    JsonOpt,
    PretrainedOpt,
    QuietOpt,
    ScaleOpt,
    SeedOpt,
    SpecOpt,
    ThreadsOpt,
    ThresholdOpt,
    app,
    out_console,
)
from ablate.cli.arms import command_arms
from ablate.cli.common import emit_json, plain_line, print_probe_table, progress_bar, worker_threads
from ablate.textfmt import fmt


@app.command(
    short_help="Train one arm and its no-branch baseline briefly: adapter gain, gradient ratios, bypass probes "
    "(AA-CLIP, or a spec's model with --spec)."
)
def train(
    fix: Annotated[str, typer.Option("--fix", help="Fix type (see `ablate probe --help`).")] = "none",
    scale: ScaleOpt = None,
    seed: SeedOpt = 0,
    spec: SpecOpt = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Adam steps. Default: the spec's, else 100.")] = None,
    batches: BatchesOpt = None,
    probe_every: Annotated[
        int | None, typer.Option("--probe-every", help="Probe every K steps (0: start and end). Default: 50.")
    ] = None,
    device: DeviceOpt = None,
    backbone: BackboneOpt = None,
    pretrained: PretrainedOpt = None,
    batch_size: BatchSizeOpt = None,
    context_norm: ContextNormOpt = None,
    inject_at: InjectOpt = None,
    threshold: ThresholdOpt = None,
    group: GroupOpt = None,
    freeze_adapters: FreezeOpt = False,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline/--no-baseline",
            help="Also train the no-branch baseline with the same seed and batches and compare step by "
            "step (train_grad_ratio, train_update_ratio, adapter_gain_rel); doubles the time.",
        ),
    ] = True,
    eval_batches: Annotated[
        int | None,
        typer.Option(
            "--eval-batches",
            help="AA-CLIP: after training, evaluate on N test batches (a fixed synthetic set): image- and "
            "pixel-level AUROC and AP per class and their mean (image_auroc, image_ap, pixel_auroc, "
            "pixel_ap). 0: no evaluation (the default without --spec).",
        ),
    ] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Short training run of one arm: loss slope, adapter gain, and the comparison with the baseline.

    adapter_gain: held-out loss with the judged adapter group reset to its initial weights minus the
    loss as trained (> 0: what it learned helps; exactly 0 when frozen). With --baseline (default) the
    no-branch run of the same seed is trained too, and the run's adapter gradient and update-to-weight
    ratio are compared with it step by step (geometric mean after warm-up, 95% interval over the steps,
    widened for their lag-1 autocorrelation, which is shown). The bypass probe R at probe points is
    shown too: after step 0 it also measures how much the trained model relies on its branch
    (co-adaptation), not only dilution. --spec trains a study spec's subject (AA-CLIP or your own
    model) with its settings; --batches defaults to 6 without it.
    """
    from ablate.arms import train_compared

    defaults = spec is None
    options = {
        "--steps": steps if steps is not None or not defaults else 100,
        "--batches": batches if batches is not None or not defaults else 6,
        "--probe-every": probe_every if probe_every is not None or not defaults else 50,
        "--device": device,
        "--backbone": backbone,
        "--pretrained": pretrained,
        "--batch-size": batch_size,
        "--context-norm": context_norm,
        "--inject-at": inject_at,
        "--threshold": threshold,
        "--group": group,
        "--eval-batches": eval_batches,
    }
    cfg = command_arms(spec, [fix], scale, seed, freeze_adapters, options)[0]
    n = cfg.run.steps
    with worker_threads(threads), progress_bar(quiet or as_json) as prog:
        tasks: dict[str, Any] = {}

        def start(label: str) -> None:
            tasks[label] = prog.add_task(label, total=n)

        def end(label: str, done: Any) -> None:
            plain_line(
                quiet or as_json, f"{label}: {n} steps in {done.wall_s:.1f} s, loss slope {fmt(done.loss_slope, 3)}"
            )

        def step(s: int) -> None:
            prog.update(list(tasks.values())[-1], completed=s + 1)

        run = train_compared(cfg, baseline=baseline, on_start=start, on_step=step, on_end=end)
    result = run.result
    summary = result.summary()
    summary["adapter_gain_batches"] = result.adapter_gain_batches
    if run.baseline is not None:
        summary.update(run.comparison)
        summary["baseline"] = run.baseline.summary()
    summary["probes"] = [p.flat() for p in result.probes]
    if as_json:
        emit_json(summary)
        return
    print_train_summary(summary, result, run.baseline is not None, seed, n)


def print_train_summary(summary: dict, result, with_base: bool, seed: int, steps: int) -> None:
    from rich import box

    from ablate.textfmt import interval, scale_text

    scale = "" if result.scale is None else f" s={scale_text(result.scale)}"
    title = f"Training run: {result.fix}{scale}, seed {seed}, {steps} steps"
    if result.frozen:
        title += f", frozen: {', '.join(result.frozen)}"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("meaning")
    g = result.group

    def ci(name: str) -> str:
        return interval(summary[name], summary[f"{name}_lo"], summary[f"{name}_hi"])

    rows = [
        ("adapter_gain", ci("adapter_gain"),
         f"loss with {g} reset - trained"),
    ]  # fmt: skip
    if with_base:
        rows += [
            ("adapter_gain_rel", fmt(summary["adapter_gain_rel"], 3), "gain / baseline's gain"),
            ("train_grad_ratio",
             ci("train_grad_ratio"),
             f"|grad {g}| vs baseline run (steps' lag-1 autocorr. {fmt(summary['train_grad_ratio_ac1'], 2)})"),
            ("train_update_ratio",
             ci("train_update_ratio"),
             f"|dθ|/|θ| {g} vs baseline (lag-1 autocorr. {fmt(summary['train_update_ratio_ac1'], 2)})"),
            ("loss_slope_rel", fmt(summary["loss_slope_rel"], 3), "slope - baseline's slope"),
        ]  # fmt: skip
    rows += [
        ("loss_slope", fmt(summary["loss_slope"], 3), "loss per 100 steps"),
        ("loss_first/last", f"{fmt(summary['loss_first'], 4)} / {fmt(summary['loss_last'], 4)}", ""),
        ("steps_per_s", fmt(summary["steps_per_s"], 3), f"{summary['device']}, probes excluded"),
        ("mfu", fmt(summary["mfu"], 3) if summary["mfu"] == summary["mfu"] else "-", mfu_note(summary)),
        ("wall_s", fmt(summary["wall_s"], 3), ""),
    ]
    ev = summary.get("evaluation")
    if ev is not None:
        base = summary.get("baseline", {}).get("evaluation") if with_base else None
        for m in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap"):
            extra = f"; baseline {fmt(base['metrics'][m], 3)}" if base else ""
            # the mean is over the classes that have a value (a one-label class has none)
            n = sum(1 for v in ev["per_class"].values() if isinstance(v[m], float) and math.isfinite(v[m]))
            rows.append((m, fmt(ev["metrics"][m], 3), f"mean of {n}/{len(ev['per_class'])} classes{extra}"))
        for key, why in ev["reasons"].items():
            rows.append(("", "-", f"{key}: {why}"))
    for row in rows:
        table.add_row(*row)
    out_console().print(table)
    print_probe_table(result.probes, "Bypass probe points (R after step 0 includes co-adaptation)", first="step")


def mfu_note(summary: dict) -> str:
    flops = summary.get("step_flops")
    head = f"{flops / 1e9:.3g} GFLOP/step" if isinstance(flops, float) and flops == flops else "FLOPs not counted"
    if summary.get("mfu") != summary.get("mfu"):  # NaN: no peak rate known (ABLATE_PEAK_TFLOPS sets one)
        return f"{head}; peak unknown"
    return f"{head} / peak bf16"
