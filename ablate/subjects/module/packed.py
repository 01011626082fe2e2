"""Several arms of a user's model trained side by side: one forward/backward under ``vmap``.

What each arm trains (its groups, its branch and join, their buffers such as a fixed scale) is
stacked along a leading arm dimension; everything else (the frozen weights, which every arm shares)
is the first arm's, unbatched. ``torch.func.functional_call`` runs the first arm's wrapper
(ablate/subjects/module/model.py) with arm a's slice swapped in, so the user's model and its hooks
run unchanged. Losses are summed over arms and Adam is elementwise, so each arm trains as it would
alone; dropout in training draws per arm from one stream (vmap's ``randomness="different"``), so a
model with dropout matches its unpacked runs in distribution, not bit for bit.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from ablate.subjects.module.model import ModuleArm, ModuleOutput


def _key(name: str) -> str:
    return name.replace(".", "__")


class _Gates(nn.Module):
    def __init__(self, join: nn.Module) -> None:
        super().__init__()
        self.join = join

    def forward(self) -> dict[str, torch.Tensor]:
        return self.join.gate_values()


class PackedModuleArms(nn.Module):
    def __init__(self, arms: Sequence[ModuleArm]) -> None:
        super().__init__()
        first = arms[0]
        self.n_arms = len(arms)
        self._template = [first]  # not a submodule: its trainable tensors are replaced by the stacks
        self.group_names = {g: [f"model.{n}" for n in names] for g, names in first.group_names.items()}
        self._branch_names = [f"{m}.{n}" for m in ("branch", "join") for n, _ in _named(first, m, params=True)]
        trained = [n for names in self.group_names.values() for n in names] + self._branch_names
        self._param_names = trained
        for name in trained:
            stacked = torch.stack([a.get_parameter(name).detach() for a in arms])
            self.register_parameter(_key(name), nn.Parameter(stacked))
        self._buffer_names = [f"{m}.{n}" for m in ("branch", "join") for n, _ in _named(first, m, params=False)]
        for name in self._buffer_names:
            self.register_buffer(_key(name), torch.stack([a.get_buffer(name) for a in arms]), persistent=False)

    @property
    def template(self) -> ModuleArm:
        return self._template[0]

    @property
    def has_branch(self) -> bool:
        return self.template.has_branch

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = {n: getattr(self, _key(n)) for n in self._param_names}
        buffers = {n: getattr(self, _key(n)) for n in self._buffer_names}
        return params, buffers

    # --- the Subject interface -----------------------------------------------------------------
    def adapter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {g: [getattr(self, _key(n)) for n in names] for g, names in self.group_names.items()}

    def branch_parameters(self) -> list[nn.Parameter]:
        return [getattr(self, _key(n)) for n in self._branch_names]

    def gate_values(self) -> dict[str, torch.Tensor]:
        join = self.template.join
        if join is None or not join.gate_values():
            return {}
        gates = _Gates(join)
        names = [n for n in (*self._param_names, *self._buffer_names) if n.startswith("join.")]
        state = {n: getattr(self, _key(n)) for n in names}
        return vmap(lambda s: functional_call(gates, s, ()))(state)

    def branch_bypassed(self) -> contextlib.AbstractContextManager[None]:
        return self.template.branch_bypassed()

    def dropout_seeded(self, seeds: Sequence[int]) -> contextlib.AbstractContextManager[None]:
        return self.template.dropout_seeded(seeds)

    def train(self, mode: bool = True) -> PackedModuleArms:
        super().train(mode)
        self.template.train(mode)
        return self

    @contextlib.contextmanager
    def _vmap_mode(self) -> Iterator[str]:
        """vmap's randomness (each arm its own dropout draws in training) with nn.MultiheadAttention's
        inference fast path off: under vmap it would be taken on a graph that needs a backward pass."""
        fast = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with warnings.catch_warnings():
                # vmap runs ops without a batching rule one arm at a time, and says so on every call
                warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
                yield "different" if self.template.training else "same"
        finally:
            torch.backends.mha.set_fastpath_enabled(fast)

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, ModuleOutput]:
        """Per-arm losses [arms] on a batch whose tensors have a leading [arms] dimension."""
        template = self.template
        params, buffers = self._state()

        def one(p: dict, b: dict, arm_batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return functional_call(template, {**p, **b}, (arm_batch,), strict=False)

        with self._vmap_mode() as randomness:
            loss, feats, infl = vmap(one, randomness=randomness)(params, buffers, batch)
        inflation = infl if template.has_branch and template.branch_active else None
        features = feats.reshape(-1, *feats.shape[2:])  # [arms x samples, ...], as one model gives it
        return loss, ModuleOutput(features, inflation)


def _named(arm: ModuleArm, attr: str, params: bool) -> list[tuple[str, torch.Tensor]]:
    module = getattr(arm, attr)
    if module is None:
        return []
    return list(module.named_parameters() if params else module.named_buffers())
