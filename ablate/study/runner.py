"""Create or resume a study, run the baseline and the trials, record every seed's run.

Optuna owns the search (its own tables, untouched); the ``ablate_*`` tables hold what each run
measured. Running the same spec again resumes: finished trials and baselines are not repeated.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from ablate import arms, faults
from ablate.allocator import keep_freed_memory
from ablate.engine.compare import compare_to_baseline
from ablate.engine.device import describe_hardware, resolve_device
from ablate.engine.fixes import NO_BRANCH, parse_fix
from ablate.engine.result import TrainResult
from ablate.engine.subject import ALL_GROUP
from ablate.spec import OBJECTIVE_DIRECTIONS, StudySpec, spec_hash
from ablate.store import claims, metric_writes, provenance
from ablate.store.engine import OPTUNA_PG_POOL_SIZE, PG_POOL_TIMEOUT_S, open_storage, retry_schema_race
from ablate.store.schema import HARDWARE_ATTR, REFERENCE_KEYS, StudyModel
from ablate.study.distinct import FINISHED, HOLDING, PerTrialSeedSampler, counted, is_skipped
from ablate.study.packs import AllArmsDropped, ClaimedRun, RunFailed, pack_label
from ablate.study.space import arm_of, default_arm_params
from ablate.study.stage1 import StudyStage1
from ablate.study.trial_pack import NATIVE_CONSTRAINTS, run_trials
from ablate.threads import LocalWorkers, apply_threads, choose_threads
from ablate.timers import span


def _heartbeat_s() -> float:
    raw = os.environ.get("ABLATE_HEARTBEAT_S", "20")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 1 <= value <= 3600:
        from ablate.errors import AblateInputError

        raise AblateInputError("ABLATE_HEARTBEAT_S", f"must be a number of seconds in [1, 3600], got {raw!r}")
    return value


# Every worker beats for its Optuna trial (Optuna's heartbeat) and its runs (RunHeartbeat); a worker
# killed outright is detected once its beat is 2 intervals old, and its work is failed and retried.
HEARTBEAT_S = _heartbeat_s()
GRACE_S = 2 * HEARTBEAT_S
BASELINE_LEASE_S = GRACE_S  # a reference run whose worker stopped beating this long ago is taken over
REFERENCE_POLL_S = 5.0  # how often a trial waiting for another worker's baseline looks again


class StudyReporter:
    """Progress hooks; the CLI draws them with rich. Every method is optional."""

    def study_start(self, name: str, done: int, total: int) -> None: ...

    def run_start(self, label: str, steps: int) -> None: ...

    def step(self, step: int) -> None: ...

    def run_end(self, label: str, result: TrainResult | None, status: str, error: str | None = None) -> None: ...

    def trial_end(self, trial: optuna.trial.FrozenTrial, best: list[optuna.trial.FrozenTrial]) -> None: ...

    def waiting(self, what: str) -> None: ...


@dataclass
class StudyOutcome:
    name: str
    storage: str
    n_trials: int  # finished (complete or pruned) trials in the study now
    ran: int  # trials this call ran
    failed: int  # trials this call saw fail
    best: list[dict[str, Any]] = field(default_factory=list)


class StudySpecConflict(ValueError):
    """The study name is taken by a study with a different spec."""


class StudyRun:
    def __init__(
        self,
        spec: StudySpec,
        engine: Any,
        study_id: int,
        reporter: StudyReporter,
        threads: Callable[[], tuple[int, str]] | None = None,
        total: int | None = None,
    ) -> None:
        self.spec = spec
        self.total = total if total is not None else spec.study.trials  # the study's trial count
        self.engine = engine
        self.study_id = study_id
        self.reporter = reporter
        self.threads = threads  # re-read before every run: a worker started later shrinks our share
        self._refs: dict[int, dict[str, Any]] = {}  # seed -> the baseline run the comparison needs
        # The first arm built: every later run shares its frozen backbone and data set (and the
        # data set's drawn samples) instead of building them again. Same spec, so the same backbone.
        self._like: Any = None
        import torch

        self.worker = provenance.worker_record(torch.cuda.device_count())  # stored on every run it claims
        self.stage1 = StudyStage1(self)  # the per-seed state each seed's arms share (AA-CLIP Stage 1)

    def run_arm(
        self,
        role: str,
        trial_number: int | None,
        fix: str,
        scale: float | None,
        seed: int,
        on_block: Callable[[int, list[tuple[int, dict[str, float]]]], None] | None = None,
    ) -> dict[str, Any]:
        """One seed of one arm, streamed into the database; returns the run row it stored."""
        run_id = self.claim(role, trial_number, fix, scale, seed)
        return self.run_claimed(role, trial_number, fix, scale, [(seed, run_id)], on_block)[0]

    def claim(self, role: str, trial_number: int | None, fix: str, scale: float | None, seed: int) -> int:
        """Mark a seed's run 'running' (RunBusy / RunComplete when another worker has it)."""
        choice = parse_fix(fix, scale)
        device = resolve_device(self.spec.training.device)
        # Reference runs are not Optuna trials, so a lease keeps two workers off the same one.
        lease = BASELINE_LEASE_S if role in REFERENCE_KEYS else None
        return claims.start_run(
            self.engine, self.study_id, role, trial_number, seed, choice.name, choice.scale, str(device), lease,
            self.worker,
        )  # fmt: skip

    def run_claimed(
        self,
        role: str,
        trial_number: int | None,
        fix: str,
        scale: float | None,
        claimed: list[tuple[int, int]],
        on_block: Callable[[int, list[tuple[int, dict[str, float]]]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Train the claimed (seed, run id) pairs of one arm, side by side when there are several.

        Every run row ends complete (with the comparison against its seed's baseline), failed or
        pruned; returns the complete rows in ``claimed`` order.
        """
        runs = [ClaimedRun(role, trial_number, fix, scale, seed, run_id) for seed, run_id in claimed]
        return self.run_pack(runs, on_block)  # type: ignore[return-value] - nothing is dropped here

    def run_pack(
        self,
        runs: list[ClaimedRun],
        on_block: Callable[[int, list[tuple[int, dict[str, float]]]], None] | None = None,
        on_nonfinite: Callable[[int, int], None] | None = None,
        dropped: set[int] | None = None,
    ) -> list[dict[str, Any] | None]:
        """Train claimed runs of one fix type side by side (one run alone when there is one).

        ``dropped`` holds the indices of runs the caller has already finished (a pruned or diverged
        trial of a several-trial pack): they still ride along in the pack, but nothing more of them is
        written, and their entry in the returned list is None. ``on_nonfinite(arm, step)``: see
        :func:`ablate.engine.loop.train_arms`; without it a non-finite loss fails every run.
        A callback may raise AllArmsDropped once every run is dropped: the pack stops, nothing else
        is written.
        """
        dropped = dropped if dropped is not None else set()
        cfgs = [self.spec.arm(r.fix, r.scale, r.seed, frozen=r.role == "control") for r in runs]
        label = pack_label(runs)
        if self.threads is not None:
            n, _why = self.threads()
            apply_threads(n)
            label += f" ({n} thread{'s' if n > 1 else ''})"
        self.reporter.run_start(label, cfgs[0].run.steps)
        buffers = [metric_writes.MetricBuffer(self.engine, r.run_id, flush_every=10**9) for r in runs]

        def flush(arm: int, rows: list[tuple[int, dict[str, float]]]) -> None:
            if arm in dropped:
                return
            for step, values in rows:
                buffers[arm].add_step(step, values)
            faults.point("flush")  # rows buffered, not yet committed
            buffers[arm].flush()  # one transaction per engine flush
            if on_block is not None:
                on_block(arm, rows)

        def probe(arm: int, p: Any) -> None:
            if arm not in dropped:
                metric_writes.write_probe(self.engine, runs[arm].run_id, p)

        def finish_live(status: str, error: str | None) -> None:
            for i, r in enumerate(runs):
                if i not in dropped:
                    claims.finish_run(self.engine, r.run_id, status, None, error=error)

        try:
            with claims.RunHeartbeat(self.engine, [r.run_id for r in runs], HEARTBEAT_S):
                results = self._train(cfgs, probe, flush, on_nonfinite)
            rows = [None if i in dropped else self._row(r.role, res) for i, (r, res) in enumerate(zip(runs, results))]
        except AllArmsDropped:
            raise
        except KeyboardInterrupt:
            finish_live("failed", "interrupted")
            self.reporter.run_end(label, None, "interrupted")
            raise
        except Exception as exc:
            finish_live("failed", f"{type(exc).__name__}: {exc}")
            self.reporter.run_end(label, None, "failed", f"{type(exc).__name__}: {exc}")
            raise RunFailed(f"{label}: {exc}") from exc
        for r, row in zip(runs, rows):
            if row is not None:
                claims.finish_run(self.engine, r.run_id, "complete", row)
        for r, result, row in zip(runs, results, rows):
            if row is not None:  # each line names its own run (a pack may hold several trials)
                self.reporter.run_end(pack_label([r]), result, "complete")
        return rows

    def _train(
        self,
        cfgs: list,
        on_probe: Callable[[int, Any], None],
        flush: Callable,
        on_nonfinite: Callable[[int, int], None] | None,
    ) -> list[TrainResult]:
        """One arm alone, or several packed; the first arm built lends its frozen parts and data set
        to every later one, and each arm gets its seed's Stage 1 (None when the subject has none).
        Alone, a non-finite loss raises: the run (and its one trial) fails."""
        stage1 = [self.stage1.weights(c.seed) for c in cfgs]
        with span("build"):
            if len(cfgs) == 1:
                built = arms.build(cfgs[0], like=self._like, stage1=stage1[0])
            else:
                built = arms.build_pack(cfgs, like=self._like, stage1=stage1)
        self._like = self._like or built
        with span("train_steps"):  # what the probes, gain, evaluation and writes inside it leave
            return arms.train_pack(
                cfgs,
                on_flush=flush,
                on_probe=on_probe,
                on_step=self.reporter.step,
                built=built,
                on_nonfinite=on_nonfinite if len(cfgs) > 1 else None,
            )

    def _packs(self, seeds: list[int]) -> list[list[int]]:
        size = self.spec.training.pack
        return [seeds[i : i + size] for i in range(0, len(seeds), size)]

    def _row(self, role: str, result: TrainResult) -> dict[str, Any]:
        """The run's summary plus its comparison with the same seed's no-branch baseline run."""
        row = result.summary()
        row["adapter_gain_batches"] = result.adapter_gain_batches
        if role == "baseline":
            ref = {"metrics": result.metrics, "gain_batches": result.adapter_gain_batches}
            ref["loss_slope"] = result.loss_slope
        else:
            ref = self.reference(result.seed)
        row.update(
            compare_to_baseline(
                result.metrics,
                ref["metrics"],
                result.adapter_gain_batches,
                ref["gain_batches"],
                (*self.spec.groups, ALL_GROUP),
                result.group,
            )
        )
        row["loss_slope_rel"] = result.loss_slope - ref["loss_slope"]
        if role == "baseline":
            self._refs[result.seed] = ref
        return row

    def reference(self, seed: int) -> dict[str, Any]:
        """The seed's complete baseline run: cached, read from the database, run here, or waited for
        while another worker runs it (a trial never goes on without its baseline)."""
        while seed not in self._refs:
            ref = claims.reference_run(self.engine, self.study_id, seed)
            if ref is not None:
                self._refs[seed] = ref
                break
            try:
                self.run_arm("baseline", None, NO_BRANCH, None, seed)
            except claims.RunComplete:
                continue  # another worker finished it between our read and our claim: read it
            except claims.RunBusy:
                self.reporter.waiting(f"baseline seed {seed} (running in another worker)")
                with span("waiting"):
                    time.sleep(REFERENCE_POLL_S)
        return self._refs[seed]

    def run_references(self) -> None:
        """Every seed's Stage 1 (when the spec trains one), its baseline, then (if the spec asks) its
        frozen-adapter control.

        First pass: run each baseline no other worker holds (so two workers split them); second
        pass: wait for the ones another worker is running.
        """
        self.stage1.run_free(self.spec.study.seeds)
        free = [
            seed
            for seed in self.spec.study.seeds
            if seed not in self._refs and claims.reference_status(self.engine, self.study_id, seed) != "complete"
        ]
        self._run_free("baseline", free)
        for seed in self.spec.study.seeds:
            self.reference(seed)
        if not self.spec.study.frozen_control:
            return
        free = [
            seed
            for seed in self.spec.study.seeds
            if claims.reference_status(self.engine, self.study_id, seed, "control") != "complete"
        ]
        # Seeds another worker is on or has finished are skipped; trials do not need the control.
        self._run_free("control", free)

    def _run_free(self, role: str, seeds: list[int]) -> None:
        """Claim each seed's reference run no other worker holds, and run the claimed ones in packs."""
        for pack in self._packs(seeds):
            claimed = []
            for seed in pack:
                try:
                    claimed.append((seed, self.claim(role, None, NO_BRANCH, None, seed)))
                except (claims.RunBusy, claims.RunComplete):
                    continue
            if claimed:
                self.run_claimed(role, None, NO_BRANCH, None, claimed)

    def adopted_rows(self, trial: optuna.trial.FrozenTrial, fix: str, scale: float | None) -> dict[int, dict[str, Any]]:
        """seed -> run row for the seeds an earlier attempt of this trial already completed (its worker
        died before Optuna heard of it; Optuna's retry callback made this trial to retry it)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            earlier = optuna.storages.RetryFailedTrialCallback.retry_history(trial)
        if not earlier:
            return {}
        ids = set(claims.adopt_runs(self.engine, self.study_id, earlier, trial.number, fix, scale))
        if not ids:
            return {}
        from ablate.store.summaries import run_records

        with self.engine.connect() as conn:
            records = run_records(conn, self.study_id, "", roles=("trial",))
        return {int(r["seed"]): r for r in records if r["run_id"] in ids}


def _constraints(frozen: optuna.trial.FrozenTrial) -> list[float]:
    return frozen.user_attrs.get("constraint", [math.inf])


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The spec's sampler, reseeded per trial (see PerTrialSeedSampler) so no worker or resume
    re-draws another trial's point."""
    s = spec.study
    cons = _constraints if s.constraint_metric is not None and not NATIVE_CONSTRAINTS else None

    def build(seed: int | None) -> optuna.samplers.BaseSampler:
        if s.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=cons)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                multivariate=True,
                group=True,  # the scale parameters exist only under their fix
                constraints_func=cons,
                n_startup_trials=max(len(spec.search.fixes), 4),
            )

    return PerTrialSeedSampler(build, s.sampler_seed)


def _rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage on our URL, with heartbeats so a killed worker's trial is failed and retried."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna 4.9 renamed the stale-trial callback; older releases only know the old name.
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
            retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)}
        else:  # pragma: no cover - optuna < 4.9
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=2)}
        sqlite = url.startswith("sqlite")
        # PostgreSQL: one connection (the main thread and the trial heartbeat take turns), see
        # ablate/store/engine.py PG_POOL_SIZE for the budget per worker.
        pg = {"pool_size": OPTUNA_PG_POOL_SIZE, "max_overflow": 0, "pool_pre_ping": True}
        pg["pool_timeout"] = PG_POOL_TIMEOUT_S
        setup = {}
        if not sqlite:
            # Optuna's set-up (tables, alembic stamp, schema version check) holds one connection while
            # it opens another; a throwaway storage with two does it first, and the worker's own
            # storage skips it, so it never needs more than its one.
            two = {"pool_size": 2, "max_overflow": 0}
            retry_schema_race(lambda: optuna.storages.RDBStorage(url, engine_kwargs=two).engine.dispose())
            setup = {"skip_compatibility_check": True, "skip_table_creation": True}
        storage = retry_schema_race(
            lambda: optuna.storages.RDBStorage(
                url,
                engine_kwargs={"connect_args": {"timeout": 30}} if sqlite else pg,
                **setup,
                heartbeat_interval=max(1, round(HEARTBEAT_S)),
                grace_period=max(2, round(GRACE_S)),
                **retry,
            )
        )
    if sqlite:
        _serialize_sqlite_transactions(storage.engine)
    return storage


