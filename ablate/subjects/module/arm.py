"""A user's model built as an arm: the model from the factory, its groups resolved, the branch made and
hooked in, and its batches (train by step, held-out probe and gain batches) from the user's function.

Pairing: arms of one seed share the groups' initial weights (the factory runs under
``torch.manual_seed(seed)``) and every arm of a study shares the frozen weights (those of a factory
call under ``backbone_seed``), as AA-CLIP's arms share one frozen backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ablate.engine.arm import ArmConfig
from ablate.engine.device import resolve_device
from ablate.engine.fixes import parse_fix
from ablate.engine.probe import ArmLabel
from ablate.errors import AblateInputError
from ablate.subjects.module.config import ModuleSubjectConfig
from ablate.subjects.module.loading import call_user, import_ref
from ablate.subjects.module.model import ModuleArm, stream_of, zero_output_layer
from ablate.subjects.module.packed import PackedModuleArms
from ablate.subjects.module.selection import find_module, resolve_groups

BRANCH_SEED_OFFSET = 1_000_003  # the branch's own RNG stream: the groups' init is the seed's alone
SPLITS = ("train", "probe", "gain")


@dataclass(frozen=True)
class UserCode:
    """The user's functions, imported once."""

    factory: Callable[..., nn.Module]
    batches: Callable[[int, str, int], Any]
    loss: Callable[[nn.Module, Any], torch.Tensor]
    branch: Callable[[nn.Module], nn.Module]


def load_code(cfg: ModuleSubjectConfig) -> UserCode:
    return UserCode(
        factory=import_ref(cfg.factory, cfg.path, "subject.factory"),
        batches=import_ref(cfg.batches, cfg.path, "subject.batches"),
        loss=import_ref(cfg.loss, cfg.path, "subject.loss"),
        branch=import_ref(cfg.branch_build, cfg.path, "subject.branch.build"),
    )


def make_model(code: UserCode, cfg: ModuleSubjectConfig, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = call_user(code.factory, "subject.factory", **cfg.factory_kwargs())
    if not isinstance(model, nn.Module):
        raise AblateInputError("subject.factory", f"must return an nn.Module, got {type(model).__name__}")
    return model


def to_device(batch: Any, device: torch.device) -> Any:
    return tree_map(lambda t: t.to(device) if torch.is_tensor(t) else t, batch)


def stack_batches(batches: Sequence[Any]) -> Any:
    """Arms' batches side by side: every tensor gains a leading [arms] dimension."""
    return tree_map(lambda *ts: torch.stack(ts) if torch.is_tensor(ts[0]) else ts[0], batches[0], *batches[1:])


def held_out(code: UserCode, cfg: ModuleSubjectConfig, seed: int, split: str, n: int, field: str) -> list[Any]:
    """The first ``n`` batches of ``split`` for ``seed``."""
    it = iter(call_user(code.batches, "subject.batches", seed, split, cfg.batch_size))
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            raise AblateInputError(
                "subject.batches", f"split {split!r} gave {len(out)} batches for seed {seed}; {field} needs {n}"
            ) from None
    return out


class TrainBatches:
    """The ``train`` split step by step; when it runs out, ``batches`` is called again (next epoch)."""

    def __init__(self, code: UserCode, cfg: ModuleSubjectConfig, seed: int, device: torch.device) -> None:
        self.code, self.cfg, self.seed, self.device = code, cfg, seed, device
        self._it: Iterator[Any] | None = None
        self._next = 0

    def __call__(self, step: int) -> Any:
        if step != self._next or self._it is None:  # a restart (step 0 again, e.g. the FLOP count)
            self._it, self._next = iter(self.code.batches(self.seed, "train", self.cfg.batch_size)), 0
            for _ in range(step):
                self._draw()
        self._next = step + 1
        return to_device(self._draw(), self.device)

    def _draw(self) -> Any:
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.code.batches(self.seed, "train", self.cfg.batch_size))
            try:
                return next(self._it)
            except StopIteration:
                raise AblateInputError("subject.batches", "the 'train' split yields no batches") from None


@dataclass
class Shared:
    """What every arm of a study shares: the user's code and the frozen weights."""

    code: UserCode
    frozen: dict[str, torch.Tensor]  # name -> tensor, parameters outside the groups and buffers


