"""A run against its paired no-branch baseline: same seed, same initial weights, same batches.

The bypass probe (``grad_ratio_*``) asks "what if this trained model lost its branch", which after
step 0 also measures how much the model has come to rely on the branch (co-adaptation). The
question the seed asked is different: *during training*, do the adapters get the gradient and
take the steps they would have taken without the branch? That needs the baseline run, step by step:

- ``train_grad_ratio_<group>``: geometric mean over steps after warm-up of the group's gradient
  norm in this run / in the baseline run at the same step.
- ``train_update_ratio_<group>``: the same for the update-to-weight ratio ||dθ||/||θ|| (what Adam
  actually did; Adam normalises gradient scale, so a uniform shrink alone changes little here).
- ``adapter_gain_rel``: this run's held-out adapter gain / the baseline's (1 = the adapters learned
  as much as without the branch, 0 = as little as frozen ones), and ``adapter_gain_diff`` with a
  paired interval (the same held-out batches in both runs).

Intervals within one seed are over the steps, widened by the effective sample size of the
per-step log ratios (neighbouring steps are correlated; :func:`ablate.stats.series_ci`), and the
judged group's lag-1 autocorrelation is kept beside them (``train_grad_ratio_ac1``,
``train_update_ratio_ac1``); across seeds, intervals come from the per-seed values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ablate.stats import log_ratio, mean_ci, series_ci

RATIO_SERIES = {"train_grad_ratio": "grad_norm", "train_update_ratio": "upd"}


def _after_warmup(n: int, warmup_frac: float) -> int:
    return min(int(n * warmup_frac), max(n - 1, 0))


def series_ratio(
    run: Sequence[float], base: Sequence[float], warmup_frac: float = 0.1
) -> tuple[float, float, float, float]:
    """(geometric mean, lo, hi, lag-1 autocorrelation) of run[t] / base[t] over steps after warm-up:
    a within-seed interval (:func:`ablate.stats.series_ci` on the log ratios)."""
    n = min(len(run), len(base))
    start = _after_warmup(n, warmup_frac)
    logs = []
    for a, b in zip(run[start:n], base[start:n]):
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
            continue
        logs.append(log_ratio(a / b))
    if not logs:
        return math.nan, math.nan, math.nan, math.nan
    ci, ac1 = series_ci(logs)
    return math.exp(ci.estimate), math.exp(ci.lo), math.exp(ci.hi), ac1


def compare_to_baseline(
    metrics: Mapping[str, Sequence[float]],
    base_metrics: Mapping[str, Sequence[float]],
    gain_batches: Sequence[float],
    base_gain_batches: Sequence[float],
    groups: Sequence[str],
    judged: str,
    warmup_frac: float = 0.1,
) -> dict[str, float]:
    """The run-vs-baseline summary columns (see the module docstring); NaN where a series is missing."""
    out: dict[str, float] = {}
    for key, prefix in RATIO_SERIES.items():
        for g in groups:
            name = f"{prefix}_{g}"
            est, lo, hi, ac1 = series_ratio(metrics.get(name, []), base_metrics.get(name, []), warmup_frac)
            out[f"{key}_{g}"] = est
            if g == judged:
                out[key], out[f"{key}_lo"], out[f"{key}_hi"], out[f"{key}_ac1"] = est, lo, hi, ac1
    gain = sum(gain_batches) / len(gain_batches) if gain_batches else math.nan
    base = sum(base_gain_batches) / len(base_gain_batches) if base_gain_batches else math.nan
    out["adapter_gain_rel"] = gain / base if base and math.isfinite(base) and base > 0 else math.nan
    same_batches = len(gain_batches) == len(base_gain_batches)
    diff = mean_ci([a - b for a, b in zip(gain_batches, base_gain_batches)] if same_batches else [])
    out["adapter_gain_diff"], out["adapter_gain_diff_lo"], out["adapter_gain_diff_hi"] = diff.estimate, diff.lo, diff.hi
    return out
