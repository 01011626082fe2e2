"""Which trials count: one per distinct parameter set, and no more than the study asked for.

Several workers (and every resume) ask Optuna for trials concurrently. Two things then go wrong
unless each trial checks its claim when it starts: a parameter set already run (or running) is
drawn again, and the study overshoots its trial count because each worker counted before the
others' trials finished. Trial numbers are assigned by the storage, one per trial, so "the trials
with a lower number" is the same set for every worker: the lower number always wins, and a trial
that loses is skipped before it trains anything. A skipped trial is told to Optuna as PRUNED with
the user attribute ``skipped`` (why), so both Optuna's view and ablate's tables hold no evidence for
it, and TPE learns not to propose that point again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

SKIPPED_ATTR = "skipped"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A trial in one of these states holds its parameter set and its place in the count.
HOLDING = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)


def is_skipped(trial: FrozenTrial) -> bool:
    return SKIPPED_ATTR in trial.user_attrs


def counted(trials: Iterable[FrozenTrial], states: tuple[TrialState, ...] = FINISHED) -> list[FrozenTrial]:
    """The trials in ``states`` that count towards the study (skipped ones never do)."""
    return [t for t in trials if t.state in states and not is_skipped(t)]


def params_of(trial: FrozenTrial) -> dict[str, Any]:
    # A WAITING trial has no params yet; what it will run is in its fixed (enqueued) params.
    return dict(trial.params) if trial.params else dict(trial.system_attrs.get("fixed_params", {}))


def param_key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


def skip_reason(trials: Iterable[FrozenTrial], number: int, params: dict[str, Any], total: int) -> str | None:
    """Why trial ``number`` (about to run ``params``) must not run, or None when it should.

    Only trials with a lower number are its rivals, so two workers never skip each other.
    """
    ahead = [t for t in counted(trials, HOLDING) if t.number < number]
    key = param_key(params)
    for t in ahead:
        if param_key(params_of(t)) == key:
            return f"duplicate of trial {t.number}"
    if len(ahead) >= total:
        return f"the study already has its {total} trials"
    return None


def trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """A sampler rebuilt for each trial with a seed drawn from (study seed, trial number).

    Optuna's samplers seed their random state once per process, so every worker and every resume
    of a seeded study draws the same sequence again: ``--trials 5`` then ``--trials 6`` re-draws
    trial 0's point. Trial numbers are unique in the study, so seeding by them keeps a seeded study
    reproducible while no two trials share a stream. The samplers used here (random, TPE, NSGA-II)
    keep their history in the storage, not in the object, so rebuilding them loses nothing.
    """

    def __init__(self, build: Callable[[int | None], optuna.samplers.BaseSampler], seed: int | None) -> None:
        self._build = build
        self._seed = seed
        self._inner = build(seed)
        self._fixed: dict[str, Any] = {}

    @property
    def inner(self) -> optuna.samplers.BaseSampler:
        return self._inner

    @contextmanager
    def fixing(self, params: dict[str, Any]) -> Iterator[None]:
        """Trials created inside hold ``params`` fixed; the sampler draws only the rest (a pack's
        later trials take its first trial's fix type and get scales of their own)."""
        self._fixed = dict(params)
        try:
            yield
        finally:
            self._fixed = {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        inner = self._build(None if self._seed is None else trial_seed(self._seed, trial.number))
        if self._fixed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                inner = optuna.samplers.PartialFixedSampler(self._fixed, inner)
        self._inner = inner
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: list[float] | None
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
