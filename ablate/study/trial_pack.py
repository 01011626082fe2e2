"""Trials asked, trained and told: the one path for one trial at a time (the default) and for
several trials of one fix type trained as one pack (``training.pack`` >= 2 x the seeds).

Optuna's ``optimize`` runs one trial per objective call, so trials are asked for and told by hand
(ask/tell); a pack of one trial is the degenerate case and follows the same rules:

- The first trial is asked as usual (a waiting trial first: a retry or a default arm). The others
  are drawn with its fix type held fixed (PerTrialSeedSampler.fixing), so the sampler chooses only
  their scales; a fix without a scale packs no second trial (it would be a duplicate), and no trial
  is drawn past the study's count or ahead of a waiting trial of another fix.
- Each trial is checked against the trials numbered before it (distinct.skip_reason) before it
  trains; a skipped one is told PRUNED with the ``skipped`` attribute and never trains.
- Every trial asked beats Optuna's heartbeat while it is held, so a worker killed mid-pack leaves
  trials that another worker fails and retries; a retry adopts its killed attempt's complete runs.
- The runs still to train are claimed and trained ``training.pack`` at a time (a trial whose seeds
  do not fit one pack trains them in several, one after the other; the pruner reads each later
  pack's steps after the earlier ones'). A trial that is pruned, or that diverges (non-finite loss)
  in a pack it shares with other trials, is told PRUNED or FAIL at once and its runs finished, while
  the others train on; their numbers are what they would be alone (arms share no trained state).
  A pack whose training fails outright fails every trial in it, and the study goes on.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ablate import faults
from ablate.engine.fixes import parse_fix
from ablate.engine.loop import RunConfig
from ablate.engine.metrics import edge_means, loss_slope
from ablate.objectives import seed_value, trial_value
from ablate.spec import OBJECTIVE_DIRECTIONS, StudySpec
from ablate.store import claims
from ablate.study.distinct import HOLDING, SKIPPED_ATTR, counted, params_of, skip_reason
from ablate.study.packs import AllArmsDropped, ClaimedRun, RunFailed, pack_label
from ablate.study.space import FIX_PARAM, suggest_arm

if TYPE_CHECKING:
    from ablate.study.runner import StudyRun

OnTrial = Callable[[optuna.Study, FrozenTrial], None]

# Optuna >= 5 reads constraints set on the trial; older releases need a sampler constraints_func.
NATIVE_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")


@dataclass(eq=False)
class _Member:
    """One trial of the pack: what it runs, its complete run rows by seed, and whether it was told."""

    trial: optuna.Trial
    fix: str = ""
    scale: float | None = None
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


def run_trials(study: optuna.Study, runner: StudyRun, on_trial: OnTrial) -> None:
    """Ask up to ``spec.trials_per_pack`` trials that pack together (one by default), train them,
    tell Optuna each; ``on_trial`` is called with every trial told. A trial still held when an
    exception (Ctrl-C included) leaves is told FAIL first, so Optuna never keeps it RUNNING."""
    members: list[_Member] = []
    with _TrialHeartbeats(study) as beats:
        try:
            _gather(study, runner, beats, on_trial, members)
            groups: dict[str, list[_Member]] = {}
            for m in members:  # a waiting trial of another fix taken in a race packs on its own
                if not m.told:
                    groups.setdefault(m.fix, []).append(m)
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


def _gather(
    study: optuna.Study, runner: StudyRun, beats: _TrialHeartbeats, on_trial: OnTrial, members: list[_Member]
) -> None:
    """Ask the pack's trials into ``members``; a skipped draw is told at once and ends the pack."""
    while len(members) < runner.spec.trials_per_pack:
        trials = study.get_trials(deepcopy=False)
        if members:
            if parse_fix(members[0].fix).scale is None:
                return
            # A waiting trial (a retry, a default arm) is asked first: it joins if it has this fix
            # type (it holds its place in the count already); one of another type ends the pack.
            waiting = sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number)
            if waiting and params_of(waiting[0]).get(FIX_PARAM) != members[0].fix:
                return
            if not waiting and len(counted(trials, HOLDING)) >= runner.total:
                return
        member = _Member(_ask(study, {FIX_PARAM: members[0].fix} if members else None))
        members.append(member)  # held from here on: told FAIL if anything below raises
        beats.add(member.trial)
        member.fix, member.scale = suggest_arm(member.trial, runner.spec)
        why = skip_reason(study.get_trials(deepcopy=False), member.trial.number, member.trial.params, runner.total)
        if why is not None:
            member.trial.set_user_attr(SKIPPED_ATTR, why)
            _tell(study, member, beats, on_trial, TrialState.PRUNED)
            return  # with what was gathered (nothing, when the first draw was skipped)


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
    """The trials of one fix type: every seed's baseline first, then their runs, then each is told."""
    spec = runner.spec.study
    try:
        for seed in spec.seeds:
            runner.reference(seed)
        frozen = {t.number: t for t in study.get_trials(deepcopy=False)}  # one read for the group
        for m in group:
            m.rows = runner.adopted_rows(frozen[m.trial.number], m.fix, m.scale)
        _train_group(study, runner, group, beats, on_trial)
    except RunFailed:
        # A pack's training raised (or a baseline failed): every trial still held fails, as
        # optimize() would fail one; the study goes on.
        for m in group:
            if not m.told:
                _tell(study, m, beats, on_trial, TrialState.FAIL)
        return
    for m in group:
        if not m.told:
            values = trial_values(m.trial, runner.spec, [m.rows[seed] for seed in spec.seeds])
            faults.point("finish")  # every run complete, Optuna not yet told
            _tell(study, m, beats, on_trial, TrialState.COMPLETE, values)


