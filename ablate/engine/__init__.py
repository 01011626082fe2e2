"""The generic engine: the paired probe, the training loop, the comparison with the baseline run, the
fix registry (how a branch joins the stream) and packing.

It works on any model through the ``Subject`` interface (:mod:`ablate.engine.subject`) and imports no
subject, no Optuna, no SQL and no CLI (``tests/test_subjects.py`` checks the imports).
"""
