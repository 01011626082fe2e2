"""Packed arms: several arms train side by side in one forward/backward over a shared frozen backbone.

The frozen CLIP sees the arms' batches stacked ([arms x B] images) once per step; each arm's own
modules (adapters, projections, branch, join) are stacked along a leading arm dimension
(``torch.func.stack_module_state``) and applied to that arm's slice under ``vmap``. The arms stay
independent: the loss is a sum of per-arm losses, Adam is elementwise (so one Adam over the stacked
parameters is one Adam per arm), and each arm draws dropout from its own stream. A packed arm
therefore trains exactly as it would alone, up to float reordering (tests/test_packed.py).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ablate.errors import AblateInputError
from ablate.subjects.aaclip.layers import attend
from ablate.subjects.aaclip.model import AAClipModel, _AAClipBase


class Stacked(nn.Module):
    """One per-arm module stacked over arms: its parameters and buffers get a leading [arms] dimension.

    ``forward(*args)`` runs the module once per arm under ``vmap``; every tensor argument is per arm
    ([arms, ...]); ``None`` arguments pass through.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        params, buffers = stack_module_state(list(modules))
        # The template only lends its code and shapes; the stacked tensors below are the state.
        self._template = [copy.deepcopy(modules[0]).to("meta")]
        self._names = list(params), list(buffers)
        for name, t in params.items():
            self.register_parameter(_key(name), nn.Parameter(t.detach().clone()))
        for name, t in buffers.items():
            self.register_buffer(_key(name), t.detach().clone(), persistent=False)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        pnames, bnames = self._names
        return {n: getattr(self, _key(n)) for n in pnames}, {n: getattr(self, _key(n)) for n in bnames}

    def forward(self, *args: torch.Tensor | None) -> torch.Tensor:
        return self.call(lambda module, *a: module(*a), *args)

    def call(self, fn, *args: torch.Tensor | None):  # noqa: ANN001, ANN201 - any per-module function
        """``fn(module, *args)`` per arm, with the arm's parameters in ``module``."""
        template = self._template[0]

        def one(params: dict, buffers: dict, *a: torch.Tensor | None):  # noqa: ANN202
            return functional_call(_Call(template, fn), (_prefix(params), _prefix(buffers)), a)

        params, buffers = self.state()
        dims = (0, 0, *(None if a is None else 0 for a in args))
        return vmap(one, in_dims=dims)(params, buffers, *args)


class _Call(nn.Module):
    """Runs ``fn(module, *args)`` as a module's forward, so functional_call can swap its parameters."""

    def __init__(self, module: nn.Module, fn) -> None:  # noqa: ANN001
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, *args):  # noqa: ANN002, ANN201
        return self.fn(self.module, *args)


def _key(name: str) -> str:
    return name.replace(".", "__")


def _prefix(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"module.{k}": v for k, v in d.items()}


def _qkv(arm: nn.Module, x: torch.Tensor, context: torch.Tensor):  # noqa: ANN202
    return arm.branch.qkv(x, context)


def _output_and_join(arm: nn.Module, x: torch.Tensor, attended: torch.Tensor):  # noqa: ANN202
    joined = arm.join(x, arm.branch.output(attended))
    return joined, (joined.norm(dim=-1) / x.norm(dim=-1)).mean().detach()


class _BranchJoin(nn.Module):
    """The branch and its join of one arm, as one module to stack."""

    def __init__(self, branch: nn.Module, join: nn.Module) -> None:
        super().__init__()
        self.branch = branch
        self.join = join


