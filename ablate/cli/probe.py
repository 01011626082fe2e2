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
    SpecOpt,
    ThreadsOpt,
    ThresholdOpt,
    app,
)
from ablate.cli.arms import command_arms, subject_label
from ablate.cli.common import emit_json, plain_line, print_probe_table, progress_bar, worker_threads
from ablate.errors import AblateInputError
from ablate.textfmt import fmt


@app.command(
    short_help="Paired gradient probe at initialisation: each fix's adapter gradient with and without the branch "
    "(AA-CLIP, or a spec's model with --spec)."
)
def probe(
    fix: FixOpt = None,
    scale: ScaleOpt = None,
    seed: SeedOpt = 0,
    spec: SpecOpt = None,
    batches: BatchesOpt = None,
    device: DeviceOpt = None,
    backbone: BackboneOpt = None,
    pretrained: PretrainedOpt = None,
    batch_size: BatchSizeOpt = None,
    context_norm: ContextNormOpt = None,
    inject_at: InjectOpt = None,
    threshold: ThresholdOpt = None,
    group: GroupOpt = None,
    freeze_adapters: FreezeOpt = False,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Paired gradient probe at initialisation: adapter gradient with / without the branch.

    Same weights, same held-out batches, dropout off. One row per fix: the ratio R of the judged
    adapter group (--group), the other groups' R, each the geometric mean over batches; the 95%
    interval of the judged group's R (t on log ratios, within this seed); its gradient share
    |g|^2/(|g|^2+|g_branch|^2); the final-feature cosine with vs without the branch; the verdict (R of
    the judged group >= --threshold). --spec probes a study spec's subject (AA-CLIP or your own model);
    --batches defaults to 8 without it. --json adds every group's numbers, the norm inflation and the
    step-0 losses; with one --fix it prints one object, otherwise a list.
    """
    from ablate.arms import probe_arm
    from ablate.engine.fixes import fix_names

    names = fix or fix_names()
    if scale is not None and len(names) > 1:
        raise AblateInputError("--scale", "give exactly one --fix when setting --scale")
    options = {"--batches": batches if batches is not None or spec is not None else 8, "--device": device}
    options |= {"--backbone": backbone, "--pretrained": pretrained, "--batch-size": batch_size}
    options |= {"--context-norm": context_norm, "--inject-at": inject_at, "--threshold": threshold, "--group": group}
    cfgs = command_arms(spec, names, scale, seed, freeze_adapters, options)
    results = []
    with worker_threads(threads), progress_bar(quiet or as_json) as prog:
        task = prog.add_task("probe", total=len(cfgs))
        for cfg in cfgs:
            prog.update(task, description=f"probe {cfg.fix}")
            results.append(probe_arm(cfg))
            prog.advance(task)
            plain_line(quiet or as_json, f"probe {cfg.fix}: R {fmt(results[-1].grad_ratio, 3)}")
    if as_json:
        docs = [r.flat() for r in results]
        emit_json(docs[0] if len(docs) == 1 else docs)
        return
    first = cfgs[0]
    title = f"Gradient probe at init ({subject_label(first)}, seed {seed}, {first.probe_batches} batches)"
    print_probe_table(results, title, first="fix")
