"""A pack: claimed runs of one fix type that train side by side (one run alone is a pack of one).

What the study runner (ablate/study/runner.py) trains and the trial path (ablate/study/trial_pack.py)
asks it to train: the claimed rows, the pack's progress label, and the two signals its training
sends back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ablate.engine.fixes import parse_fix
from ablate.ranking import REFERENCE_LABELS


class RunFailed(RuntimeError):
    """A seed's training run failed; the trial is marked FAIL and the study goes on."""


class AllArmsDropped(Exception):  # noqa: N818 - a signal, not an error
    """Every run of a several-trial pack was finished early (pruned or diverged): stop the pack."""


@dataclass(frozen=True)
class ClaimedRun:
    """One claimed run row of a pack: whose run it is and the row's id."""

    role: str
    trial_number: int | None
    fix: str
    scale: float | None
    seed: int
    run_id: int


def _joined(values: list[Any]) -> str:
    return ",".join(dict.fromkeys(values))  # in order, each once


def pack_label(runs: list[ClaimedRun]) -> str:
    """'trial 3 fixed-scale s=0.5 seeds 0,1,2'; 'trials 3,4 ...' for a pack of several trials."""
    first = runs[0]
    choice = parse_fix(first.fix, first.scale)
    if first.role == "trial":
        trials = _joined([str(r.trial_number) for r in runs])
        label = f"trial{'s' if ',' in trials else ''} {trials} {choice.name}"
    else:
        label = REFERENCE_LABELS.get(first.role, first.role)
    if choice.scale is not None:
        scales = {r.trial_number: parse_fix(r.fix, r.scale).scale for r in runs}
        label += " s=" + ",".join(f"{v:.3g}" for v in scales.values())
    seeds = _joined([str(r.seed) for r in runs])
    return label + f" seed{'s' if ',' in seeds else ''} {seeds}"
