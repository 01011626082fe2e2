"""Parameter counts of AA-CLIP's trainable pieces, from the config alone.

The pieces are built on the meta device (shapes, no memory, no weights read) from the backbone's
widths in its open_clip config: the frozen CLIP is never built. At ``vit-l-14-336@518`` the image
adapter (``all`` = ``layers`` + ``proj``) has 10,223,616 parameters and the Stage 1 text adapter
2,359,296, as in AA-CLIP.
"""

from __future__ import annotations

import torch
from torch import nn

from ablate.engine.fixes import parse_fix
from ablate.subjects.aaclip.backbone import backbone_spec
from ablate.subjects.aaclip.layers import CrossAttentionBranch, TextAdapter
from ablate.subjects.aaclip.model import AAClipConfig, image_adapter


def backbone_widths(backbone: str) -> tuple[int, int, int]:
    """(image width, embedding width, text width) of a named backbone, from its open_clip config."""
    spec = backbone_spec(backbone)
    if spec.open_clip_name is not None:
        import open_clip

        cfg = open_clip.get_model_config(spec.open_clip_name)
    else:
        cfg = spec.open_clip_cfg
    return cfg["vision_cfg"]["width"], cfg["embed_dim"], cfg["text_cfg"]["width"]


def _count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def parameter_counts(model_cfg: AAClipConfig) -> dict[str, int]:
    """Each trainable group's size: ``layers`` (block adapters), ``proj`` (per-level and detection
    projections), ``all`` (their union: the image adapter), ``text_adapter`` (Stage 1), and
    ``branch`` (the branch and its join) when the config's fix has one."""
    spec = backbone_spec(model_cfg.backbone)
    d_img, embed, d_txt = backbone_widths(model_cfg.backbone)
    layers = spec.adapter_layers if model_cfg.adapter_layers is None else model_cfg.adapter_layers
    levels = len(spec.levels if model_cfg.levels is None else model_cfg.levels)
    with torch.device("meta"):
        adapters, seg_proj, det_proj = image_adapter(d_img, embed, layers, levels, model_cfg.adapter_weight)
        text = TextAdapter(d_txt, embed, model_cfg.text_adapter_layers, model_cfg.text_adapter_weight)
        fix = parse_fix(model_cfg.fix, model_cfg.scale)
        branch = None
        if fix.has_branch:
            branch = (CrossAttentionBranch(d_img, d_txt, model_cfg.branch_heads), fix.build_join(d_img))
    counts = {"layers": _count(adapters), "proj": _count(seg_proj, det_proj)}
    counts["all"] = counts["layers"] + counts["proj"]
    counts["text_adapter"] = _count(text)
    if branch is not None:
        counts["branch"] = _count(*branch)
    return counts