def _serialize_sqlite_transactions(engine: Any) -> None:
    """Make every Optuna transaction on SQLite start with BEGIN IMMEDIATE.

    Optuna claims a WAITING trial by reading its state and then writing RUNNING; PostgreSQL locks the
    row (SELECT ... FOR UPDATE), SQLite ignores that, so two workers could both claim one enqueued
    trial and run it twice. Taking the write lock at BEGIN serialises the read-then-write.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below emit BEGIN itself

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna set up the schema predate the hooks


def enqueue_defaults(study: optuna.Study, spec: StudySpec, limit: int) -> None:
    """Every fix once at its default scale, unless a trial already ran (or waits to run) it.

    At most ``limit`` are enqueued (the trials this call will run), so no trial is left waiting.
    """
    taken = {tuple(sorted(t.params.items())) for t in counted(study.get_trials(deepcopy=False), HOLDING)}
    waiting = {
        tuple(sorted(t.system_attrs.get("fixed_params", {}).items()))
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    }
    limit -= len(waiting)
    for fix in spec.search.fixes:
        params = default_arm_params(fix)
        key = tuple(sorted(params.items()))
        if limit > 0 and key not in taken and key not in waiting:
            study.enqueue_trial(params, user_attrs={"enqueued": "default scale"})
            limit -= 1


def _best(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return []
    return study.best_trials if len(study.directions) > 1 else [study.best_trial]


# The engine's and the AA-CLIP subject's field names (their ``validate``) as the spec spells them.
_SPEC_FIELDS = {
    "steps": "training.steps",
    "lr": "training.lr",
    "batches": "probe.batches",
    "gain_batches": "probe.gain_batches",
    "probe_every": "probe.every",
    "threshold": "probe.threshold",
    "batch_size": "data.batch_size",
    "train_size": "data.train_size",
    "anomaly_fraction": "data.anomaly_fraction",
}


def preflight(spec: StudySpec) -> None:
    """Checks that need the engine, the subject or this machine (cross-field limits, device, weights
    file, the data set on disk, the user's code), before anything is written."""
    from ablate.errors import AblateInputError

    first = spec.arm(spec.search.fixes[0], None, spec.study.seeds[0])
    try:
        arms.validate(first)
    except AblateInputError as exc:
        raise AblateInputError(_SPEC_FIELDS.get(exc.field, exc.field), exc.message) from None
    try:
        resolve_device(spec.training.device)
    except AblateInputError as exc:
        raise AblateInputError("training.device", exc.message) from None
    # Files and code last (data on disk opens every file once): the errors already name the spec key.
    kind = arms.kind_of(first)
    kind.check_data(first)
    if spec.training.pack > 1:
        kind.check_pack(first)


def open_study(spec: StudySpec, spec_text: str, storage: str | None, name: str) -> tuple[Any, int, optuna.Study, bool]:
    """Create the study (its ``ablate_studies`` row and its Optuna study, tables included) or find
    it: ``(engine, study id, Optuna study, created now)``. Idempotent, so every worker calls it and a
    launcher calls it once before its workers start; a name taken by another spec raises
    StudySpecConflict."""
    engine = open_storage(storage)
    url = engine.url.render_as_string(hide_password=False)
    with Session(engine) as session:
        created = StudyModel.find_by_name(name, session) is None
    try:
        study_id = provenance.register_study(
            engine,
            name,
            name,
            spec_text,
            spec_hash(spec_text),
            [{"metric": m, "direction": OBJECTIVE_DIRECTIONS[m]} for m in spec.study.objectives],
            provenance.runtime_meta(),
        )
    except ValueError as exc:
        raise StudySpecConflict(str(exc)) from None
    engine.dispose()  # its idle connections, while Optuna's set-up takes two (engine.py PG_POOL_SIZE)
    rdb = _rdb_storage(url)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=len(spec.search.fixes), n_warmup_steps=spec.training.steps // 4)
        if spec.study.pruning
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=rdb,
        study_name=name,
        directions=spec.study.directions,
        sampler=make_sampler(spec),
        pruner=pruner,
        load_if_exists=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(spec.study.objectives)
    study.set_user_attr("ablate_spec_hash", spec_hash(spec_text))
    return engine, study_id, study, created


def run_study(
    spec: StudySpec,
    spec_text: str,
    storage: str | None = None,
    n_trials: int | None = None,
    name: str | None = None,
    reporter: StudyReporter | None = None,
    threads: int | None = None,
) -> StudyOutcome:
    """Run (or resume) the study to ``n_trials`` finished trials; return what it holds now.

    ``threads``: torch threads for this worker; None = its share of the cores (ablate/threads.py).
    """
    reporter = reporter or StudyReporter()
    preflight(spec)
    keep_freed_memory()  # the same numbers, fewer page faults on CPU (ablate/allocator.py)
    study_name = name or spec.name
    total = n_trials if n_trials is not None else spec.study.trials
    with span("optuna"):
        engine, study_id, study, _created = open_study(spec, spec_text, storage, study_name)
        url = engine.url.render_as_string(hide_password=False)
        _record_hardware(study, spec)
    with LocalWorkers() as workers:
        runner = StudyRun(spec, engine, study_id, reporter, lambda: choose_threads(threads, workers.live()), total)
        outcome = _optimize(study, runner, spec, study_name, url, total)
    from ablate.store.engine import checkpoint_sqlite

    checkpoint_sqlite(engine)  # results.db alone now holds the study (docs/results-database.md)
    return outcome


def _record_hardware(study: optuna.Study, spec: StudySpec) -> None:
    """Note this machine's hardware on the study (read back by ``ablate report``), once per host.

    A study user attribute rather than a column, so databases written before it stay readable and
    Optuna's tools show it. Best effort: two workers of one host starting together may both try to
    insert the same key; the loser's note is the winner's, so its error is dropped.
    """
    info = describe_hardware(resolve_device(spec.training.device))
    key = HARDWARE_ATTR + str(info["host"])
    if study.user_attrs.get(key) == info:
        return
    try:
        study.set_user_attr(key, info)
    except Exception:  # noqa: BLE001 - an informational note must never stop a study
        pass


# A study whose parameter sets run out only draws duplicates; stop asking after this many in a row
# (a skip costs no training; a random sampler with 6 of 7 fixes scale-less skips 200 in a row with
# probability 4e-14).
MAX_SKIPS_IN_A_ROW = 200


def _optimize(
    study: optuna.Study, runner: StudyRun, spec: StudySpec, study_name: str, url: str, total: int
) -> StudyOutcome:
    """Run trials until the study holds ``total`` counted trials and none is RUNNING or WAITING.

    One pack of trials (one trial by default, ablate/study/trial_pack.py) per round, so each start
    sees every other worker's claims (see ablate/study/distinct.py). Between rounds, trials whose
    worker stopped beating are failed (Optuna's retry callback re-enqueues each as WAITING) and their
    runs marked failed; waiting trials are run (a retry or a default arm) even when the count is
    reached, so none is left WAITING; and a worker with nothing left to run waits for the trials
    other workers still run, so no arm goes unevaluated because its worker was killed.
    """
    engine, study_id, reporter = runner.engine, runner.study_id, runner.reporter
    with span("optuna"):
        claims.fail_stale_runs(engine, study_id, {t.number for t in study.get_trials(states=(TrialState.RUNNING,))})
        reporter.study_start(study_name, len(counted(study.get_trials(deepcopy=False))), total)
    runner.run_references()
    with span("optuna"):
        trials = study.get_trials(deepcopy=False)
        remaining = max(0, total - len(counted(trials, (*FINISHED, TrialState.RUNNING))))
        enqueue_defaults(study, spec, remaining)
    ran: list[optuna.trial.FrozenTrial] = []

    def on_trial(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        ran.append(trial)
        reporter.trial_end(trial, _best(st))

    while True:
        with span("optuna"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            claims.fail_stale_runs(engine, study_id, {t.number for t in running})
        waiting = any(t.state == TrialState.WAITING for t in trials)
        claimed = len(counted(trials, (*FINISHED, TrialState.RUNNING)))
        streak = next((i for i, t in enumerate(reversed(ran)) if not is_skipped(t)), len(ran))
        # As many failures as trials this call set out to run: stop instead of failing forever.
        failing = sum(t.state == TrialState.FAIL for t in ran) >= max(remaining, 1)
        if (claimed < total or waiting) and streak < MAX_SKIPS_IN_A_ROW and not failing:
            with span("optuna"):  # ask and tell; the trials' training inside has its own spans
                run_trials(study, runner, on_trial)
            continue
        if streak >= MAX_SKIPS_IN_A_ROW:
            reporter.waiting(f"no new parameter set in {streak} draws; stopping at {claimed} trials")
            break
        if not running or failing:
            break
        reporter.waiting(f"trial {', '.join(str(t.number) for t in running)} (another worker, or a stopped one)")
        with span("waiting"):
            time.sleep(min(HEARTBEAT_S / 2, 5.0))
    ran_now = len([t for t in ran if not is_skipped(t)])
    with span("optuna"):
        return study_outcome(study, study_name, url, ran_now, len([t for t in ran if t.state == TrialState.FAIL]))


def study_outcome(study: optuna.Study, name: str, url: str, ran: int, failed: int) -> StudyOutcome:
    """What the study holds now, with the trials this call (its workers, for a launcher) ran and saw fail."""
    best = [
        {"trial": t.number, **dict(zip(("fix", "scale"), arm_of(t.params))), "values": t.values} for t in _best(study)
    ]
    n_trials = len(counted(study.get_trials(deepcopy=False)))
    return StudyOutcome(name=name, storage=url, n_trials=n_trials, ran=ran, failed=failed, best=best)
