"""AA-CLIP's test-time scores: the anomaly map of an image and its image score.

``aaclip`` (default, AA-CLIP's test): per level the logit difference ``(s1 + 1 - s0) / 2`` of the
100-scaled cosines, Gaussian-blurred on the patch grid (kernel 7, sigma 1 for industrial data; 9,
1.5 for medical), upsampled bilinearly with ``align_corners=True``, summed over levels. The image
score needs the whole class: the detection score ``(det . t_abnormal + 1) / 2`` and the map's
maximum are each min-max normalised over the class (the map by the minimum and maximum over every
pixel of the class), then averaged 0.5 / 0.5 (industrial) or the map's maximum alone (medical).

``softmax`` (the alternative): per level the abnormal softmax probability, upsampled with
``align_corners=False``, averaged over levels; image score ``0.5 * (softmax(100 c)_1 + map max)``,
no normalisation. Its scores are probabilities on their own, so the image score needs no class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SCORINGS = ("aaclip", "softmax")
# The Gaussian blur of AA-CLIP's test map per data domain: (kernel size, sigma).
DOMAIN_BLUR = {"industrial": (7, 1.0), "medical": (9, 1.5)}
DOMAINS = tuple(DOMAIN_BLUR)
DETECTION_LOGIT_SCALE = 100.0  # the softmax scoring's temperature on the detection cosines


@dataclass(frozen=True)
class Scoring:
    """How test scores are made: ``method`` (aaclip | softmax) and the data ``domain``."""

    method: str = "aaclip"
    domain: str = "industrial"


@dataclass
class BatchScores:
    """One batch's scores, [n] = arms x batch images.

    ``maps`` [n, H, W]: the anomaly map at the mask size. ``map_logits``: the same ranking on a
    log-odds scale (what binned pixel metrics count; exact ones read ``maps``). ``map_max`` [n] and
    ``detection`` [n]: the two parts of the image score, combined at the end of the evaluation
    (:func:`image_scores`).
    """

    maps: torch.Tensor
    map_logits: torch.Tensor
    map_max: torch.Tensor
    detection: torch.Tensor


def gaussian_kernel(size: int, sigma: float, device: torch.device | None = None) -> torch.Tensor:
    """The normalised 1-D Gaussian of odd ``size``: exp(-x^2 / 2 sigma^2), x = -size//2 .. size//2."""
    x = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def gaussian_blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Blur [n, h, w] with a separable Gaussian, reflect padding (the edge pixel not repeated)."""
    k = gaussian_kernel(size, sigma, x.device).to(x.dtype)
    pad = size // 2
    y = F.pad(x.unsqueeze(1), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, size))
    return F.conv2d(y, k.view(1, 1, size, 1)).squeeze(1)


def aaclip_map(seg_logits: Sequence[torch.Tensor], size: Sequence[int], domain: str) -> torch.Tensor:
    """AA-CLIP's test map [n, H, W] from per-level logits [n, 2, h, w] (100-scaled cosines)."""
    ksize, sigma = DOMAIN_BLUR[domain]
    total = None
    for logits in seg_logits:
        lg = logits.float()
        level = gaussian_blur((lg[:, 1] + 1.0 - lg[:, 0]) / 2.0, ksize, sigma)
        level = F.interpolate(level.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=True)[:, 0]
        total = level if total is None else total + level
    return total


def softmax_map(seg_logits: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """The alternative map: each level's abnormal probability, upsampled, averaged over levels."""
    maps = [
        F.interpolate(torch.softmax(lg.float(), dim=1), size=tuple(size), mode="bilinear", align_corners=False)[:, 1]
        for lg in seg_logits
    ]
    return torch.stack(maps).mean(0)


def log_odds(p: torch.Tensor) -> torch.Tensor:
    p = p.double().clamp(0.0, 1.0)
    return torch.log(p) - torch.log1p(-p)


def batch_scores(
    seg_logits: Sequence[torch.Tensor], det_cosine: torch.Tensor, size: Sequence[int], scoring: Scoring
) -> BatchScores:
    """The scores of one batch from the model's per-level logits and detection cosines [n, 2]."""
    if scoring.method == "aaclip":
        maps = aaclip_map(seg_logits, size, scoring.domain)
        levels = len(seg_logits)
        # sum_l (d_l + 1) / 2 = (sum_l d_l + L) / 2, so (2 m - L) / L is the mean blurred logit difference
        # over levels: the map's ranking on the log-odds scale the softmax map's probabilities have.
        map_logits = (2.0 * maps.double() - levels) / levels
        detection = (det_cosine.float()[:, 1] + 1.0) / 2.0
    elif scoring.method == "softmax":
        maps = softmax_map(seg_logits, size)
        map_logits = log_odds(maps)
        detection = torch.softmax(DETECTION_LOGIT_SCALE * det_cosine.float(), dim=-1)[:, 1]
    else:
        raise ValueError(f"unknown scoring {scoring.method!r}; valid: {', '.join(SCORINGS)}")
    return BatchScores(maps, map_logits, maps.flatten(1).amax(1), detection)


def min_max(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(v - lo) / (hi - lo); a class whose values are all equal scores 0 (AA-CLIP divides by zero)."""
    span = hi - lo
    return torch.where(span > 0, (values - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(values))


def image_scores(
    scoring: Scoring,
    map_max: torch.Tensor,
    detection: torch.Tensor,
    groups: torch.Tensor,
    pixel_min: torch.Tensor,
    pixel_max: torch.Tensor,
) -> torch.Tensor:
    """Every image's score [N] from its map maximum and detection score, each image in its group
    (arm x class; ``pixel_min``/``pixel_max`` [groups]: the extremes over every pixel of the group)."""
    if scoring.method == "softmax":
        return 0.5 * (detection + map_max)
    pmax = min_max(map_max.double(), pixel_min.double()[groups], pixel_max.double()[groups])
    if scoring.domain == "medical":
        return pmax
    n = int(pixel_min.numel())
    inf = torch.full((n,), torch.inf, dtype=torch.float64, device=detection.device)
    det = detection.double()
    dmin = inf.scatter_reduce(0, groups, det, "amin")
    dmax = (-inf).scatter_reduce(0, groups, det, "amax")
    return 0.5 * pmax + 0.5 * min_max(det, dmin[groups], dmax[groups])
