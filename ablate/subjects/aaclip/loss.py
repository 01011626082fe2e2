"""AA-CLIP Stage 2 loss: per level focal + two Dice terms, plus detection cross-entropy.

Takes plain tensors so it knows nothing of the model that produced them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(probs: torch.Tensor, target: torch.Tensor, arms: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """probs [B, C, H, W] (softmax output), target [B, H, W] class indices -> [arms] (gamma = 2).

    ``arms``: the batch holds that many arms' samples one after another; each arm gets its own mean.
    """
    pt = probs.gather(1, target.unsqueeze(1)).squeeze(1).clamp_min(eps)
    return (-((1.0 - pt) ** 2) * pt.log()).reshape(arms, -1).mean(1)


def dice_loss(pred: torch.Tensor, target: torch.Tensor, arms: int = 1, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice per sample, averaged per arm; pred and target [B, H, W] in [0, 1] -> [arms]."""
    inter = (pred * target).flatten(1).sum(1)
    denom = pred.flatten(1).sum(1) + target.flatten(1).sum(1)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).reshape(arms, -1).mean(1)


def stage2_loss(
    seg_logits: list[torch.Tensor],
    det_logits: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    arms: int = 1,
) -> torch.Tensor:
    """seg_logits: per level [B, 2, h, w] logits (normal, abnormal); masks [B, H, W] in {0,1}.

    Returns one loss per arm, [arms]: the batch is ``arms`` equal slices, one per arm (packed arms
    train side by side; a single model is one arm).
    """
    masks = masks.float()
    target = masks.long()
    total = F.cross_entropy(det_logits.float(), labels, reduction="none").reshape(arms, -1).mean(1)
    for logits in seg_logits:
        probs = torch.softmax(logits.float(), dim=1)
        probs = F.interpolate(probs, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        total = total + focal_loss(probs, target, arms)
        total = total + dice_loss(probs[:, 0], 1.0 - masks, arms) + dice_loss(probs[:, 1], masks, arms)
    return total
