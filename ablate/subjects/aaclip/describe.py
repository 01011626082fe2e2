"""What ``ablate subject check`` says about an AA-CLIP spec, without weights or the frozen backbone.

The trainable pieces are built on the meta device (shapes only, no memory), from the widths in the
backbone's open_clip config.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ablate.engine.fixes import parse_fix
from ablate.subjects.aaclip.backbone import backbone_spec
from ablate.subjects.aaclip.layers import CrossAttentionBranch, ImageAdapter
from ablate.subjects.aaclip.model import AAClipConfig


def widths(cfg: AAClipConfig) -> tuple[int, int, int, int]:
    """(image width, text width, embedding width, depth) of the backbone, from its open_clip config."""
    spec = backbone_spec(cfg.backbone)
    if spec.open_clip_name is not None:
        import open_clip

        oc = open_clip.get_model_config(spec.open_clip_name)
    else:
        oc = spec.open_clip_cfg
    return oc["vision_cfg"]["width"], oc["text_cfg"]["width"], oc["embed_dim"], oc["vision_cfg"]["layers"]


def _size(named: list[tuple[str, nn.Parameter]]) -> dict[str, Any]:
    names = [n for n, _ in named]
    return {
        "params": sum(p.numel() for _, p in named),
        "tensors": len(named),
        "names": names[:4],
        "more": len(names[4:]),
    }


def describe(cfg: AAClipConfig, fix: str = "none") -> dict[str, Any]:
    spec = backbone_spec(cfg.backbone)
    d_img, d_txt, embed, _depth = widths(cfg)
    layers = spec.adapter_layers if cfg.adapter_layers is None else cfg.adapter_layers
    levels = spec.levels if cfg.levels is None else cfg.levels
    choice = parse_fix(fix)
    with torch.device("meta"):
        adapters = nn.ModuleList(ImageAdapter(d_img, cfg.adapter_weight) for _ in range(layers))
        proj = nn.ModuleList([*(nn.Linear(d_img, embed) for _ in levels), nn.Linear(d_img, embed)])
        branch = nn.ModuleList([CrossAttentionBranch(d_img, d_txt, cfg.branch_heads, cfg.branch_dropout)])
        if choice.has_branch:
            branch.append(choice.build_join(d_img))
    seg = [(f"seg_proj.{n}", p) for n, p in proj[:-1].named_parameters()]
    groups = {
        "layers": [(f"adapters.{n}", p) for n, p in adapters.named_parameters()],
        "proj": [*seg, *((f"det_proj.{n}", p) for n, p in proj[-1].named_parameters())],
    }
    out = {name: _size(ps) for name, ps in groups.items()}
    out["all"] = {**_size([p for ps in groups.values() for p in ps]), "names": [], "more": 0}
    return {
        "subject": "aaclip",
        "groups": out,
        "branch": {
            "at": f"visual.transformer.resblocks.{cfg.inject_at}",
            "params": sum(p.numel() for p in branch.parameters()),
            "calls": 1,
            "fix": choice.name,
        },
        "backbone": spec.name,
    }