def _share_frozen(model: nn.Module, frozen: dict[str, torch.Tensor], trained: set[str]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in trained and name in frozen:
                p.copy_(frozen[name])
        for name, b in model.named_buffers():
            if name in frozen:
                b.copy_(frozen[name])


def build_arm(cfg: ArmConfig, shared: Shared | None) -> tuple[ModuleArm, Shared]:
    """One arm's wrapped model (on the arm's device) and what later arms may share."""
    sub: ModuleSubjectConfig = cfg.subject
    device = resolve_device(cfg.device)
    code = shared.code if shared is not None else load_code(sub)
    model = make_model(code, sub, cfg.seed)
    groups = resolve_groups(model, sub.groups)
    trained = {n for names in groups.values() for n in names}
    if shared is None:
        reference = make_model(code, sub, sub.backbone_seed) if cfg.seed != sub.backbone_seed else model
        frozen = {n: p.detach().clone() for n, p in reference.named_parameters() if n not in trained}
        frozen.update({n: b.detach().clone() for n, b in reference.named_buffers()})
        shared = Shared(code, frozen)
    _share_frozen(model, shared.frozen, trained)
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
    find_module(model, sub.branch_at, "subject.branch.at")
    fix = parse_fix(cfg.fix, cfg.scale)
    branch = None
    if fix.has_branch:
        torch.manual_seed(cfg.seed + BRANCH_SEED_OFFSET)
        branch = call_user(code.branch, "subject.branch.build", model)
        if not isinstance(branch, nn.Module):
            raise AblateInputError("subject.branch.build", f"must return an nn.Module, got {type(branch).__name__}")
        if fix.zero_init:
            zero_output_layer(branch, sub.branch_zero, "subject.branch.zero")
    width = _stream_width(model, code, sub, cfg.seed)
    arm = ModuleArm(model, code.loss, groups, sub.branch_at, sub.branch_output, fix, branch, width).to(device)
    return arm, shared


def _stream_width(model: nn.Module, code: UserCode, sub: ModuleSubjectConfig, seed: int) -> int:
    """The last dimension of the stream x at the branch point (a layerscale join needs it), from a
    dry forward under no_grad on the first probe batch."""
    seen: list[Any] = []
    handle = model.get_submodule(sub.branch_at).register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        batch = held_out(code, sub, seed, "probe", 1, "the dry run")[0]
        with torch.no_grad():
            call_user(code.loss, "subject.loss", model, batch)
    finally:
        handle.remove()
    if len(seen) != 1:
        why = "did not run" if not seen else f"ran {len(seen)} times"
        raise AblateInputError(
            "subject.branch.at", f"{sub.branch_at!r} {why} in one call of the loss; name a module that runs once"
        )
    out = seen[0]
    if sub.branch_output is None and isinstance(out, tuple | list):
        raise AblateInputError(
            "subject.branch.output",
            f"{sub.branch_at!r} returns a {type(out).__name__}; say which element is the stream",
        )
    try:
        x = stream_of(out, sub.branch_output)
    except (IndexError, TypeError):
        raise AblateInputError(
            "subject.branch.output", f"{sub.branch_at!r}'s output has no element {sub.branch_output}"
        ) from None
    if not torch.is_tensor(x):
        raise AblateInputError("subject.branch.output", f"the stream at {sub.branch_at!r} is not a tensor")
    return int(x.shape[-1])


class ModuleBuilt:
    """One arm (or a pack) of a user's model, as the engine runs it (``BuiltArm``)."""

    def __init__(self, cfgs: Sequence[ArmConfig], like: ModuleBuilt | None = None) -> None:
        shared = like.shared if like is not None else None
        arms = []
        for cfg in cfgs:
            arm, shared = build_arm(cfg, shared)
            arms.append(arm)
        self.shared = shared
        self.cfg = cfgs[0]
        self.device = resolve_device(cfgs[0].device)
        sub = cfgs[0].subject
        code = shared.code
        self.labels = [ArmLabel(a.fix.name, a.fix.scale, c.seed) for a, c in zip(arms, cfgs)]
        probe = [held_out(code, sub, c.seed, "probe", c.probe_batches, "probe.batches") for c in cfgs]
        gain = [held_out(code, sub, c.seed, "gain", c.gain_batches, "probe.gain_batches") for c in cfgs]
        self._train = [TrainBatches(code, sub, c.seed, self.device) for c in cfgs]
        if len(arms) == 1:
            self.model: Any = arms[0]
            self.probe_batches = [to_device(b, self.device) for b in probe[0]]
            self.gain_batches = [to_device(b, self.device) for b in gain[0]]
        else:
            self.model = PackedModuleArms(arms).to(self.device)
            self.probe_batches = [to_device(stack_batches(bs), self.device) for bs in zip(*probe)]
            self.gain_batches = [to_device(stack_batches(bs), self.device) for bs in zip(*gain)]
            self._check_packs()

    def train_batch(self, step: int) -> Any:
        if len(self._train) == 1:
            return self._train[0](step)
        return stack_batches([t(step) for t in self._train])

    def evaluate(self) -> list[Any] | None:
        return None  # a user's model has no end-of-run evaluation (its loss is what it is judged on)

    def _check_packs(self) -> None:
        """One packed forward and backward on the first probe batch (gradients dropped after): a model
        that vmap cannot run is told so now, in one line, before anything trains."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        try:
            loss, _ = self.model.compute_loss(self.probe_batches[0])
            loss.sum().backward()
        except Exception as exc:  # noqa: BLE001 - whatever vmap refuses, the answer is the same
            line = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise AblateInputError(
                "training.pack", f"this model cannot be packed (torch.func.vmap: {line}); set training.pack = 1"
            ) from None
        finally:
            for p in params:
                p.grad = None
