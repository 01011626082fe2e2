"""Several trials of one fix type trained as one pack (``training.pack`` >= 2 x the seeds).

Optuna's ``optimize`` runs one trial per objective call, so a pack of trials is asked for and told
by hand (ask/tell), with the same rules as the one-trial path in runner.py:

- The first trial is asked as usual (a waiting trial first: a retry or a default arm). The others
  are drawn with its fix type held fixed (PerTrialSeedSampler.fixing), so the sampler chooses only
  their scales; a fix without a scale packs no second trial (it would be a duplicate), and no trial
  is drawn past the study's count or ahead of a waiting trial of another fix.
- Each trial is checked against the trials numbered before it (distinct.skip_reason) before it
  trains; a skipped one is told PRUNED with the ``skipped`` attribute, as in the one-trial path.
- Every trial asked beats Optuna's heartbeat while it is held, so a worker killed mid-pack leaves
  trials that another worker fails and retries; a retry adopts its killed attempt's complete runs.
- Trials stay independent inside the pack: one that diverges (non-finite loss) or is pruned is
  told FAIL or PRUNED at once and its runs finished, while the others train on; their numbers are
  what they would be alone (arms share no trained state).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ablate import faults
from ablate.engine.fixes import parse_fix
from ablate.store import claims
from ablate.study.distinct import HOLDING, SKIPPED_ATTR, counted, params_of, skip_reason
from ablate.study.runner import AllArmsDropped, ClaimedRun, RunFailed, StudyRun, pack_label, report_and_ask_prune
from ablate.study.space import FIX_PARAM, suggest_arm

OnTrial = Callable[[optuna.Study, FrozenTrial], None]


@dataclass(eq=False)
class _Member:
    """One trial of the pack: what it runs, its complete run rows by seed, and whether it was told."""

    trial: optuna.Trial
    fix: str
    scale: float | None
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    told: bool = False


class _TrialHeartbeats:
    """Optuna's trial heartbeat (``optimize`` beats only for its own trial) for every trial held."""

    def __init__(self, study: optuna.Study) -> None:
        self._storage = study._storage  # noqa: SLF001 - Optuna exposes the heartbeat API only there
        beats = getattr(self._storage, "get_heartbeat_interval", None)
        self._interval = beats() if beats is not None else None
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ablate-trial-heartbeat", daemon=True)

    def add(self, trial: optuna.Trial) -> None:
        if self._interval is None:
            return
        self._storage.record_heartbeat(trial._trial_id)  # noqa: SLF001 - at once: stale from the start otherwise
        with self._lock:
            self._ids.add(trial._trial_id)  # noqa: SLF001

    def remove(self, trial: optuna.Trial) -> None:
        with self._lock:
            self._ids.discard(trial._trial_id)  # noqa: SLF001

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                ids = list(self._ids)
            for trial_id in ids:
                try:
                    self._storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - a missed beat is made up by the next one
                    continue

    def __enter__(self) -> _TrialHeartbeats:
        if self._interval is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def run_trial_pack(study: optuna.Study, runner: StudyRun, on_trial: OnTrial) -> None:
    """Ask up to ``spec.trials_per_pack`` trials that pack together, train them, tell Optuna each."""
    with _TrialHeartbeats(study) as beats:
        members = _gather(study, runner, beats, on_trial)
        groups: dict[str, list[_Member]] = {}
        for m in members:  # a waiting trial of another fix taken in a race packs on its own
            groups.setdefault(m.fix, []).append(m)
        try:
            for group in groups.values():
                _run_group(study, runner, group, beats, on_trial)
        except BaseException:
            for m in members:
                if not m.told:
                    _tell(study, m, beats, on_trial, TrialState.FAIL)
            raise


def _ask(study: optuna.Study, fixed: dict[str, Any] | None) -> optuna.Trial:
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for optimize(); this module beats for its trials.
        warnings.simplefilter("ignore", UserWarning)
        if not fixed:
            return study.ask()
        with study.sampler.fixing(fixed):  # type: ignore[attr-defined] - make_sampler's sampler
            return study.ask()


