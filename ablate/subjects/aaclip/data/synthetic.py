"""Synthetic anomaly data: procedural textures with drawn defects and exact pixel masks.

Deterministic by (seed, index), generated on the fly, nothing downloaded. Class names are real
MVTec AD texture categories so the prompts name real classes (by their folder names: the textures
are not MVTec's, so AA-CLIP's descriptive names would describe other images). Training images are
augmented as ``augment`` says (data/augment.py), like images on disk.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ablate.subjects.aaclip.data.augment import prepare

TEXTURE_CLASSES = ("carpet", "grid", "leather", "tile", "wood")
DEFECT_KINDS = ("scratch", "spot", "crack", "blotch")
# open_clip's CLIP normalisation constants
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Batch:
    images: torch.Tensor  # [B, 3, H, W], CLIP-normalised
    masks: torch.Tensor  # [B, H, W] float {0, 1}
    labels: torch.Tensor  # [B] long: 1 = has a defect
    class_idx: torch.Tensor  # [B] long index into the dataset's classes

    def to(self, device: torch.device | str) -> Batch:
        tensors = (self.images, self.masks, self.labels, self.class_idx)
        if torch.device(device).type == "cuda":
            # Pinned + non_blocking: a pageable copy would make the host wait for the GPU every step.
            return Batch(*(t.pin_memory().to(device, non_blocking=True) for t in tensors))
        return Batch(*(t.to(device) for t in tensors))

    @staticmethod
    def stack(batches: list[Batch]) -> Batch:
        """Arms' batches side by side: every tensor gains a leading [arms] dimension."""
        fields = ("images", "masks", "labels", "class_idx")
        return Batch(*(torch.stack([getattr(b, f) for b in batches]) for f in fields))


