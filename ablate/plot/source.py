"""What ``ablate plot`` reads from the store: the study's summaries, then the per-step series of
only the runs its figures draw.

The per-step table holds about 1,500 rows per run (300 steps x 5 metrics), 15 million at 10,000
trials; reading it whole made ``ablate plot`` grow by ~1 GB per 1,000 trials although it draws a
handful of curves. The curve figures (loss, gradient norms) show each fix's best trial and the
baselines, so only those runs' series are read. The gate figure showed every trial with a gate;
it now shows every trial up to ``GATE_TRIALS_PER_FIX`` per fix, and beyond that the best ones by
the same rule (the figure says so), so its reads stay bounded as a study grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from ablate.plot import ranked_runs
from ablate.plot.extract import GATE_PREFIX, GRAD_PREFIX, KINDS, BestTrial, NoPlotData, trials_by_slope
from ablate.store import query as q
from ablate.subjects import subject_wording

GATE_TRIALS_PER_FIX = 8
CURVE_METRICS = {"loss": ("loss",)}
CURVE_PREFIXES = {"grad-norms": GRAD_PREFIX}  # every group's grad_norm_<group>, and the branch's


@dataclass(frozen=True)
class PlotInputs:
    """The frames ``render_all`` takes, with ``steps`` holding only the runs the figures draw."""

    trials: pd.DataFrame
    references: pd.DataFrame  # the reference rows of group_by_fix
    runs: pd.DataFrame  # reference runs and the runs of ranked trials
    steps: pd.DataFrame
    settings: dict[str, Any]
    gates_selection: str | None  # how the gate figure's trials were chosen, when not all

    @property
    def groups(self) -> list[str]:
        """The subject's watched groups, in its order (their union ``all`` last)."""
        return list(self.settings["groups"])

    @property
    def group_labels(self) -> dict[str, str]:
        """How the subject names its groups in figures (ablate/subjects/<subject>/wording.py)."""
        return dict(subject_wording(self.settings["subject"]).GROUP_LABELS)


def _complete_baselines(runs: pd.DataFrame) -> list[int]:
    done = runs[(runs["status"] == "complete") & (runs["role"] == "baseline")]
    return [int(i) for i in done["run_id"]]


def _gated(engine: Engine, ranking: dict[str, list[BestTrial]]) -> set[str]:
    """The fixes whose best trial logged a gate (gates belong to the fix's join, not to a trial)."""
    best_ids = {i: fix for fix, trials in ranking.items() for i in trials[0].run_ids}
    rows = q.step_metrics_for_runs(engine, list(best_ids), prefix=GATE_PREFIX)
    return {best_ids[int(i)] for i in rows["run_id"].unique()}


def _gate_runs(
    engine: Engine, ranking: dict[str, list[BestTrial]], slope_metric: str, cap: int
) -> tuple[list[int], str | None]:
    ids: list[int] = []
    capped = []
    for fix in _gated(engine, ranking):
        chosen = ranking[fix][:cap]
        ids += [i for t in chosen for i in t.run_ids]
        if len(ranking[fix]) > cap:
            capped.append(f"{fix} {len(ranking[fix])}")
    if not capped:
        return ids, None
    return ids, (
        f"per fix at most {cap} trials, those with the lowest mean {slope_metric} "
        f"(trials with a gate: {', '.join(sorted(capped))})"
    )


def load(
    engine: Engine,
    study: str,
    kinds: Sequence[str] | None = None,
    slope_metric: str = "loss_slope",
    gate_cap: int = GATE_TRIALS_PER_FIX,
) -> PlotInputs:
    """Read what the figures of ``kinds`` (default: all) need, and no per-step rows beyond it."""
    kinds = tuple(kinds) if kinds is not None else KINDS
    settings = q.study_settings(engine, study)
    trials, fixes, all_runs = q.summary_frames(engine, study)
    runs = ranked_runs(all_runs, trials)
    try:
        ranking = trials_by_slope(runs, slope_metric)
    except NoPlotData:  # no complete trial: the figures say so themselves
        ranking = {}
    frames = []
    names = [m for k in kinds for m in CURVE_METRICS.get(k, ())]
    prefixes = [CURVE_PREFIXES[k] for k in kinds if k in CURVE_PREFIXES]
    if names or prefixes:
        ids = [i for trials_ in ranking.values() for i in trials_[0].run_ids] + _complete_baselines(runs)
        for prefix in prefixes or [None]:
            frames.append(q.step_metrics_for_runs(engine, ids, names=names, prefix=prefix))
            names = []
    selection = None
    if "gates" in kinds and ranking:
        gate_ids, selection = _gate_runs(engine, ranking, slope_metric, gate_cap)
        frames.append(q.step_metrics_for_runs(engine, gate_ids, prefix=GATE_PREFIX))
    frames = [f for f in frames if not f.empty]
    steps = pd.concat(frames, ignore_index=True) if frames else q.step_metrics_for_runs(engine, [])
    references = fixes[fixes["fix"].isin(list(q.REFERENCE_LABELS.values()))]
    return PlotInputs(trials, references, runs, steps, settings, selection)
