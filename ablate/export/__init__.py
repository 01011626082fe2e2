"""Copies of a study into the experiment trackers researchers already use (``ablate export``)."""
