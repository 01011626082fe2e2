"""``ablate probe``: the paired gradient probe at initialisation."""

from __future__ import annotations

from ablate.cli.app import (
    BackboneOpt,
    BatchesOpt,
    BatchSizeOpt,
    ContextNormOpt,
    DeviceOpt,
    FixOpt,
    FreezeOpt,
    GroupOpt,
    InjectOpt,
    JsonOpt,
    PretrainedOpt,
    QuietOpt,
    ScaleOpt,
    SeedOpt,
    ThreadsOpt,
    ThresholdOpt,
    app,
)
from ablate.cli.arms import arm_config
from ablate.cli.common import emit_json, plain_line, print_probe_table, progress_bar, worker_threads
from ablate.errors import AblateInputError
from ablate.textfmt import fmt


@app.command(
    short_help="Paired gradient probe at initialisation: each fix's adapter gradient with and without the branch."
)
def probe(
    fix: FixOpt = None,
    scale: ScaleOpt = None,
    seed: SeedOpt = 0,
    batches: BatchesOpt = 8,
    device: DeviceOpt = "auto",
    backbone: BackboneOpt = "tiny",
    pretrained: PretrainedOpt = None,
    batch_size: BatchSizeOpt = 4,
    context_norm: ContextNormOpt = False,
    inject_at: InjectOpt = 0,
    threshold: ThresholdOpt = 0.8,
    group: GroupOpt = "layers",
    freeze_adapters: FreezeOpt = False,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Paired gradient probe at initialisation: adapter gradient with / without the branch.

    Same weights, same held-out batches, dropout off. One row per fix: the ratio R for the block
    adapters (layers), the projections (proj) and both (all), each the geometric mean over batches;
    the 95% interval of the judged group's R (t on log ratios, within this seed); the judged group's
    gradient share |g|^2/(|g|^2+|g_branch|^2); the final-feature cosine with vs without the branch;
    the verdict (R of the judged group >= --threshold). --json adds every group's numbers, the norm
    inflation and the step-0 losses; with one --fix it prints one object, otherwise a list.
    """
    from ablate.engine.fixes import fix_names
    from ablate.subjects.aaclip.arm import probe_arm

    names = fix or fix_names()
    if scale is not None and len(names) > 1:
        raise AblateInputError("--scale", "give exactly one --fix when setting --scale")
    cfgs = [
        arm_config(
            f,
            scale,
            seed,
            batches,
            device,
            backbone,
            pretrained,
            batch_size,
            context_norm,
            inject_at,
            threshold,
            group=group,
            freeze_adapters=freeze_adapters,
        )
        for f in names
    ]
    results = []
    with worker_threads(threads), progress_bar(quiet or as_json) as prog:
        task = prog.add_task("probe", total=len(cfgs))
        for cfg in cfgs:
            prog.update(task, description=f"probe {cfg.model.fix}")
            results.append(probe_arm(cfg))
            prog.advance(task)
            plain_line(quiet or as_json, f"probe {cfg.model.fix}: R {fmt(results[-1].grad_ratio, 3)}")
    if as_json:
        docs = [r.flat() for r in results]
        emit_json(docs[0] if len(docs) == 1 else docs)
        return
    print_probe_table(
        results, f"Gradient probe at init ({backbone}, seed {seed}, {batches} batches x {batch_size})", first="fix"
    )
