"""Evaluation at the end of a run: the detection and segmentation metrics AA-CLIP reports."""
