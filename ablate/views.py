"""Terminal views of the query frames: the few columns a reader compares, intervals folded into one
cell, narrow enough for an 80-column terminal. csv and json output carry every column instead."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ablate.textfmt import fmt, fmt_ci

SHORT = {
    "adapter_gain": "gain",
    "adapter_gain_rel": "gain/base",
    "dilution_train": "dilution",
    "dilution_update": "upd. dil.",
    "dilution_init": "dil. @0",
    "dilution_bypass": "bypass dil.",
    "loss_slope": "slope",
    "loss_slope_rel": "slope-base",
    "loss_last": "last loss",
}


def _ci(row: Any, name: str) -> str:
    return fmt_ci(row.get(name), row.get(f"{name}_lo"), row.get(f"{name}_hi"))


def _scale(v: Any) -> str:
    return fmt(v, 3) if isinstance(v, float) and v == v else "-"


def scope_note(frame: pd.DataFrame) -> str:
    """What the intervals in a view are (said under every table)."""
    scopes = set(frame.get("ci_scope", pd.Series(dtype=object)).dropna())
    if not scopes:
        return ""
    if scopes == {"seeds"}:
        return "[lo, hi]: 95% interval over seeds (t on seed means; ratios on the log scale)"
    return "[lo, hi]: 95% interval WITHIN ONE SEED only (batch noise); add seeds for an interval over seeds"


def trials_view(frame: pd.DataFrame, objectives: list[str]) -> pd.DataFrame:
    rows = []
    for _, r in frame.iterrows():
        seeds = f"{r['n_seeds']}/{r['seeds_wanted']}"
        rows.append(
            {
                "#": str(r["trial_number"]),
                "fix": r["fix"],
                "scale": _scale(r["scale"]),
                "seeds": seeds if r["ranked"] else f"{r['status']} {seeds}",
                **{SHORT.get(m, m): _ci(r, m) for m in objectives},
                "R train": fmt(r.get("train_grad_ratio"), 3),
            }
        )
    return pd.DataFrame(rows)


def fixes_view(frame: pd.DataFrame, objectives: list[str]) -> pd.DataFrame:
    rows = []
    for _, r in frame.iterrows():
        best = r.get("best_trial")
        rows.append(
            {
                "fix": r["fix"],
                "trial": "-" if best is None or pd.isna(best) else str(int(best)),
                "scale": _scale(r["scale"]),
                "seeds": str(r["n_seeds"]),
                **{SHORT.get(m, m): _ci(r, m) for m in objectives},
                "R train": fmt(r.get("train_grad_ratio"), 3),
            }
        )
    return pd.DataFrame(rows)


def runs_view(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in frame.iterrows():
        tn = r.get("trial_number")
        rows.append(
            {
                "run": str(r["run_id"]),
                "role": r["role"],
                "#": "-" if tn is None or pd.isna(tn) else str(int(tn)),
                "seed": str(r["seed"]),
                "fix": r["fix"],
                "status": r["status"],
                "gain": fmt(r.get("adapter_gain"), 3),
                "R train": fmt(r.get("train_grad_ratio"), 3),
                "R @0": fmt(r.get("grad_ratio_init"), 3),
                "slope": fmt(r.get("loss_slope"), 3),
            }
        )
    return pd.DataFrame(rows)
