"""Evaluation at the end of a run: the detection and segmentation metrics AA-CLIP reports.

This package's top level imports nothing (no torch), so the read side (store, queries, views, plots)
takes the metric names from here: ``metrics`` and ``evaluate`` hold the torch code.
"""

# The four metrics, each a mean over classes per run (and per class in ablate_class_metrics): image
# level from the image score, pixel level from the anomaly map upsampled to the mask size.
EVAL_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap")

# A run evaluated during training (spec eval.every) stores each evaluation's means as step rows
# named with this prefix ("eval/pixel_auroc", ...) at the step it was taken (updates done).
EVAL_STEP_PREFIX = "eval/"


def evaluation_row(metrics: dict[str, float]) -> dict[str, float]:
    """An evaluation's means as the step row that stores them."""
    return {f"{EVAL_STEP_PREFIX}{name}": float(value) for name, value in metrics.items()}
