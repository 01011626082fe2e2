"""AA-CLIP's losses: per level focal + two Dice terms on the upsampled map, detection cross-entropy.

Takes plain tensors so it knows nothing of the model that produced them. Stage 2 sums the
segmentation loss over levels and adds the detection cross-entropy; Stage 1 (ablate/subjects/
aaclip/stage1.py) uses the segmentation loss of one level and an orthogonality term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_SMOOTH = 1e-5  # AA-CLIP's focal loss: one-hot clamped to [s/(C-1), 1-s], then + s inside the log
FOCAL_GAMMA = 2.0
DICE_SMOOTH = 1.0


def focal_loss(probs: torch.Tensor, target: torch.Tensor, arms: int = 1, smooth: float = FOCAL_SMOOTH) -> torch.Tensor:
    """probs [B, C, H, W] (softmax output), target [B, H, W] class indices -> [arms].

    ``pt = sum_c clamp(onehot_c, s/(C-1), 1-s) p_c + s``, loss ``-(1 - pt)^2 log pt``, the mean over
    every pixel of the arm's samples (``arms``: the batch holds that many arms' samples one after
    another; each arm gets its own mean).
    """
    classes = probs.shape[1]
    other = smooth / (classes - 1)
    p_target = probs.gather(1, target.unsqueeze(1)).squeeze(1)
    # sum over classes of the clamped one-hot times p, using sum_c p_c = 1 (softmax)
    pt = (1.0 - smooth) * p_target + other * (1.0 - p_target) + smooth
    return (-((1.0 - pt) ** FOCAL_GAMMA) * pt.log()).reshape(arms, -1).mean(1)


def dice_loss(pred: torch.Tensor, target: torch.Tensor, arms: int = 1, eps: float = DICE_SMOOTH) -> torch.Tensor:
    """Soft Dice per sample, averaged per arm; pred and target [B, H, W] in [0, 1] -> [arms]."""
    inter = (pred * target).flatten(1).sum(1)
    denom = pred.flatten(1).sum(1) + target.flatten(1).sum(1)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).reshape(arms, -1).mean(1)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, arms: int = 1) -> torch.Tensor:
    """One level's loss, [arms]: logits [B, 2, h, w] upsampled to the mask size (bilinear,
    ``align_corners=True``), then softmax; focal + Dice(normal, 1 - mask) + Dice(abnormal, mask)."""
    masks = masks.float()
    up = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=True)
    probs = torch.softmax(up, dim=1)
    loss = focal_loss(probs, masks.long(), arms)
    return loss + dice_loss(probs[:, 0], 1.0 - masks, arms) + dice_loss(probs[:, 1], masks, arms)


def stage2_loss(
    seg_logits: list[torch.Tensor],
    det_logits: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    arms: int = 1,
) -> torch.Tensor:
    """seg_logits: per level [B, 2, h, w] logits (normal, abnormal); masks [B, H, W] in {0,1};
    det_logits [B, 2] (AA-CLIP: the raw cosines). Returns one loss per arm, [arms]: the batch is
    ``arms`` equal slices, one per arm (packed arms train side by side; a single model is one arm).
    """
    total = F.cross_entropy(det_logits.float(), labels, reduction="none").reshape(arms, -1).mean(1)
    for logits in seg_logits:
        total = total + segmentation_loss(logits, masks, arms)
    return total