class PackedAAClip(_AAClipBase):
    """Arms that share a frozen backbone and a structure (same fix type, adapters, levels), packed.

    Batches are [arms, B, ...]; losses, gate values and norm inflation are [arms]. The arms' scales,
    seeds and initial weights may differ (they are per-arm state).
    """

    def __init__(self, arms: Sequence[AAClipModel]) -> None:
        super().__init__()
        first = arms[0]
        for a in arms[1:]:
            if a.clip is not first.clip:
                raise AblateInputError("pack", "packed arms must share one backbone (build them with shared=)")
            same = (
                a.cfg.inject_at == first.cfg.inject_at
                and a.detection_logit_scale == first.detection_logit_scale
                and a.adapter_layers == first.adapter_layers
                and a.levels == first.levels
                and a.fix.join is first.fix.join
                and a.cfg.adapter_weight == first.cfg.adapter_weight
                and (a.cfg.branch_heads, a.cfg.branch_dropout) == (first.cfg.branch_heads, first.cfg.branch_dropout)
            )
            if not same:
                raise AblateInputError("pack", f"arm {a.fix.name!r} does not match {first.fix.name!r} in structure")
        self.n_arms = len(arms)
        self.detection_logit_scale = first.detection_logit_scale
        self.adapter_weight = first.adapter_weight
        # Each arm keeps its own class text embeddings (arms of different seeds have their own Stage 1).
        self._init_shared(first.shared, torch.stack([a.text_embeds for a in arms]))
        self._gate_names = sorted(first.gate_values())
        self.adapter_layers, self.levels, self.grid, self.inject_at = (
            first.adapter_layers,
            first.levels,
            first.grid,
            first.inject_at,
        )
        self.adapters = nn.ModuleList(Stacked([a.adapters[i] for a in arms]) for i in range(self.adapter_layers))
        self.seg_proj = nn.ModuleList(Stacked([a.seg_proj[i] for a in arms]) for i in range(len(self.levels)))
        self.det_proj = Stacked([a.det_proj for a in arms])
        self.branch: Stacked | None = None
        self.dropout = first.branch.dropout if first.branch is not None else 0.0
        self.branch_heads = first.branch.heads if first.branch is not None else 0
        if first.has_branch:
            self.branch = Stacked([_BranchJoin(a.branch, a.join) for a in arms])
        self.dropout_streams = [a.dropout_streams[0] for a in arms]

    # --- the Subject interface (stacked parameters: one [arms, ...] tensor per parameter) ------
    def adapter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "layers": list(self.adapters.parameters()),
            "proj": [*self.seg_proj.parameters(), *self.det_proj.parameters()],
        }

    def branch_parameters(self) -> list[nn.Parameter]:
        return list(self.branch.parameters()) if self.branch is not None else []

    def gate_values(self) -> dict[str, torch.Tensor]:
        """Each gate scalar as an [arms] tensor."""
        if not self._gate_names:
            return {}
        return self.branch.call(lambda m: m.join.gate_values())

    # --- the per-arm pieces ----------------------------------------------------------------
    def _class_text(self, class_idx: torch.Tensor) -> torch.Tensor:
        """Sample i of the stacked batch belongs to arm i // B: its class's embedding from its arm's text side."""
        arm = torch.arange(self.n_arms, device=class_idx.device).repeat_interleave(class_idx.shape[0] // self.n_arms)
        return self.text_embeds[arm, class_idx]

    def _per_arm(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.n_arms, -1, *x.shape[1:])

    def _join_branch(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa, ca = self._per_arm(x), self._per_arm(context)
        keep = None
        if self.training and self.dropout > 0:
            shape = (xa.shape[1], self.branch_heads, xa.shape[2], ca.shape[2])  # per arm: [B, heads, L, M]
            keep = torch.stack([s.keep_mask(shape, self.dropout, x.device) for s in self.dropout_streams])
        q, k, v = self.branch.call(_qkv, xa, ca)  # [arms, B, heads, L|M, d]
        # Attention is per sample, so the arms fold into the batch: one fused kernel for all of them.
        fold = [t.flatten(0, 1) for t in (q, k, v)]
        attended = attend(*fold, None if keep is None else keep.flatten(0, 1), self.dropout).reshape(q.shape)
        joined, inflation = self.branch.call(_output_and_join, xa, attended)
        return joined.reshape(x.shape), inflation

    def _adapt(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.adapters[i](self._per_arm(x)).reshape(x.shape)

    def _seg_proj(self, level: int, f: torch.Tensor) -> torch.Tensor:
        out = self.seg_proj[level](self._per_arm(f))
        return out.reshape(-1, *out.shape[2:])

    def _det_proj(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.det_proj(self._per_arm(tokens))
        return out.reshape(-1, *out.shape[2:])
