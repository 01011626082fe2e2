"""The engine options of ``probe`` and ``train`` (and ``--spec``) -> the arms to run."""

from __future__ import annotations

from typing import Any

from ablate.errors import AblateInputError


def command_arms(
    spec_path: str | None,
    fixes: list[str],
    scale: float | None,
    seed: int,
    freeze_adapters: bool,
    options: dict[str, Any],
) -> list[Any]:
    """One ``ArmConfig`` per fix, from ``--spec`` (or the AA-CLIP defaults) and the options given."""
    from ablate import arms
    from ablate.spec import command_spec

    if options.get("--batches") is not None and options["--batches"] < 2:
        raise AblateInputError("--batches", "must be >= 2 (one batch gives no interval)")
    eval_batches = options.get("--eval-batches")
    if eval_batches is not None and not 0 <= eval_batches <= 100_000:
        raise AblateInputError("--eval-batches", f"must be in [0, 100000] (0: no evaluation), got {eval_batches}")
    from ablate.engine.fixes import unknown_fixes

    unknown = unknown_fixes(fixes)  # every unknown --fix at once, each with the close one
    if unknown is not None:
        raise AblateInputError("--fix", unknown)
    spec = command_spec(spec_path, options)
    cfgs = [spec.arm(f, scale, seed, frozen=freeze_adapters) for f in fixes]
    for cfg in cfgs:
        try:
            arms.validate(cfg)
        except AblateInputError as exc:
            # the engine's short field names are the options that set them
            raise AblateInputError(_OPTION.get(exc.field, exc.field), exc.message) from None
    return cfgs


_OPTION = {"batches": "--batches", "steps": "--steps", "threshold": "--threshold", "batch_size": "--batch-size"}


def subject_label(cfg: Any) -> str:
    """A few words naming an arm's subject for a table title: AA-CLIP's backbone, or the factory."""
    sub = cfg.subject
    return sub.model.backbone if sub.kind == "aaclip" else sub.factory
