"""Evaluation at the end of a run: the detection and segmentation metrics AA-CLIP reports.

This package's top level imports nothing (no torch), so the read side (store, queries, views, plots)
takes the metric names from here: ``metrics`` and ``evaluate`` hold the torch code.
"""

# The four metrics, each a mean over classes per run (and per class in ablate_class_metrics): image
# level from the image score, pixel level from the anomaly map upsampled to the mask size.
EVAL_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap")
