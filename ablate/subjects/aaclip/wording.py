"""How a report describes an AA-CLIP study (imports nothing heavy: read commands use it).

``spec`` is the study's stored spec as TOML sections with this subject's defaults filled in
(``SECTION_DEFAULTS``, which tests/test_report.py checks against ablate/spec.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"backbone": "tiny", "pretrained": None, "inject_at": 0, "context_norm": False, "adapter_weight": 0.1},
    "data": {"seed": 0, "batch_size": 2, "train_size": 256, "anomaly_fraction": 0.5},
}
GROUP_LABELS = {"layers": "block adapters", "proj": "projections", "all": "image adapter"}
TOY_BACKBONES = frozenset({"tiny"})


def _pretrained(spec: dict[str, dict[str, Any]]) -> str | None:
    p = spec["model"]["pretrained"]
    return None if p in (None, "", "none") else str(p)


def _synthetic(spec: dict[str, dict[str, Any]]) -> bool:
    return not set(spec["data"]) - set(SECTION_DEFAULTS["data"])  # the spec names no data set: the generator


def question(spec: dict[str, dict[str, Any]]) -> str:
    return (
        "A new image-to-text cross-attention branch joins the residual stream of a frozen CLIP ViT after "
        f"block {spec['model']['inject_at']}, where small residual adapters are trained (the AA-CLIP Stage 2 "
        "design). The original report found the adapters stopped learning and blamed the branch for absorbing "
        "their gradient, from one batch and without an interval."
    )


def setting_rows(spec: dict[str, dict[str, Any]], val: Callable[[str, str], str]) -> list[tuple[str, str]]:
    backbone = str(spec["model"]["backbone"])
    pretrained = _pretrained(spec)
    toy = " (the CPU toy backbone)" if backbone in TOY_BACKBONES else ""
    return [
        ("backbone", f"`{backbone}`{toy}" + (" (default)" if val("model", "backbone").endswith("(default)") else "")),
        ("weights", "random init" if pretrained is None else f"pretrained: `{pretrained}`"),
        ("branch", f"joins after block {val('model', 'inject_at')}; text-context norm: {val('model', 'context_norm')}"),
        (
            "data",
            ("synthetic anomaly images; " if _synthetic(spec) else "as the spec says (below); ")
            + f"{val('data', 'train_size')} training images, batch {val('data', 'batch_size')}, "
            f"data seed {val('data', 'seed')}",
        ),
    ]


def caveats(spec: dict[str, dict[str, Any]]) -> list[str]:
    items = []
    backbone = str(spec["model"]["backbone"])
    if backbone in TOY_BACKBONES:
        items.append(
            f"Toy model: the backbone is `{backbone}`, the small CPU backbone, not the AA-CLIP ViT-L-14-336 at "
            "518 px the original report used."
        )
    pretrained = _pretrained(spec)
    if pretrained is None:
        items.append(
            "Random init: the frozen backbone has random weights, without a pretrained CLIP's feature geometry or "
            "text-token norms, so this study can neither confirm nor refute a pretrained model's figures."
        )
    else:
        items.append(f"Pretrained weights: `{pretrained}`.")
    return items


def late_caveats(spec: dict[str, dict[str, Any]]) -> list[str]:
    if _synthetic(spec):
        return ["Synthetic data: the images and masks are generated, not an anomaly-detection data set."]
    return []
