"""Plots of a study's results: ``extract_*`` (DataFrames -> named data) and ``render_*`` (data -> Figure).

The extraction side is imported eagerly and needs only pandas/numpy. The renderers are loaded on
first use, so ``import ablate.plot`` in a notebook neither imports matplotlib nor touches its backend.
"""

from __future__ import annotations

import importlib
from typing import Any

from ablate.pareto import pareto_front
from ablate.plot.extract import (
    EVAL_KIND,
    FIX_ORDER,
    KINDS,
    PLOT_KINDS,
    BestTrial,
    Curve,
    EvalData,
    EvalEntry,
    GatesData,
    GateSeries,
    GradNormsData,
    LossCurvesData,
    NoPlotData,
    RatioLevel,
    RatioScaleData,
    ReferenceMark,
    ScaleSeries,
    SlopeFit,
    TradeoffData,
    TrialPoint,
    best_trial_per_fix,
    extract_eval,
    extract_gates,
    extract_grad_norms,
    extract_loss_curves,
    extract_ratio_vs_scale,
    extract_tradeoff,
    fix_sort_key,
)


def ranked_runs(runs: Any, trials: Any) -> Any:
    """The runs a plot may draw: the reference runs and the runs of ranked trials only."""
    keep = set(trials.loc[trials["ranked"], "trial_number"].astype(int))
    is_trial = runs["role"] == "trial"
    return runs[~is_trial | runs["trial_number"].isin(keep)]


_RENDER_NAMES = frozenset(
    {
        "FixStyle",
        "RENDERERS",
        "extract_kind",
        "fix_style",
        "render_all",
        "render_eval",
        "render_gates",
        "render_grad_norms",
        "render_loss_curves",
        "render_ratio_vs_scale",
        "render_tradeoff",
        "save_figure",
    }
)


def __getattr__(name: str) -> Any:
    """Lazy access to the matplotlib side (``ablate.plot.render``)."""
    if name in _RENDER_NAMES:
        return getattr(importlib.import_module("ablate.plot.render"), name)
    raise AttributeError(f"module 'ablate.plot' has no attribute {name!r}")


__all__ = [
    "EVAL_KIND",
    "FIX_ORDER",
    "KINDS",
    "PLOT_KINDS",
    "EvalData",
    "EvalEntry",
    "extract_eval",
    "render_eval",
    "RENDERERS",
    "ReferenceMark",
    "ranked_runs",
    "BestTrial",
    "Curve",
    "FixStyle",
    "GateSeries",
    "GatesData",
    "GradNormsData",
    "LossCurvesData",
    "NoPlotData",
    "RatioLevel",
    "RatioScaleData",
    "ScaleSeries",
    "SlopeFit",
    "TradeoffData",
    "TrialPoint",
    "best_trial_per_fix",
    "extract_gates",
    "extract_grad_norms",
    "extract_kind",
    "extract_loss_curves",
    "extract_ratio_vs_scale",
    "extract_tradeoff",
    "fix_sort_key",
    "fix_style",
    "pareto_front",
    "render_all",
    "render_gates",
    "render_grad_norms",
    "render_loss_curves",
    "render_ratio_vs_scale",
    "render_tradeoff",
    "save_figure",
]
