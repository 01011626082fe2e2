"""Backbone weights from disk only: open_clip checkpoints, OpenAI's TorchScript ``.pt`` (run with
GELU as AA-CLIP runs it, QuickGELU on request), open_clip tags found in the local Hugging Face cache
with HF_HUB_OFFLINE set, and a quick clear error when nothing is on disk."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from open_clip.model import CLIP

from ablate.errors import AblateInputError
from ablate.subjects.aaclip.backbone import (
    BACKBONES,
    build_clip,
    is_torchscript_archive,
    resolve_pretrained,
)


def _tiny_clip(quick_gelu: bool) -> CLIP:
    spec = BACKBONES["tiny"]
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.open_clip_cfg.items()}
    torch.manual_seed(123)
    return CLIP(**cfg, quick_gelu=quick_gelu).eval()


def _same_weights(built: torch.nn.Module, source: torch.nn.Module) -> bool:
    got = built.state_dict()
    return all(torch.equal(got[k], v) for k, v in source.state_dict().items() if k in got)


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(type(m).__name__ == "QuickGELU" for m in model.modules())


def test_openai_weights_run_with_gelu_as_aaclip_runs_them_and_quick_gelu_on_request(tmp_path):
    """AA-CLIP builds its CLIP from a model config without quick_gelu, so OpenAI's weights run with
    nn.GELU; QuickGELU (what they were trained with) is the model.quick_gelu option."""
    source = _tiny_clip(quick_gelu=True)
    path = tmp_path / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(source, (torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)),
                                 check_trace=False)  # fmt: skip
        torch.jit.save(traced, str(path))
    assert is_torchscript_archive(str(path))
    built = build_clip(BACKBONES["tiny"], str(path))
    assert not _uses_quick_gelu(built)
    assert any(isinstance(m, torch.nn.GELU) for m in built.modules())
    assert _same_weights(built, source)
    quick = build_clip(BACKBONES["tiny"], str(path), quick_gelu=True)
    assert _uses_quick_gelu(quick) and _same_weights(quick, source)
    # the activation is what differs: the same weights give other features
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(built.encode_image(image), quick.encode_image(image), atol=1e-4)


def test_open_clip_state_dict_loads_as_is(tmp_path):
    source = _tiny_clip(quick_gelu=False)
    path = tmp_path / "tiny_open_clip.pt"
    torch.save(source.state_dict(), path)
    assert not is_torchscript_archive(str(path))
    built = build_clip(BACKBONES["tiny"], str(path))
    assert not _uses_quick_gelu(built)
    assert _same_weights(built, source)
    assert not any(p.requires_grad for p in built.parameters())


def test_a_checkpoint_of_another_model_is_a_clear_input_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(AblateInputError) as info:
        build_clip(BACKBONES["tiny"], str(path))
    assert info.value.field == "pretrained" and "cannot load" in info.value.message


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: anything that tried the network would fail."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    import open_clip.pretrained as oc_pretrained

    monkeypatch.setattr(oc_pretrained, "CACHE_DIR", str(tmp_path / "clip"), raising=False)
    return tmp_path / "hub"


def test_a_cached_tag_is_found_offline(offline_hub):
    # The cache layout huggingface_hub writes: refs/main names the snapshot holding the file.
    repo = offline_hub / "models--timm--vit_large_patch14_clip_336.openai"
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    ckpt = snap / "open_clip_model.safetensors"
    ckpt.write_bytes((2).to_bytes(8, "little") + b"{}")
    spec = BACKBONES["vit-l-14-336@518"]
    assert resolve_pretrained(spec, "openai") == str(ckpt)


def test_an_uncached_tag_fails_fast_offline(offline_hub):
    spec = BACKBONES["vit-l-14-336@518"]
    start = time.monotonic()
    with pytest.raises(AblateInputError) as info:
        resolve_pretrained(spec, "openai")
    assert time.monotonic() - start < 5
    assert info.value.field == "pretrained" and "nothing is downloaded" in info.value.message
    with pytest.raises(AblateInputError, match="not an open_clip tag|neither a local file"):
        resolve_pretrained(spec, "no-such-tag")


def test_a_half_precision_checkpoint_loads_its_position_embedding_resized_in_fp32(tmp_path):
    """OpenAI's weights are fp16 and AA-CLIP resizes their position embedding (336 -> 518 px) after
    converting to fp32: an fp16 embedding of another grid loads, resized from its fp32 values."""
    spec = BACKBONES["tiny"]
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.open_clip_cfg.items()}
    cfg["vision_cfg"] = {**cfg["vision_cfg"], "image_size": 40}  # a 5 x 5 grid; the tiny backbone's is 8 x 8
    torch.manual_seed(5)
    source = CLIP(**cfg).eval().half()
    path = tmp_path / "half.pt"
    torch.save(source.state_dict(), path)
    built = build_clip(spec, str(path))
    old = source.visual.positional_embedding.detach()
    assert old.dtype == torch.float16 and built.visual.positional_embedding.dtype == torch.float32
    # the reference, from AA-CLIP's resize_pos_embed: the class token kept, the 5 x 5 grid resized
    # bicubically (antialiased, corners not aligned) to 8 x 8, from the fp32 values
    grid = old[1:].float().reshape(1, 5, 5, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bicubic", antialias=True, align_corners=False)
    want = torch.cat([old[:1].float(), grid.permute(0, 2, 3, 1).reshape(64, -1)])
    assert torch.equal(built.visual.positional_embedding.detach(), want)
    # every other tensor is the fp16 value, exactly, in fp32
    got = built.state_dict()
    for k, v in source.state_dict().items():
        if k != "visual.positional_embedding" and v.is_floating_point():
            assert torch.equal(got[k], v.float()), k
