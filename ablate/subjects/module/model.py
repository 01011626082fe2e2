"""The user's model wrapped as a ``Subject`` (ablate/engine/subject.py): watched groups, the branch joined
through a forward hook on ``branch.at``, a bypass switch, seeded dropout, and the user's loss.

The user's model needs no changes: the hook replaces the output x of the module at ``branch.at`` by
``join(x, branch(x))`` (the fix registry's join, ablate/engine/fixes.py) while the branch is active.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ablate.engine.fixes import FixChoice, Join
from ablate.engine.subject import BranchSwitch
from ablate.errors import AblateInputError


@dataclass
class ModuleOutput:
    final_features: torch.Tensor | None  # the model's output (its first tensor), for the with/without cosine
    norm_inflation: torch.Tensor | None  # |x + join(c)| / |x| at the branch point; None = branch off


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a module's output (a tensor, a tuple/list, a dict, an object with fields)."""
    if torch.is_tensor(value):
        return value
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, list | tuple):
        items = value
    elif hasattr(value, "__dict__"):
        items = vars(value).values()
    else:
        return None
    for v in items:
        t = first_tensor(v)
        if t is not None:
            return t
    return None


def stream_of(output: Any, index: int | None) -> torch.Tensor:
    """The stream x inside the branch point's output (the output itself, or its element ``index``)."""
    return output if index is None else output[index]


def with_stream(output: Any, index: int | None, x: torch.Tensor) -> Any:
    """The branch point's output with its stream replaced by ``x`` (same container type)."""
    if index is None:
        return x
    if hasattr(output, "_replace"):  # a namedtuple
        return output._replace(**{output._fields[index]: x})
    items = list(output)
    items[index] = x
    return tuple(items) if isinstance(output, tuple) else items


def zero_output_layer(branch: nn.Module, name: str | None, field: str) -> None:
    """Zero-init: the branch's module ``name`` (default: its last Linear or Conv layer) starts at 0."""
    if name is not None:
        try:
            layer = branch.get_submodule(name)
        except AttributeError:
            raise AblateInputError(field, f"the branch has no module {name!r}") from None
    else:
        layers = [m for m in branch.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)]
        if not layers:
            raise AblateInputError(
                field, "zero-init needs a Linear or Conv layer in the branch; name one in branch.zero"
            )
        layer = layers[-1]
    params = list(layer.parameters(recurse=False))
    if not params:
        raise AblateInputError(field, f"the branch's module {name!r} has no parameters to zero")
    with torch.no_grad():
        for p in params:
            p.zero_()


class ModuleArm(BranchSwitch, nn.Module):
    """One arm: the user's model, its groups, and (unless no-branch) the branch and its join."""

    n_arms = 1

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        groups: dict[str, list[str]],
        at: str,
        output_index: int | None,
        fix: FixChoice,
        branch: nn.Module | None,
        width: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.group_names = groups  # group -> parameter names of ``model``
        self.at = at
        self.output_index = output_index
        self.fix = fix
        self.branch = branch if fix.has_branch else None
        self.join: Join | None = fix.build_join(width) if fix.has_branch else None
        self.branch_active = True
        self.calls = 0  # forwards through the branch point (a dry run checks it is 1 per loss)
        self._ctx: dict[str, Any] = {}
        model.get_submodule(at).register_forward_hook(self._join_hook)
        model.register_forward_hook(self._features_hook)

    # --- hooks ---------------------------------------------------------------------------------
    def _join_hook(self, _module: nn.Module, _args: Any, output: Any) -> Any:
        self.calls += 1
        if self.branch is None or not self.branch_active:
            return None
        x = stream_of(output, self.output_index)
        c = self.branch(x)
        if not torch.is_tensor(c) or c.shape != x.shape:
            got = tuple(c.shape) if torch.is_tensor(c) else type(c).__name__
            raise AblateInputError(
                "subject.branch.build", f"the branch returned {got}; it must match x, {tuple(x.shape)}"
            )
        joined = self.join(x, c)
        self._ctx["inflation"] = (joined.norm(dim=-1) / x.norm(dim=-1)).mean().detach()
        return with_stream(output, self.output_index, joined)

    def _features_hook(self, _module: nn.Module, _args: Any, output: Any) -> None:
        t = first_tensor(output)
        if t is not None:
            self._ctx["features"] = t

    # --- the Subject interface -----------------------------------------------------------------
    @property
    def has_branch(self) -> bool:
        return self.branch is not None

    def adapter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {g: [self.model.get_parameter(n) for n in names] for g, names in self.group_names.items()}

    def branch_parameters(self) -> list[nn.Parameter]:
        mods = [m for m in (self.branch, self.join) if m is not None]
        return [p for m in mods for p in m.parameters()]

    def gate_values(self) -> dict[str, torch.Tensor]:
        return self.join.gate_values() if self.join is not None else {}

    @contextlib.contextmanager
    def dropout_seeded(self, seeds: Sequence[int]) -> Iterator[None]:
        """Dropout inside the block draws from torch's RNG seeded with ``seeds[0]``; the RNG is
        restored after (the user's modules draw from the global RNG, so this is the stream we have)."""
        devices = [d for d in {p.device for p in self.parameters()} if d.type == "cuda"]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seeds[0]))
            yield

    def forward(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, final features, norm inflation) as tensors (what a packed call returns per arm)."""
        loss, out = self.compute_loss(batch)
        feats = out.final_features if out.final_features is not None else loss.new_full((1, 1), float("nan"))
        infl = out.norm_inflation if out.norm_inflation is not None else loss.new_ones(())
        return loss, feats, infl

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, ModuleOutput]:
        self._ctx = {}
        loss = self.loss_fn(self.model, batch)
        if not torch.is_tensor(loss) or loss.dim() != 0:
            shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
            raise AblateInputError("subject.loss", f"must return a scalar tensor, got {shape}")
        features = self._ctx.get("features")
        if features is not None and features.dim() < 2:  # one number per sample: the batch is one vector
            features = features.reshape(1, -1)
        return loss, ModuleOutput(features, self._ctx.get("inflation"))