def _train_group(
    study: optuna.Study, runner: StudyRun, group: list[_Member], beats: _TrialHeartbeats, on_trial: OnTrial
) -> None:
    """Claim and train the runs the group's trials still lack, ``training.pack`` runs at a time."""
    todo = [(m, seed) for m in group for seed in runner.spec.study.seeds if seed not in m.rows]
    size, steps = runner.spec.training.pack, runner.spec.training.steps
    packs_done: dict[_Member, int] = {}  # packs each trial trained in so far: its pruner's step offset
    for start in range(0, len(todo), size):
        chunk = [(m, seed) for m, seed in todo[start : start + size] if not m.told]
        if not chunk:
            continue
        owner = [m for m, _ in chunk]
        ids = [runner.claim("trial", m.trial.number, m.fix, m.scale, seed) for m, seed in chunk]
        runs = [ClaimedRun("trial", m.trial.number, m.fix, m.scale, seed, i) for (m, seed), i in zip(chunk, ids)]
        offsets = {m: packs_done.get(m, 0) * steps for m in owner}
        _train_pack(study, runner, runs, owner, offsets, beats, on_trial)
        for m in dict.fromkeys(owner):
            packs_done[m] = packs_done.get(m, 0) + 1


def _train_pack(
    study: optuna.Study,
    runner: StudyRun,
    runs: list[ClaimedRun],
    owner: list[_Member],
    offsets: dict[_Member, int],
    beats: _TrialHeartbeats,
    on_trial: OnTrial,
) -> None:
    """Train the claimed runs as one pack; trials that are pruned or diverge drop out on the way."""
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
        block = [(step, v) for step, v in block if "loss" in v]  # the end's evaluation row has no loss
        if not block:
            return
        losses[arm].extend(v["loss"] for _, v in block)
        m = owner[arm]
        if watch is None or arm != arms_of[m][-1]:
            return  # a trial's step is reported once, after its last arm's block
        if report_and_ask_prune(m.trial, watch, [losses[i] for i in arms_of[m]], offsets[m] + block[-1][0]):
            drop(m, TrialState.PRUNED, "pruned", None)

    def on_nonfinite(arm: int, step: int) -> None:
        drop(owner[arm], TrialState.FAIL, "failed", f"NonFiniteLossError: non-finite loss at step {step}")

    # A pack of one trial's runs fails as a whole on a non-finite loss (RunFailed, naming the first
    # such step); only a trial sharing its pack drops out alone.
    several = len(arms_of) > 1
    try:
        rows = runner.run_pack(runs, on_block, on_nonfinite if several else None, dropped)
    except AllArmsDropped:
        return
    for run, m, row in zip(runs, owner, rows):
        if row is not None:
            m.rows[run.seed] = row


def _pruner_reading(metric: str, losses: list[float], warmup_frac: float) -> float:
    """The pruner's reading of ``metric`` on the losses so far (the same quantity the objective uses)."""
    if metric == "loss_slope":
        return loss_slope(losses, warmup_frac)
    return edge_means(losses)[1]  # loss_last


def report_and_ask_prune(trial: optuna.Trial, metric: str, arm_losses: list[list[float]], step: int) -> bool:
    """Report the mean reading over a trial's seeds (its arms' losses so far) at ``step``; True when
    Optuna's pruner says stop. A non-finite reading is not reported (the flush fails the run)."""
    readings = [_pruner_reading(metric, losses, RunConfig.warmup_frac) for losses in arm_losses]
    value = sum(readings) / len(readings)
    if not math.isfinite(value):
        return False
    trial.report(value, step)
    return trial.should_prune()


def trial_values(trial: optuna.Trial, study_spec: StudySpec, rows: list[dict[str, Any]]) -> float | list[float]:
    """The trial's objective values from its seeds' run rows (in spec seed order); notes the
    per-seed values and the constraint on the trial."""
    spec = study_spec.study
    values = [trial_value(m, rows) for m in spec.objectives]
    trial.set_user_attr(
        "per_seed", {str(seed): {m: seed_value(m, r) for m in spec.objectives} for seed, r in zip(spec.seeds, rows)}
    )
    if spec.constraint_metric is not None:
        c = trial_value(spec.constraint_metric, rows)
        sign = 1.0 if OBJECTIVE_DIRECTIONS[spec.constraint_metric] == "maximize" else -1.0
        # Optuna: a constraint value <= 0 is satisfied; a NaN metric counts as violated.
        value = sign * (spec.constraint_min - c) if math.isfinite(c) else math.inf
        trial.set_user_attr("constraint", [value])
        if NATIVE_CONSTRAINTS:
            trial.set_constraint(spec.constraint_metric, value)
    return values[0] if len(values) == 1 else values
