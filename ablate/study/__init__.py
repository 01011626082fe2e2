"""Optuna studies over fix types and scales, recorded in the results database."""

from ablate.study.runner import StudyOutcome, StudyReporter, run_study

__all__ = ["StudyOutcome", "StudyReporter", "run_study"]