def augment_generator(seed: int, index: int, step: int) -> torch.Generator:
    """The augmentation draws of one training image at one step."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) * 1_000_033 + step)


def _grid_coords(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.linspace(0.0, 1.0, size)
    return torch.meshgrid(r, r, indexing="ij")


def _smooth_noise(size: int, cells: int, g: torch.Generator) -> torch.Tensor:
    coarse = torch.rand(1, 1, cells, cells, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]


def _texture(kind: str, size: int, g: torch.Generator) -> torch.Tensor:
    """One grey-level texture in [0, 1] for the class ``kind``, [H, W]."""
    yy, xx = _grid_coords(size)
    phase = torch.rand(2, generator=g) * 2 * math.pi
    if kind == "carpet":
        t = 0.5 + 0.25 * _smooth_noise(size, max(4, size // 4), g) + 0.15 * torch.rand(size, size, generator=g)
    elif kind == "grid":
        period = 6 + int(torch.randint(0, 4, (1,), generator=g))
        lines = ((torch.arange(size) + int(phase[0] * 3)) % period == 0).float()
        t = 0.3 + 0.5 * torch.maximum(lines[:, None], lines[None, :])
    elif kind == "leather":
        t = 0.45 + 0.35 * _smooth_noise(size, max(3, size // 12), g)
    elif kind == "tile":
        cells = 4
        tiles = torch.rand(cells, cells, generator=g)
        idx = (yy * cells).clamp(max=cells - 1e-4).long(), (xx * cells).clamp(max=cells - 1e-4).long()
        t = 0.35 + 0.4 * tiles[idx]
    elif kind == "wood":
        rings = torch.sin(2 * math.pi * (6 * yy + 0.8 * _smooth_noise(size, 4, g)) + phase[1])
        t = 0.5 + 0.3 * rings
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return t.clamp(0.0, 1.0)


def _defect_mask(kind: str, size: int, g: torch.Generator) -> torch.Tensor:
    """A binary [H, W] mask for one defect, never empty, never the whole image."""
    yy, xx = _grid_coords(size)
    c = 0.2 + 0.6 * torch.rand(2, generator=g)
    width = max(1.5 / size, 0.02)
    if kind == "spot":
        r = 0.05 + 0.08 * float(torch.rand(1, generator=g))
        m = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r**2
    elif kind == "scratch":
        ang = float(torch.rand(1, generator=g)) * math.pi
        d = torch.abs((yy - c[0]) * math.cos(ang) - (xx - c[1]) * math.sin(ang))
        along = torch.abs((yy - c[0]) * math.sin(ang) + (xx - c[1]) * math.cos(ang))
        m = (d <= width) & (along <= 0.3)
    elif kind == "crack":
        m = torch.zeros(size, size, dtype=torch.bool)
        p = c.clone()
        ang = float(torch.rand(1, generator=g)) * 2 * math.pi
        for _ in range(12):  # a jagged random walk of short segments
            ang += float(torch.randn(1, generator=g)) * 0.6
            q = p + 0.04 * torch.tensor([math.sin(ang), math.cos(ang)])
            for t in torch.linspace(0, 1, 6):
                pt = p + t * (q - p)
                m |= (yy - pt[0]) ** 2 + (xx - pt[1]) ** 2 <= width**2
            p = q.clamp(0.0, 1.0)
    elif kind == "blotch":
        blob = _smooth_noise(size, 6, g)
        r = 0.12 + 0.1 * float(torch.rand(1, generator=g))
        m = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r**2) & (blob > blob.median())
    else:
        raise ValueError(f"unknown defect {kind!r}")
    if not m.any():  # degenerate draw at tiny sizes: fall back to one marked pixel-block
        cy, cx = (c * (size - 1)).long().tolist()
        m[max(0, cy - 1) : cy + 2, max(0, cx - 1) : cx + 2] = True
    return m


# Generated samples kept per data set: 4 GiB holds the real-scale spec's whole 512-image pool at
# 518 px (4.3 MB a sample); at the tiny default's 64 px it is never reached.
CACHE_BYTES = 4 * 2**30


class SyntheticAnomalyDataset:
    """Indexable data set of (image, mask, label, class) samples; about half carry a defect.

    Samples are generated on demand and kept (up to ``cache_bytes``): a training pool is cycled and
    shared by every arm of a pack, and drawing a 518 px texture costs tens of milliseconds.
    """

    def __init__(
        self,
        image_size: int,
        seed: int = 0,
        classes: tuple[str, ...] = TEXTURE_CLASSES,
        anomaly_fraction: float = 0.5,
        cache_bytes: int = CACHE_BYTES,
        augment: str = "none",
    ) -> None:
        unknown = [c for c in classes if c not in TEXTURE_CLASSES]
        if unknown:
            raise ValueError(f"unknown texture class {unknown[0]!r}; valid: {', '.join(TEXTURE_CLASSES)}")
        self.image_size = image_size
        self.seed = seed
        self.classes = tuple(classes)
        self.anomaly_fraction = anomaly_fraction
        self.augment = augment
        self._mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        self._std = torch.tensor(CLIP_STD).view(3, 1, 1)
        self._cache: OrderedDict[int, tuple[torch.Tensor, torch.Tensor, int, int, str]] = OrderedDict()
        self._cache_max = cache_bytes // (4 * 4 * image_size * image_size)  # 3 image planes + mask, fp32

    def sample(
        self, index: int, step: int | None = None, colour: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, int, int, str]:
        """(normalised image [3,H,W], mask [H,W], label, class index, defect kind or ''); ``step`` set:
        augmented (with the colour jitter unless ``colour`` is False)."""
        raw, mask, label, cls, kind = self._raw(index)
        g = None if step is None else augment_generator(self.seed, index, step)
        img, mask = prepare(raw, mask, self._mean, self._std, self.augment, g, colour)
        return img, mask, label, cls, kind

    def _raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int, str]:
        hit = self._cache.get(index)
        if hit is not None:
            self._cache.move_to_end(index)
            return hit
        item = self._draw(index)
        if self._cache_max > 0:
            self._cache[index] = item
            if len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
        return item

    def _draw(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, int, str]:
        """(raw image [3,H,W] in [0, 1], mask, label, class index, defect kind)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        cls = index % len(self.classes)
        size = self.image_size
        grey = _texture(self.classes[cls], size, g)
        tint = 0.7 + 0.3 * torch.rand(3, 1, 1, generator=g)
        img = grey.unsqueeze(0) * tint
        mask = torch.zeros(size, size)
        kind = ""
        if float(torch.rand(1, generator=g)) < self.anomaly_fraction:
            kind = DEFECT_KINDS[int(torch.randint(0, len(DEFECT_KINDS), (1,), generator=g))]
            m = _defect_mask(kind, size, g)
            colour = torch.rand(3, 1, 1, generator=g)
            # Defects differ from the texture in colour and brightness, as real ones do.
            img = torch.where(m, 0.15 * img + 0.85 * colour, img)
            mask = m.float()
        return img.clamp(0.0, 1.0), mask, int(kind != ""), cls, kind

    def batch(self, indices: list[int], step: int | None = None, colour: bool = True) -> Batch:
        items = [self.sample(i, step, colour) for i in indices]
        return Batch(
            images=torch.stack([it[0] for it in items]),
            masks=torch.stack([it[1] for it in items]),
            labels=torch.tensor([it[2] for it in items], dtype=torch.long),
            class_idx=torch.tensor([it[3] for it in items], dtype=torch.long),
        )
