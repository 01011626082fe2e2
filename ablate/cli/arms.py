"""The engine options of ``probe`` and ``train`` -> one arm's config."""

from __future__ import annotations

from ablate.errors import AblateInputError


def arm_config(
    fix: str,
    scale: float | None,
    seed: int,
    batches: int,
    device: str,
    backbone: str,
    pretrained: str | None,
    batch_size: int,
    context_norm: bool,
    inject_at: int,
    threshold: float,
    steps: int = 1,
    probe_every: int = 50,
    group: str = "layers",
    freeze_adapters: bool = False,
    eval_batches: int = 0,
):
    from ablate.engine.loop import RunConfig
    from ablate.subjects.aaclip.arm import ArmConfig, DataConfig, EvalConfig, validate
    from ablate.subjects.aaclip.model import AAClipConfig

    if group not in ("layers", "proj", "all"):
        raise AblateInputError("--group", f"must be layers, proj or all, got {group!r}")
    if batches < 2:
        raise AblateInputError("--batches", "must be >= 2 (one batch gives no interval)")
    if not 0 <= eval_batches <= 100_000:
        raise AblateInputError("--eval-batches", f"must be in [0, 100000] (0: no evaluation), got {eval_batches}")
    cfg = ArmConfig(
        model=AAClipConfig(
            backbone=backbone,
            pretrained=pretrained,
            fix=fix,
            scale=scale,
            inject_at=inject_at,
            context_norm=context_norm,
        ),
        data=DataConfig(batch_size=batch_size),
        run=RunConfig(steps=steps, probe_every=probe_every, threshold=threshold, group=group),
        probe_batches=batches,
        seed=seed,
        device=device,
        freeze_adapters=freeze_adapters,
        eval=EvalConfig(enabled=eval_batches > 0, batches=max(eval_batches, 1)),
    )
    validate(cfg)
    return cfg
