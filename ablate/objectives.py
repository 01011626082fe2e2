"""The metrics a study can optimise: what each means, its direction, and how seeds combine.

One table, read by the spec (validation), the study runner (Optuna's values) and the queries
(the trial table), so Optuna's view and the ``ablate_*`` tables compute a trial's value the same
way. Torch-free, so read commands stay light.

Ratio objectives are *dilutions*: max(0, -log R) of the geometric mean of the per-seed ratios.
They are 0 when the adapters get at least the baseline's gradient and grow as it shrinks, so an
amplified gradient (R > 1) is not rewarded over R = 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ablate.eval import EVAL_METRICS
from ablate.stats import SCOPE_NONE, SCOPE_SEEDS, SCOPE_WITHIN, Interval, dilution, mean_ci, ratio_ci


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "minimize" | "maximize"
    column: str  # the ablate_runs column a seed's value comes from
    dilution: bool  # True: geometric mean of the column over seeds, then max(0, -log)
    meaning: str
    intermediate: bool = False  # has a per-step value the pruner can read (loss metrics only)


_ALL = (
    Objective("adapter_gain", "maximize", "adapter_gain", False,
              "held-out loss with the judged adapter group reset to its init minus as trained (> 0: it learned)"),
    Objective("adapter_gain_rel", "maximize", "adapter_gain_rel", False,
              "adapter_gain / the same seed's no-branch baseline's (1: as much as without the branch)"),
    Objective("dilution_train", "minimize", "train_grad_ratio", True,
              "max(0, -log) of the judged group's gradient vs the baseline run, step by step"),
    Objective("dilution_update", "minimize", "train_update_ratio", True,
              "max(0, -log) of the judged group's update-to-weight ratio vs the baseline run"),
    Objective("dilution_init", "minimize", "grad_ratio_init", True,
              "max(0, -log) of the bypass probe ratio at step 0 (the seed's measurement)"),
    Objective("dilution_bypass", "minimize", "grad_ratio_mean", True,
              "max(0, -log) of the bypass ratios over the run (also counts co-adaptation)"),
    Objective("loss_slope", "minimize", "loss_slope", False,
              "least-squares loss slope per 100 steps after warm-up", intermediate=True),
    Objective("loss_slope_rel", "minimize", "loss_slope_rel", False,
              "loss_slope minus the same seed's baseline slope"),
    Objective("loss_last", "minimize", "loss_last", False,
              "mean training loss over the last 10% of steps", intermediate=True),
    # The end-of-run evaluation (spec [eval]): means over classes, as AA-CLIP reports them.
    Objective("image_auroc", "maximize", "image_auroc", False,
              "image-level AUROC of the anomaly score at the end of the run (mean over classes)"),
    Objective("image_ap", "maximize", "image_ap", False,
              "image-level average precision at the end of the run (mean over classes)"),
    Objective("pixel_auroc", "maximize", "pixel_auroc", False,
              "pixel-level AUROC of the upsampled anomaly map (mean over classes)"),
    Objective("pixel_ap", "maximize", "pixel_ap", False,
              "pixel-level average precision of the upsampled anomaly map (mean over classes)"),
)  # fmt: skip
OBJECTIVES: dict[str, Objective] = {o.name: o for o in _ALL}
DEFAULT_OBJECTIVES = ("adapter_gain", "dilution_train")
EVAL_OBJECTIVES = EVAL_METRICS  # need [eval] enabled


def metric_direction(name: str) -> str:
    """Which way a stored metric is better, for the figures that rank points on any two metrics:
    an objective's own direction; gradient and update ratios, gradient shares and gains against the
    baseline higher; losses, slopes and times lower."""
    if name in OBJECTIVES:
        return OBJECTIVES[name].direction
    if name.startswith(("loss", "wall")):
        return "minimize"
    return "maximize"


def tradeoff_axes(objectives: Sequence[str]) -> tuple[str, str]:
    """(x, y) of the tradeoff figure: the second and the first objective, the defaults filling in."""
    y, x = ([*objectives, *[m for m in DEFAULT_OBJECTIVES if m not in objectives]])[:2]
    return x, y


def known_objectives(names: Sequence[str]) -> list[str]:
    """The names among a study's stored objectives that this version knows, in their order (a
    database written by another version may name one it does not)."""
    return [m for m in names if m in OBJECTIVES]


def seed_value(name: str, row: Mapping[str, float]) -> float:
    """One seed's value of an objective from its run row (a dict of run columns)."""
    obj = OBJECTIVES[name]
    v = row.get(obj.column)
    v = math.nan if v is None else float(v)
    return dilution(v) if obj.dilution else v


def _get(row: Mapping[str, float], key: str) -> float:
    v = row.get(key)
    return math.nan if v is None else float(v)


def column_interval(column: str, rows: Sequence[Mapping[str, float]], ratio: bool = False) -> Interval:
    """The mean over seeds of a run column (geometric for a ratio), with a 95% interval.

    Several seeds: a t-interval over the seeds (on log ratios for a ratio), scope ``seeds``. One
    seed: the run's own within-seed interval (columns ``<column>_lo/_hi`` when the run has them),
    scope ``within-seed``: it says how well that seed is measured, not how another would come out.
    """
    vals = [_get(r, column) for r in rows]
    if len(rows) == 1:
        lo, hi = _get(rows[0], column + "_lo"), _get(rows[0], column + "_hi")
        scope = SCOPE_WITHIN if math.isfinite(lo) and math.isfinite(hi) else SCOPE_NONE
        return Interval(vals[0], lo, hi, 1, scope)
    if ratio:
        return ratio_ci([[v] for v in vals])
    return mean_ci(vals, scope=SCOPE_SEEDS)


def trial_interval(name: str, rows: Sequence[Mapping[str, float]]) -> Interval:
    """A trial's value of an objective over its seeds' run rows, with a 95% interval."""
    obj = OBJECTIVES[name]
    ci = column_interval(obj.column, rows, ratio=obj.dilution)
    if obj.dilution:  # dilution decreases with R: the interval's ends swap
        return Interval(dilution(ci.estimate), dilution(ci.hi), dilution(ci.lo), ci.n, ci.scope)
    return ci


def trial_value(name: str, rows: Sequence[Mapping[str, float]]) -> float:
    """What Optuna is told: the mean over seeds (dilutions: of the geometric-mean ratio)."""
    return trial_interval(name, rows).estimate
