"""Evaluation at the end of a run: image- and pixel-level AUROC and AP per class, and their mean.

The columns AA-CLIP's test reports: ``image_auroc`` and ``image_ap`` from the image score,
``pixel_auroc`` and ``pixel_ap`` from the anomaly map at the mask size, per class, and the mean over
classes. The subject supplies each batch's scores (``anomaly_scores(batch, scoring) ->``
:class:`~ablate.subjects.aaclip.scoring.BatchScores`); how they are made is
:mod:`ablate.subjects.aaclip.scoring`.

Pixel AUROC and AP are exact by default, as AA-CLIP computes them with scikit-learn over every pixel
of a class: each batch's maps are spilled to disk per class and read back one class at a time at
the end (:mod:`ablate.eval.exact`). ``pixel_metrics="binned"`` puts them into on-device histograms
instead (:mod:`ablate.eval.metrics`: no disk, a small bounded error). AA-CLIP's image score is
normalised over the whole class, so per image only its map maximum and detection score are kept (and
per class the pixel extremes) until the end; image metrics are always exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ablate.allocator import return_freed_memory
from ablate.engine.device import autocast
from ablate.eval import EVAL_METRICS
from ablate.eval.exact import SpilledCurves, grouped_exact
from ablate.eval.metrics import DEFAULT_BINS, BinnedCurves
from ablate.subjects.aaclip.scoring import Scoring, image_scores

__all__ = ["EVAL_METRICS", "PIXEL_METRICS", "EvalResult", "evaluate"]

PIXEL_METRICS = ("exact", "binned")  # how pixel AUROC / AP are counted (spec eval.pixel_metrics)


@dataclass
class EvalResult:
    """One arm's evaluation: the mean over classes (``metrics``) and every class's values.

    A class without anomalous (or without normal) images has no image-level value (NaN), one
    without anomalous pixels no pixel-level value; ``reasons`` says which and why, and the mean is
    over the classes that have a value (NaN when none has).
    """

    metrics: dict[str, float]  # EVAL_METRICS -> mean over classes
    per_class: dict[str, dict[str, float]]  # class -> EVAL_METRICS -> value
    counts: dict[str, dict[str, int]]  # class -> images, anomalous_images, pixels, anomalous_pixels
    reasons: dict[str, str] = field(default_factory=dict)  # "class/level" -> why NaN
    bins: int | None = None  # the histogram bins of binned pixel metrics (None: exact)
    pixel_metrics: str = "exact"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _for_arms(batch: Any, arms: int) -> Any:
    """A plain batch ([B, ...]) repeated for every arm of a pack; a stacked one as it is."""
    if arms == 1 or batch.images.dim() == 5:
        return batch
    return type(batch)(*(t.unsqueeze(0).expand(arms, *t.shape) for t in vars(batch).values()))


@torch.no_grad()
@return_freed_memory()
def evaluate(
    subject: Any,
    batches: Iterable[Any],
    device: torch.device,
    class_names: Sequence[str],
    bins: int = DEFAULT_BINS,
    scoring: Scoring | None = None,
    precision: str = "fp32",
    pixel_metrics: str = "exact",
) -> list[EvalResult]:
    """Score every batch with ``subject`` (eval mode, no grad) and return one result per arm.

    ``batches`` yields ``Batch``-like objects (images, masks [.., H, W], labels, class_idx indexing
    ``class_names``), on any device: each is moved to ``device`` when used, so a generator over a
    large test set streams. For a pack of arms a batch may be stacked per arm ([arms, B, ...]) or
    plain ([B, ...], then every arm sees it). ``precision``: the autocast of the forward passes.
    ``pixel_metrics``: ``"exact"`` (scikit-learn's values; the maps spilled to a temporary folder,
    4 bytes a pixel) or ``"binned"`` (``bins`` histogram bins per class over its observed range).
    """
    if pixel_metrics not in PIXEL_METRICS:
        raise ValueError(f"unknown pixel_metrics {pixel_metrics!r}; valid: {', '.join(PIXEL_METRICS)}")
    exact = pixel_metrics == "exact"
    scoring = scoring or Scoring()
    arms = getattr(subject, "n_arms", 1)
    n_cls = len(class_names)
    n_groups = arms * n_cls
    pixel: SpilledCurves | BinnedCurves = SpilledCurves(n_groups) if exact else BinnedCurves(n_groups, device, bins)
    pix_min = torch.full((n_groups,), math.inf, dtype=torch.float64, device=device)
    pix_max = torch.full((n_groups,), -math.inf, dtype=torch.float64, device=device)
    parts: list[tuple[torch.Tensor, ...]] = []  # per batch: groups, labels, map max, detection
    was_training = getattr(subject, "training", False)
    subject.train(False)
    try:
        for batch in batches:
            if batch.images.device.type != torch.device(device).type:  # ('cuda' vs 'cuda:0' is no move)
                batch = batch.to(device)
            batch = _for_arms(batch, arms)
            with autocast(device, precision):
                s = subject.anomaly_scores(batch, scoring)
            cls = batch.class_idx.reshape(arms, -1)
            groups = (torch.arange(arms, device=device).unsqueeze(1) * n_cls + cls).reshape(-1)
            masks = batch.masks.reshape(-1, *batch.masks.shape[-2:])
            if exact:
                pixel.update(s.maps, masks, groups.view(-1, 1, 1))
            else:
                pixel.update_logits(s.map_logits, masks, groups.view(-1, 1, 1))
            flat = s.maps.detach().double().flatten(1)
            pix_min.scatter_reduce_(0, groups, flat.amin(1), "amin")
            pix_max.scatter_reduce_(0, groups, flat.amax(1), "amax")
            parts.append((groups, batch.labels.reshape(-1), s.map_max.float(), s.detection.float()))
        scores = labels = groups = torch.zeros(0)
        if parts:
            groups, labels, map_max, detection = (torch.cat(t) for t in zip(*parts))
            scores = image_scores(scoring, map_max, detection, groups, pix_min, pix_max)
        pix = pixel.compute()
    finally:
        subject.train(was_training)
        if exact:
            pixel.close()
    img = grouped_exact(scores.float().cpu().numpy(), labels.cpu().numpy(), groups.cpu().numpy(), n_groups)
    results = []
    for a in range(arms):
        per_class, counts, reasons = {}, {}, {}
        for c, name in enumerate(class_names):
            i, p = img[a * n_cls + c], pix[a * n_cls + c]
            if i.positives + i.negatives == 0:
                continue  # a class of the prompts the evaluation set does not hold (a training-only class)
            per_class[name] = {"image_auroc": i.auroc, "image_ap": i.ap, "pixel_auroc": p.auroc, "pixel_ap": p.ap}
            counts[name] = {
                "images": i.positives + i.negatives,
                "anomalous_images": i.positives,
                "pixels": p.positives + p.negatives,
                "anomalous_pixels": p.positives,
            }
            if i.reason:
                reasons[f"{name}/image"] = i.reason
            if p.reason:
                reasons[f"{name}/pixel"] = p.reason
        means = {}
        for m in EVAL_METRICS:
            vals = [v[m] for v in per_class.values() if math.isfinite(v[m])]
            means[m] = sum(vals) / len(vals) if vals else math.nan
        results.append(EvalResult(means, per_class, counts, reasons, None if exact else bins, pixel_metrics))
    return results