def _gather(study: optuna.Study, runner: StudyRun, beats: _TrialHeartbeats, on_trial: OnTrial) -> list[_Member]:
    members: list[_Member] = []
    while len(members) < runner.spec.trials_per_pack:
        trials = study.get_trials(deepcopy=False)
        if members:
            if parse_fix(members[0].fix).scale is None:
                break
            # A waiting trial (a retry, a default arm) is asked first: it joins if it has this fix
            # type (it holds its place in the count already); one of another type ends the pack.
            waiting = sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number)
            if waiting and params_of(waiting[0]).get(FIX_PARAM) != members[0].fix:
                break
            if not waiting and len(counted(trials, HOLDING)) >= runner.total:
                break
        trial = _ask(study, {FIX_PARAM: members[0].fix} if members else None)
        beats.add(trial)
        fix, scale = suggest_arm(trial, runner.spec)
        why = skip_reason(study.get_trials(deepcopy=False), trial.number, trial.params, runner.total)
        if why is not None:
            trial.set_user_attr(SKIPPED_ATTR, why)
            _tell(study, _Member(trial, fix, scale), beats, on_trial, TrialState.PRUNED)
            break  # with what was gathered (nothing, when the first draw was skipped)
        members.append(_Member(trial, fix, scale))
    return members


def _tell(
    study: optuna.Study,
    member: _Member,
    beats: _TrialHeartbeats,
    on_trial: OnTrial,
    state: TrialState,
    values: float | list[float] | None = None,
) -> None:
    member.told = True
    beats.remove(member.trial)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a NaN value: Optuna fails the trial and says so
        frozen = study.tell(member.trial, values, state=None if state == TrialState.COMPLETE else state)
    on_trial(study, frozen)


def _run_group(
    study: optuna.Study, runner: StudyRun, group: list[_Member], beats: _TrialHeartbeats, on_trial: OnTrial
) -> None:
    spec = runner.spec.study
    try:
        for seed in spec.seeds:
            runner.reference(seed)
        frozen = {t.number: t for t in study.get_trials(deepcopy=False)}  # one read for the group
        for m in group:
            m.rows = runner.adopted_rows(frozen[m.trial.number], m.fix, m.scale)
        runs: list[ClaimedRun] = []
        owner: list[_Member] = []
        for m in group:
            for seed in spec.seeds:
                if seed not in m.rows:
                    run_id = runner.claim("trial", m.trial.number, m.fix, m.scale, seed)
                    runs.append(ClaimedRun("trial", m.trial.number, m.fix, m.scale, seed, run_id))
                    owner.append(m)
        if runs:
            _train_pack(study, runner, runs, owner, beats, on_trial)
    except RunFailed:
        # The whole pack failed (its training raised): every trial in it fails, as optimize() would
        # fail one; the study goes on.
        for m in group:
            if not m.told:
                _tell(study, m, beats, on_trial, TrialState.FAIL)
        return
    for m in group:
        if not m.told:
            values = runner.finish_trial(m.trial, [m.rows[seed] for seed in spec.seeds])
            faults.point("finish")  # every run complete, Optuna not yet told
            _tell(study, m, beats, on_trial, TrialState.COMPLETE, values)


def _train_pack(
    study: optuna.Study,
    runner: StudyRun,
    runs: list[ClaimedRun],
    owner: list[_Member],
    beats: _TrialHeartbeats,
    on_trial: OnTrial,
) -> None:
    """Train the claimed runs as one pack; trials that diverge or are pruned drop out on the way."""
    watch = runner.spec.study.objectives[0] if runner.spec.study.pruning else None
    arms_of = {m: [i for i, o in enumerate(owner) if o is m] for m in owner}
    dropped: set[int] = set()
    losses: list[list[float]] = [[] for _ in runs]

    def drop(m: _Member, state: TrialState, status: str, error: str | None) -> None:
        arms = arms_of[m]
        dropped.update(arms)
        for i in arms:
            claims.finish_run(runner.engine, runs[i].run_id, status, None, error=error)
        runner.reporter.run_end(pack_label([runs[i] for i in arms]), None, status, error)
        _tell(study, m, beats, on_trial, state)
        if len(dropped) == len(runs):
            raise AllArmsDropped()

    def on_block(arm: int, block: list[tuple[int, dict[str, float]]]) -> None:
        losses[arm].extend(v["loss"] for _, v in block)
        m = owner[arm]
        if watch is None or arm != arms_of[m][-1]:
            return  # a trial's step is reported once, after its last arm's block
        if report_and_ask_prune(m.trial, watch, [losses[i] for i in arms_of[m]], block[-1][0]):
            drop(m, TrialState.PRUNED, "pruned", None)

    def on_nonfinite(arm: int, step: int) -> None:
        drop(owner[arm], TrialState.FAIL, "failed", f"NonFiniteLossError: non-finite loss at step {step}")

    try:
        rows = runner.run_pack(runs, on_block, on_nonfinite if len(runs) > 1 else None, dropped)
    except AllArmsDropped:
        return
    for run, m, row in zip(runs, owner, rows):
        if row is not None:
            m.rows[run.seed] = row
