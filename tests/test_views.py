"""Terminal views: what a narrow terminal keeps of the trials table when some trials are unranked."""

from __future__ import annotations

import pandas as pd

from ablate import tablefit
from ablate.views import trials_view


def _frame(n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        ranked = i % 5 != 4
        rows.append(
            {
                "trial_number": 1000 + i, "fix": "learnable-alpha", "scale": 0.000123 * (i + 1),
                "status": "complete" if ranked else "failed", "ranked": ranked, "n_seeds": 3 if ranked else 1,
                "seeds_wanted": 3, "ci_scope": "seeds",
                "adapter_gain": -0.012, "adapter_gain_lo": -0.105, "adapter_gain_hi": 0.123,
                "dilution_train": 0.27, "dilution_train_lo": 0.0, "dilution_train_hi": 0.558,
                "train_grad_ratio": 0.76, "loss_slope": -4.5, "grad_ratio_init": 1.07, "loss_last": 4.9,
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def test_unranked_trials_keep_the_objectives_on_screen_and_are_counted():
    view = trials_view(_frame(10), ["adapter_gain", "dilution_train"])
    kept = tablefit.fit(view.columns, view.rows, 80)
    shown = [view.columns[i].header for i in kept]
    # the objectives with their intervals fit 80 columns; the status column goes, and the note says why
    assert shown[:5] == ["#", "fix", "scale", "gain", "dilution"] and "seeds" not in shown
    widths = [max(len(view.columns[i].header), *(len(r[i]) for r in view.rows)) for i in kept]
    assert tablefit.table_width(widths) <= 80
    caption = view.caption(kept)
    assert "2 of 10 trials not ranked (failed, pruned or incomplete): seeds says which" in caption
    assert "not shown: seeds" in caption
    # wide enough, the status is on every unranked row
    everything = tablefit.fit(view.columns, view.rows, None)
    assert "failed 1/3" in {view.rows[4][i] for i in everything}
