"""Backbones by name: an open_clip config -> a built, frozen CLIP (open_clip's config-to-builder path).

Nothing here downloads: ``pretrained`` is a local checkpoint file or an open_clip tag whose
weights are already in the local cache; anything else is a clear error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ablate.errors import AblateInputError
from ablate.subjects.aaclip.attention import use_batch_first_attention


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: how to build it and the AA-CLIP layout defaults that go with it."""

    name: str
    image_size: int
    depth: int  # visual transformer blocks (what inject_at, adapter_layers and levels index)
    adapter_layers: int  # adapters after blocks 0..k-1
    levels: tuple[int, ...]  # 1-based block indices whose output is a feature level
    # Stage 1's image features: the last k blocks run value-value attention (AA-CLIP's "DPAM" surgery,
    # 19 of 24 blocks at ViT-L-14: its surgery_until_layer = 20 replaces blocks -1 .. -19).
    surgery_blocks: int = 0
    open_clip_name: str | None = None  # a built-in open_clip config ...
    open_clip_cfg: dict[str, Any] = field(default_factory=dict)  # ... or an explicit one
    description: str = ""


BACKBONES: dict[str, BackboneSpec] = {
    "tiny": BackboneSpec(
        name="tiny",
        image_size=64,
        depth=8,
        adapter_layers=2,
        levels=(2, 4, 6, 8),
        surgery_blocks=6,  # 19/24 of the depth, as at ViT-L-14
        open_clip_cfg={
            "embed_dim": 64,
            "vision_cfg": {"image_size": 64, "layers": 8, "width": 64, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
        },
        description="CPU default: 64 px, 8x8 patches + CLS = 65 tokens x 64, 8 blocks, 64-wide text tower",
    ),
    "vit-l-14-336@518": BackboneSpec(
        name="vit-l-14-336@518",
        image_size=518,
        depth=24,
        adapter_layers=6,
        levels=(6, 12, 18, 24),
        surgery_blocks=19,
        open_clip_name="ViT-L-14-336",
        description="AA-CLIP scale: ViT-L-14-336 at 518 px, 1370 tokens x 1024, 24 blocks, 768-wide text",
    ),
}


def backbone_spec(name: str, field_name: str = "backbone") -> BackboneSpec:
    if name not in BACKBONES:
        raise AblateInputError(field_name, f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def _cached_tag_path(model_name: str, tag: str) -> str | None:
    """Local file of an open_clip pretrained tag if it is already cached, else None (no network)."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        return None
    hf_hub = (cfg.get("hf_hub") or "").rstrip("/")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        parts = hf_hub.split("/")
        repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
        for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(repo_id, f"{sub}/{fname}" if sub else fname)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    url = cfg.get("url") or ""
    if url:
        local = Path(getattr(oc_pretrained, "CACHE_DIR", "~/.cache/clip")).expanduser() / Path(url).name
        if local.is_file():
            return str(local)
    return None


def check_checkpoint_file(path: str) -> None:
    """Refuse a file that cannot be a checkpoint, from its first bytes (cheap: nothing is loaded).

    torch.save writes a zip archive (or, before 1.6, a pickle), TorchScript a zip archive, and
    safetensors an 8-byte little-endian header length followed by a JSON header.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    is_zip = head[:4] == b"PK\x03\x04"
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    is_safetensors = len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 2**32
    if not (is_zip or is_pickle or is_safetensors):
        raise AblateInputError(
            "pretrained", f"{path} is not a PyTorch (.pt/.bin) or safetensors checkpoint (first bytes {head[:4]!r})"
        )


def resolve_pretrained(spec: BackboneSpec, pretrained: str | None) -> str | None:
    """Map ``pretrained`` (None | local path | cached open_clip tag) to a local file path."""
    if pretrained in (None, "", "none"):
        return None
    path = Path(pretrained).expanduser()
    looks_like_path = os.sep in pretrained or path.suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
    if path.is_file():
        check_checkpoint_file(str(path))
        return str(path)
    if looks_like_path:
        raise AblateInputError("pretrained", f"checkpoint file not found: {pretrained}")
    if spec.open_clip_name is None:
        raise AblateInputError(
            "pretrained",
            f"{pretrained!r} is not a local file, and backbone {spec.name!r} has no open_clip tags; "
            "give a local checkpoint path",
        )
    hit = _cached_tag_path(spec.open_clip_name, pretrained)
    if hit is None:
        raise AblateInputError(
            "pretrained",
            f"{pretrained!r} is neither a local file nor an open_clip tag of {spec.open_clip_name} "
            "already in the local cache (nothing is downloaded)",
        )
    return hit


def is_torchscript_archive(path: str) -> bool:
    """True for a TorchScript archive: the format of OpenAI's own CLIP ``.pt`` files."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


# Entries of an OpenAI TorchScript state dict that open_clip's CLIP does not hold.
_OPENAI_EXTRA = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def load_weights(model: nn.Module, ckpt: str) -> None:
    """Load a checkpoint into ``model``: open_clip's formats, or OpenAI's TorchScript archive (which
    ``torch.load(weights_only=True)`` refuses); the position embedding is resized to the model's grid."""
    if is_torchscript_archive(ckpt):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"; OpenAI's file is one
            state = torch.jit.load(ckpt, map_location="cpu").state_dict()
        state = {k: v for k, v in state.items() if k not in _OPENAI_EXTRA}
    else:
        from open_clip.factory import load_state_dict

        state = load_state_dict(ckpt)
    load_state(model, state)


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a CLIP state dict into ``model`` (strict), its position embeddings resized to the model's.

    Floating-point tensors are converted to float32 first, as AA-CLIP does (it calls ``model.float()``
    on OpenAI's half-precision weights before resizing): the bicubic resize, antialiased as open_clip
    and AA-CLIP run it, has no half-precision kernel, and the model is float32 anyway.
    """
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    scale = state.get("logit_scale")
    if scale is not None and scale.ndim != model.logit_scale.ndim:  # scalar vs 1-d, as open_clip allows
        state["logit_scale"] = scale.reshape(model.logit_scale.shape)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    model.load_state_dict(state, strict=True)


def build_clip(spec: BackboneSpec, pretrained: str | None = None, quick_gelu: bool = False) -> nn.Module:
    """Build the open_clip CLIP for ``spec``, load local weights if given, and freeze it.

    The MLP activation is ``nn.GELU`` unless ``quick_gelu``: AA-CLIP builds its CLIP from a model
    config without ``quick_gelu`` and loads OpenAI's weights into it, so it runs them with GELU
    although they were trained with QuickGELU (docs/parity.md).
    """
    import open_clip
    from open_clip.model import CLIP

    ckpt = resolve_pretrained(spec, pretrained)
    if spec.open_clip_name is not None:
        cfg = open_clip.get_model_config(spec.open_clip_name)
        cfg["vision_cfg"]["image_size"] = spec.image_size
    else:
        cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.open_clip_cfg.items()}
    model = CLIP(**cfg, quick_gelu=quick_gelu)
    if ckpt is not None:
        try:
            load_weights(model, ckpt)
        except Exception as exc:  # a wrong file is the user's input, not our bug
            raise AblateInputError("pretrained", f"cannot load {ckpt}: {str(exc).splitlines()[0]}") from exc
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    # After loading: the swapped module keeps the parameter names, so checkpoints load either way.
    use_batch_first_attention(model.visual.transformer.resblocks)
    return model


@torch.no_grad()
def text_block0(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The prompts' token features after text block 0 [P, 77, d_txt] (the branch's text context)."""
    x = clip.token_embedding(tokens) + clip.positional_embedding
    return clip.transformer.resblocks[0](x, attn_mask=clip.attn_mask)
