"""What ``ablate subject check`` says about an AA-CLIP spec, without weights or the frozen backbone.

The trainable pieces are built on the meta device (shapes only, no memory) by the same builders the
model uses (ablate/subjects/aaclip/model.py ``image_adapter``, layers.py), from the widths in the
backbone's open_clip config (sizes.py); the Stage 1 text adapter is its own entry, not a watched group.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ablate.engine.fixes import parse_fix
from ablate.subjects.aaclip.backbone import backbone_spec
from ablate.subjects.aaclip.layers import CrossAttentionBranch, TextAdapter
from ablate.subjects.aaclip.model import AAClipConfig, image_adapter
from ablate.subjects.aaclip.sizes import backbone_widths

NAMES_SHOWN = 4


def _size(named: list[tuple[str, nn.Parameter]]) -> dict[str, Any]:
    names = [n for n, _ in named]
    return {
        "params": sum(p.numel() for _, p in named),
        "tensors": len(named),
        "names": names[:NAMES_SHOWN],
        "more": len(names[NAMES_SHOWN:]),
    }


def _named(prefix: str, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(f"{prefix}.{n}", p) for n, p in module.named_parameters()]


def describe(cfg: AAClipConfig, fix: str = "none") -> dict[str, Any]:
    spec = backbone_spec(cfg.backbone)
    d_img, embed, d_txt = backbone_widths(cfg.backbone)
    layers = spec.adapter_layers if cfg.adapter_layers is None else cfg.adapter_layers
    levels = len(spec.levels if cfg.levels is None else cfg.levels)
    choice = parse_fix(fix)
    with torch.device("meta"):
        adapters, seg_proj, det_proj = image_adapter(d_img, embed, layers, levels, cfg.adapter_weight)
        branch = nn.ModuleList([CrossAttentionBranch(d_img, d_txt, cfg.branch_heads, cfg.branch_dropout)])
        if choice.has_branch:
            branch.append(choice.build_join(d_img))
        text = TextAdapter(d_txt, embed, cfg.text_adapter_layers, cfg.text_adapter_weight)
    groups = {
        "layers": _named("adapters", adapters),
        "proj": [*_named("seg_proj", seg_proj), *_named("det_proj", det_proj)],
    }
    out = {name: _size(named) for name, named in groups.items()}
    out["all"] = {**_size([p for named in groups.values() for p in named]), "names": [], "more": 0}
    return {
        "subject": "aaclip",
        "backbone": spec.name,
        "device": "meta",
        "groups": out,
        "branch": {
            "at": f"visual.transformer.resblocks.{cfg.inject_at}",
            "params": sum(p.numel() for p in branch.parameters()),
            "calls": 1,
            "fix": choice.name,
        },
        # not watched: Stage 1 trains it once per seed before the arms (docs/parity.md)
        "extra": {"text_adapter": _size(_named("text_adapter", text))},
    }
