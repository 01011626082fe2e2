"""Training-image augmentation: AA-CLIP's (default), ablate's earlier flips, or none.

``aaclip``, as AA-CLIP's training data set does to every training image (Stage 2):

1. colour jitter, each with probability 0.7, in this order: brightness, contrast, saturation, each
   factor uniform in [0.5, 1.5] (Stage 1's text data set skips this step: ``colour=False``);
2. CLIP normalisation;
3. on the normalised image and its mask stacked together (so they move as one): rotation by an
   angle uniform in [-30, 30] degrees with probability 0.5, translation by up to 15% of the side
   (whole pixels) with probability 0.5, each with nearest-neighbour sampling and fill 0 (the mean
   colour after normalisation; background in the mask); horizontal flip and vertical flip, each
   with probability 0.5.

AA-CLIP jitters the full-size PIL image before resizing; here the jitter acts on the resized image
(float, no 8-bit rounding), the one deliberate difference (docs/parity.md). ``flips``: a flip and a
rotation by a multiple of 90 degrees (ablate's earlier option). Every draw comes from the caller's
generator, seeded by (seed, image, step), so an augmented run is reproducible.
"""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

AUGMENTS = ("aaclip", "flips", "none")
JITTER = 0.5  # brightness, contrast and saturation factors in [1 - JITTER, 1 + JITTER]
JITTER_P = 0.7
ROTATE_DEG = 30.0
ROTATE_P = 0.5
TRANSLATE = 0.15  # of the image side
TRANSLATE_P = 0.5
FLIP_P = 0.5


def _coin(g: torch.Generator, p: float) -> bool:
    return float(torch.rand(1, generator=g)) < p


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def colour_jitter(img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """[3, H, W] in [0, 1] -> jittered, in [0, 1]."""
    for adjust in (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation):
        if _coin(g, JITTER_P):
            img = adjust(img, _uniform(g, 1.0 - JITTER, 1.0 + JITTER))
    return img


def geometric(img: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """AA-CLIP's rotation, translation and flips of image [C, H, W] and mask [H, W] together."""
    x = torch.cat([img, mask.unsqueeze(0)], dim=0)
    nearest = InterpolationMode.NEAREST
    if _coin(g, ROTATE_P):
        x = TF.rotate(x, _uniform(g, -ROTATE_DEG, ROTATE_DEG), interpolation=nearest, fill=0)
    if _coin(g, TRANSLATE_P):
        h, w = x.shape[-2:]
        tx = int(round(_uniform(g, -TRANSLATE * w, TRANSLATE * w)))
        ty = int(round(_uniform(g, -TRANSLATE * h, TRANSLATE * h)))
        x = shift(x, tx, ty)
    if _coin(g, FLIP_P):
        x = x.flip(-1)
    if _coin(g, FLIP_P):
        x = x.flip(-2)
    return x[:-1].contiguous(), x[-1].contiguous()


def shift(x: torch.Tensor, tx: int, ty: int) -> torch.Tensor:
    """``x`` [C, H, W] moved right by ``tx`` and down by ``ty`` whole pixels, zero fill: what an affine
    transform by an integer translation with nearest sampling gives, without resampling."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    if abs(tx) >= w or abs(ty) >= h:
        return out
    out[:, max(ty, 0) : h + min(ty, 0), max(tx, 0) : w + min(tx, 0)] = x[
        :, max(-ty, 0) : h - max(ty, 0), max(-tx, 0) : w - max(tx, 0)
    ]
    return out


def flips(img: torch.Tensor, mask: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A rotation by k x 90 degrees and a horizontal flip with probability 1/2, image and mask together."""
    k = int(torch.randint(0, 4, (1,), generator=g))
    flip = bool(torch.randint(0, 2, (1,), generator=g))
    img, mask = torch.rot90(img, k, (1, 2)), torch.rot90(mask, k, (0, 1))
    if flip:
        img, mask = img.flip(2), mask.flip(1)
    return img.contiguous(), mask.contiguous()


def prepare(
    raw: torch.Tensor,
    mask: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    mode: str = "none",
    g: torch.Generator | None = None,
    colour: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training sample: raw image [3, H, W] in [0, 1] and mask -> (normalised image, mask), augmented
    by ``mode`` with draws from ``g`` (None or mode ``none``: normalised only)."""
    if g is None or mode == "none":
        return (raw - mean) / std, mask
    if mode == "flips":
        raw, mask = flips(raw, mask, g)
        return (raw - mean) / std, mask
    if mode != "aaclip":
        raise ValueError(f"unknown augmentation {mode!r}; valid: {', '.join(AUGMENTS)}")
    if colour:
        raw = colour_jitter(raw, g)
    return geometric((raw - mean) / std, mask, g)
