"""Terminal views of the query frames: the few columns a reader compares, intervals folded into one
cell, narrow enough for an 80-column terminal. csv and json output carry every column instead."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ablate.eval import EVAL_METRICS
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
    "image_auroc": "img AUROC",
    "image_ap": "img AP",
    "pixel_auroc": "px AUROC",
    "pixel_ap": "px AP",
}
EVAL_COLUMNS = EVAL_METRICS
CLASSES_NOTE = "n (bad): images (anomalous); nan: undefined (one label only; csv/json say which)"


# Short labels for the reference rows of the per-fix view (the frame keeps the long ones).
REFERENCE_SHORT = {"no-branch (baseline)": "no-branch (base)", "frozen-adapters (control)": "frozen (control)"}


def _decimals(frame: pd.DataFrame, name: str) -> int:
    """Decimals that give the column's largest value three significant digits (one format per column,
    so values line up and tiny bounds do not turn into long strings)."""
    cols = [c for c in (name, f"{name}_lo", f"{name}_hi") if c in frame.columns]
    vals = pd.to_numeric(frame[cols].stack(), errors="coerce").abs() if cols else pd.Series(dtype=float)
    vals = vals[np.isfinite(vals) & (vals > 0)]
    return 3 if vals.empty else int(min(6, max(0, 2 - math.floor(math.log10(vals.max())))))


def _ci(row: Any, name: str, decimals: int) -> str:
    return fmt_ci(row.get(name), row.get(f"{name}_lo"), row.get(f"{name}_hi"), decimals=decimals)


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
    dec = {m: _decimals(frame, m) for m in objectives}
    evaluated = _evaluated(frame)
    rows = []
    for _, r in frame.iterrows():
        seeds = f"{r['n_seeds']}/{r['seeds_wanted']}"
        rows.append(
            {
                "#": str(r["trial_number"]),
                "fix": r["fix"],
                "scale": _scale(r["scale"]),
                "seeds": seeds if r["ranked"] else f"{r['status']} {seeds}",
                **{SHORT.get(m, m): _ci(r, m, dec[m]) for m in objectives},
                **_ratio_column(r, objectives),
                **_auroc_column(r, objectives, evaluated),
            }
        )
    return pd.DataFrame(rows)


def _evaluated(frame: pd.DataFrame) -> bool:
    """Whether any row has an end-of-run evaluation (the AUROC column is shown only then)."""
    return any(c in frame.columns and bool(frame[c].notna().any()) for c in ("image_auroc", "pixel_auroc"))


def _auroc_column(row: Any, objectives: list[str], evaluated: bool) -> dict[str, str]:
    """image / pixel AUROC in one cell, when evaluated and neither is already an objective column."""
    if not evaluated or any(m in EVAL_COLUMNS for m in objectives):
        return {}
    return {"AUROC i/px": f"{fmt(row.get('image_auroc'), 3)}/{fmt(row.get('pixel_auroc'), 3)}"}


def _ratio_column(row: Any, objectives: list[str]) -> dict[str, str]:
    # dilution_train is -log of this ratio: showing both would say one thing twice
    return {} if "dilution_train" in objectives else {"R train": fmt(row.get("train_grad_ratio"), 3)}


def fixes_view(frame: pd.DataFrame, objectives: list[str]) -> pd.DataFrame:
    dec = {m: _decimals(frame, m) for m in objectives}
    evaluated = _evaluated(frame)
    rows = []
    for _, r in frame.iterrows():
        best = r.get("best_trial")
        none_ranked = r["fix"] not in REFERENCE_SHORT and (best is None or pd.isna(best))
        unranked = int(r.get("n_unranked") or 0)
        rows.append(
            {
                "fix": REFERENCE_SHORT.get(r["fix"], r["fix"]),
                "#": "-" if best is None or pd.isna(best) else str(int(best)),
                "scale": _scale(r["scale"]),
                "seeds": "-" if none_ranked else str(r["n_seeds"]),
                **{
                    SHORT.get(m, m): (f"({unranked} unranked)" if none_ranked else _ci(r, m, dec[m]))
                    for m in objectives
                },
                **_ratio_column(r, objectives),
                **_auroc_column(r, objectives, evaluated),
            }
        )
    return pd.DataFrame(rows)


def runs_view(frame: pd.DataFrame) -> pd.DataFrame:
    """One line per run; an ``mfu`` column only where some run has one (GPU runs with a known peak).
    No evaluation column (it would pass 80 columns): ``--classes`` shows it, csv/json carry it."""
    with_mfu = "mfu" in frame.columns and bool(frame["mfu"].notna().any())
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
                **({"mfu": fmt(r.get("mfu"), 2)} if with_mfu else {}),
            }
        )
    return pd.DataFrame(rows)


def classes_view(frame: pd.DataFrame) -> pd.DataFrame:
    """One line per evaluated run and class (``query --classes``)."""
    rows = []
    for _, r in frame.iterrows():
        rows.append(
            {
                "run": str(r["run_id"]),
                "seed": str(r["seed"]),
                "fix": r["fix"],
                "class": r["class_name"],
                **{SHORT[m]: fmt(r.get(m), 3) for m in EVAL_COLUMNS},
                "n (bad)": f"{r.get('images')} ({r.get('anomalous_images')})",
            }
        )
    return pd.DataFrame(rows)
