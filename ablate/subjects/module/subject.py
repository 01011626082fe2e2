"""A user's own model as a registered subject (ablate/subjects/__init__.py, name ``module``)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ablate.engine.arm import ArmConfig, validate_arm
from ablate.engine.fixes import parse_fix
from ablate.errors import AblateInputError
from ablate.subjects.module.arm import ModuleBuilt, held_out, load_code, make_model, to_device
from ablate.subjects.module.config import ModuleSubjectConfig
from ablate.subjects.module.loading import call_user
from ablate.subjects.module.model import ModuleArm
from ablate.subjects.module.selection import find_module, resolve_groups

NAMES_SHOWN = 4  # parameter names `subject check` lists per group


def _size(params: list[nn.Parameter]) -> dict[str, int]:
    return {"params": sum(p.numel() for p in params), "tensors": len(params)}


def _build(cfg: ModuleSubjectConfig, device: str) -> tuple[ModuleArm, dict[str, list[str]], Any]:
    """The model with the groups resolved and the branch (joined as ``none``) hooked in, on ``device``."""
    code = load_code(cfg)
    with torch.device(device):
        model = make_model(code, cfg, cfg.backbone_seed)
        groups = resolve_groups(model, cfg.groups)
        find_module(model, cfg.branch_at, "subject.branch.at")
        branch = call_user(code.branch, "subject.branch.build", model)
    if not isinstance(branch, nn.Module):
        raise AblateInputError("subject.branch.build", f"must return an nn.Module, got {type(branch).__name__}")
    batch = held_out(code, cfg, cfg.backbone_seed, "probe", 1, "subject check")[0]
    arm = ModuleArm(model, code.loss, groups, cfg.branch_at, cfg.branch_output, parse_fix("none"), branch, 1)
    return arm, groups, batch


def describe(cfg: ModuleSubjectConfig) -> dict[str, Any]:
    """Build the model once (on the meta device where the model allows it, else on the CPU) and dry-run
    one loss: the groups, the branch point, the branch's size, how often the branch point runs."""
    for device in ("meta", "cpu"):
        try:
            arm, groups, batch = _build(cfg, device)
            arm.calls = 0
            with torch.no_grad():
                call_user(arm.compute_loss, "subject.loss", to_device(batch, torch.device(device)))
            break
        except AblateInputError as exc:
            # what the meta device cannot run (data-dependent code) runs again on the CPU
            if device == "cpu" or exc.field not in ("subject.loss", "subject.factory", "subject.branch.build"):
                raise
    if arm.calls != 1:
        why = "did not run" if not arm.calls else f"ran {arm.calls} times"
        raise AblateInputError(
            "subject.branch.at", f"{cfg.branch_at!r} {why} in one call of the loss; name a module that runs once"
        )
    model = arm.model
    params = {n: p for n, p in model.named_parameters()}
    out_groups = {
        g: {**_size([params[n] for n in names]), "names": names[:NAMES_SHOWN], "more": max(0, len(names) - NAMES_SHOWN)}
        for g, names in groups.items()
    }
    every = [params[n] for names in groups.values() for n in names]
    out_groups["all"] = {**_size(every), "names": [], "more": 0}
    frozen = [p for n, p in params.items() if all(n not in names for names in groups.values())]
    return {
        "subject": "module",
        "factory": cfg.factory,
        "device": device,
        "groups": out_groups,
        "frozen": _size(frozen),
        "branch": {"at": cfg.branch_at, "params": _size(list(arm.branch.parameters()))["params"], "calls": arm.calls},
    }


class ModuleSubject:
    name = "module"

    def groups(self, subject_cfg: ModuleSubjectConfig) -> tuple[str, ...]:
        return subject_cfg.group_names

    def validate(self, cfg: ArmConfig) -> None:
        validate_arm(cfg)
        if cfg.run.group not in (*cfg.subject.group_names, "all"):
            raise AblateInputError("probe.group", f"{cfg.run.group!r} is not one of this subject's groups")

    def check_data(self, cfg: ArmConfig) -> None:
        describe(cfg.subject)

    def build(self, cfg: ArmConfig, like: Any = None, stage1: Any = None) -> ModuleBuilt:
        return ModuleBuilt([cfg], like if isinstance(like, ModuleBuilt) else None)

    def trains_stage1(self, cfg: ArmConfig) -> bool:
        return False  # a [subject] spec has no Stage 1

    def run_stage1(self, cfg: ArmConfig, like: Any, on_start: Any, on_step: Any) -> Any:
        raise NotImplementedError("a user's model has no Stage 1")

    def stage1_bytes(self, state: Any) -> bytes:
        raise NotImplementedError("a user's model has no Stage 1")

    def stage1_state(self, cfg: ArmConfig, data: bytes) -> Any:
        raise NotImplementedError("a user's model has no Stage 1")

    def build_pack(
        self, cfgs: Sequence[ArmConfig], like: Any = None, stage1: Sequence[Any] | None = None
    ) -> ModuleBuilt:
        keys = {self.packing_key(c) for c in cfgs}
        if len(keys) > 1:
            raise AblateInputError("pack", "packed arms may differ only in seed and scale (same fix type, settings)")
        return ModuleBuilt(cfgs, like if isinstance(like, ModuleBuilt) else None)

    def check_pack(self, cfg: ArmConfig) -> None:
        """Two arms like ``cfg`` built as a pack: their packed forward and backward run once."""
        ModuleBuilt([cfg, replace(cfg, seed=cfg.seed + 1)])

    def packing_key(self, cfg: ArmConfig) -> Hashable:
        return (cfg.packing_key(), cfg.subject, parse_fix(cfg.fix, cfg.scale).join)

    def describe(self, subject_cfg: ModuleSubjectConfig) -> dict[str, Any]:
        return describe(subject_cfg)


SUBJECT = ModuleSubject()
