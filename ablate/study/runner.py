"""Create or resume a study, run the baseline and the trials, record every seed's run.

Optuna owns the search (its own tables, untouched); the ``ablate_*`` tables hold what each run
measured. Running the same spec again resumes: finished trials and baselines are not repeated.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from ablate.model.fixes import NO_BRANCH, parse_fix
from ablate.spec import OBJECTIVE_DIRECTIONS, StudySpec, spec_hash
from ablate.store import writer
from ablate.store.engine import open_storage
from ablate.study.space import arm_of, default_arm_params, suggest_arm
from ablate.train.arm import ArmSetup, train_arm
from ablate.train.device import resolve_device
from ablate.train.result import TrainResult

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_S = 20  # a killed worker's trial is failed and retried after ~2 heartbeats
BASELINE_LEASE_S = 6 * 3600  # a baseline left 'running' by a killed worker is retried after this


class StudyReporter:
    """Progress hooks; the CLI draws them with rich. Every method is optional."""

    def study_start(self, name: str, done: int, total: int) -> None: ...

    def run_start(self, label: str, steps: int) -> None: ...

    def step(self, step: int) -> None: ...

    def run_end(self, label: str, result: TrainResult | None, status: str, error: str | None = None) -> None: ...

    def trial_end(self, trial: optuna.trial.FrozenTrial, best: list[optuna.trial.FrozenTrial]) -> None: ...


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


class RunFailed(RuntimeError):
    """A seed's training run failed; the trial is marked FAIL and the study goes on."""


def _metric(result: TrainResult, metric: str, baseline: dict[int, float]) -> float:
    if metric == "loss_slope_rel":
        base = baseline.get(result.seed, math.nan)
        return result.loss_slope - base
    return float(getattr(result, metric))


class _StudyRun:
    def __init__(self, spec: StudySpec, engine: Any, study_id: int, reporter: StudyReporter) -> None:
        self.spec = spec
        self.engine = engine
        self.study_id = study_id
        self.reporter = reporter

    def run_arm(
        self,
        role: str,
        trial_number: int | None,
        fix: str,
        scale: float | None,
        seed: int,
        on_block: Callable[[list[tuple[int, dict[str, float]]]], None] | None = None,
    ) -> TrainResult:
        """One seed of one arm, streamed into the database; the run row ends complete/failed/pruned."""
        cfg = self.spec.arm(fix, scale, seed)
        choice, device = parse_fix(fix, scale), resolve_device(cfg.device)
        # Baselines are not Optuna trials, so a lease keeps two workers off the same one.
        lease = BASELINE_LEASE_S if role == "baseline" else None
        run_id = writer.start_run(
            self.engine, self.study_id, role, trial_number, seed, choice.name, choice.scale, str(device), lease
        )
        label = f"{'baseline' if role == 'baseline' else f'trial {trial_number}'} {choice.name}"
        label += f" s={choice.scale:.3g}" if choice.scale is not None else ""
        label += f" seed {seed}"
        self.reporter.run_start(label, cfg.run.steps)
        buffer = writer.MetricBuffer(self.engine, run_id, flush_every=10**9)

        def flush(rows: list[tuple[int, dict[str, float]]]) -> None:
            for step, values in rows:
                buffer.add_step(step, values)
            buffer.flush()  # one transaction per engine flush
            if on_block is not None:
                on_block(rows)

        try:
            setup = ArmSetup(cfg)
            result = train_arm(
                cfg,
                on_flush=flush,
                on_probe=lambda p: writer.write_probe(self.engine, run_id, p),
                on_step=self.reporter.step,
                setup=setup,
            )
        except optuna.TrialPruned:
            writer.finish_run(self.engine, run_id, "pruned", None)
            self.reporter.run_end(label, None, "pruned")
            raise
        except KeyboardInterrupt:
            writer.finish_run(self.engine, run_id, "failed", None, error="interrupted")
            self.reporter.run_end(label, None, "interrupted")
            raise
        except Exception as exc:
            writer.finish_run(self.engine, run_id, "failed", None, error=f"{type(exc).__name__}: {exc}")
            self.reporter.run_end(label, None, "failed", f"{type(exc).__name__}: {exc}")
            raise RunFailed(f"{label}: {exc}") from exc
        writer.finish_run(self.engine, run_id, "complete", result.summary())
        self.reporter.run_end(label, result, "complete")
        return result

    def run_baselines(self) -> None:
        done = writer.baseline_slopes(self.engine, self.study_id)
        for seed in self.spec.study.seeds:
            if seed not in done:
                try:
                    self.run_arm("baseline", None, NO_BRANCH, None, seed)
                except writer.RunBusy:
                    continue  # another worker is on it; slopes relative to it appear once it lands

    def objective(self, trial: optuna.Trial) -> float | list[float]:
        fix, scale = suggest_arm(trial, self.spec)
        spec = self.spec.study
        baseline = writer.baseline_slopes(self.engine, self.study_id)
        results = []
        for i, seed in enumerate(spec.seeds):
            offset = i * self.spec.training.steps

            def report(rows: list[tuple[int, dict[str, float]]], offset: int = offset) -> None:
                if not spec.pruning:
                    return
                losses = [v["loss"] for _, v in rows if math.isfinite(v["loss"])]
                if losses:
                    trial.report(sum(losses) / len(losses), offset + rows[-1][0])
                    if trial.should_prune():
                        raise optuna.TrialPruned()

            results.append(self.run_arm("trial", trial.number, fix, scale, seed, on_block=report))
        values = [sum(_metric(r, m, baseline) for r in results) / len(results) for m in spec.objectives]
        trial.set_user_attr(
            "per_seed", {str(r.seed): {m: _metric(r, m, baseline) for m in spec.objectives} for r in results}
        )
        if spec.constraint_metric is not None:
            c = sum(_metric(r, spec.constraint_metric, baseline) for r in results) / len(results)
            sign = 1.0 if OBJECTIVE_DIRECTIONS[spec.constraint_metric] == "maximize" else -1.0
            # Optuna: a constraint value <= 0 is satisfied; a NaN metric counts as violated.
            value = sign * (spec.constraint_min - c) if math.isfinite(c) else math.inf
            trial.set_user_attr("constraint", [value])
            if _NATIVE_CONSTRAINTS:
                trial.set_constraint(spec.constraint_metric, value)
        return values[0] if len(values) == 1 else values


# Optuna >= 5 reads constraints set on the trial; older releases need a sampler constraints_func.
_NATIVE_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")


def _constraints(frozen: optuna.trial.FrozenTrial) -> list[float]:
    return frozen.user_attrs.get("constraint", [math.inf])


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    s = spec.study
    cons = _constraints if s.constraint_metric is not None and not _NATIVE_CONSTRAINTS else None
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.sampler_seed)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.sampler_seed, constraints_func=cons)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=s.sampler_seed,
            multivariate=True,
            group=True,  # the scale parameters exist only under their fix
            constraints_func=cons,
            n_startup_trials=max(len(spec.search.fixes), 4),
        )


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
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs={"connect_args": {"timeout": 30}} if sqlite else None,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=3 * HEARTBEAT_S,
            **retry,
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


def _enqueue_defaults(study: optuna.Study, spec: StudySpec, limit: int) -> None:
    """Every fix once at its default scale, unless a trial already ran (or waits to run) it.

    At most ``limit`` are enqueued (the trials this call will run), so no trial is left waiting.
    """
    taken = {
        tuple(sorted(t.params.items()))
        for t in study.get_trials(deepcopy=False)
        if t.state in (*FINISHED, TrialState.WAITING, TrialState.RUNNING)
    }
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


def preflight(spec: StudySpec) -> None:
    """Checks that need this machine (device, weights file) before anything is written."""
    from ablate.errors import AblateInputError
    from ablate.model.backbone import backbone_spec, resolve_pretrained

    for spec_field, check in (
        ("training.device", lambda: resolve_device(spec.training.device)),
        ("model.pretrained", lambda: resolve_pretrained(backbone_spec(spec.model.backbone), spec.model.pretrained)),
    ):
        try:
            check()
        except AblateInputError as exc:
            raise AblateInputError(spec_field, exc.message) from None


def run_study(
    spec: StudySpec,
    spec_text: str,
    storage: str | None = None,
    n_trials: int | None = None,
    name: str | None = None,
    reporter: StudyReporter | None = None,
) -> StudyOutcome:
    """Run (or resume) the study to ``n_trials`` finished trials; return what it holds now."""
    reporter = reporter or StudyReporter()
    preflight(spec)
    study_name = name or spec.name
    total = n_trials if n_trials is not None else spec.study.trials
    engine = open_storage(storage)
    url = engine.url.render_as_string(hide_password=False)
    try:
        study_id = writer.register_study(
            engine,
            study_name,
            study_name,
            spec_text,
            spec_hash(spec_text),
            [{"metric": m, "direction": OBJECTIVE_DIRECTIONS[m]} for m in spec.study.objectives],
            writer.runtime_meta(),
        )
    except ValueError as exc:
        raise StudySpecConflict(str(exc)) from None
    rdb = _rdb_storage(url)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=len(spec.search.fixes), n_warmup_steps=spec.training.steps // 4)
        if spec.study.pruning
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=rdb,
        study_name=study_name,
        directions=spec.study.directions,
        sampler=make_sampler(spec),
        pruner=pruner,
        load_if_exists=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(spec.study.objectives)
    study.set_user_attr("ablate_spec_hash", spec_hash(spec_text))
    runner = _StudyRun(spec, engine, study_id, reporter)
    writer.fail_stale_runs(engine, study_id, {t.number for t in study.get_trials(states=(TrialState.RUNNING,))})

    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    reporter.study_start(study_name, done, total)
    runner.run_baselines()
    remaining = max(0, total - done)
    _enqueue_defaults(study, spec, remaining)
    failed_before = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))

    def on_trial(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reporter.trial_end(trial, _best(st))

    if remaining:
        study.optimize(
            runner.objective,
            n_trials=remaining,
            catch=(RunFailed,),
            # Other workers on the same study count too: stop when the study as a whole is done.
            callbacks=[optuna.study.MaxTrialsCallback(total, states=FINISHED), on_trial],
            gc_after_trial=False,
        )
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) - failed_before
    best = [
        {"trial": t.number, **dict(zip(("fix", "scale"), arm_of(t.params))), "values": t.values} for t in _best(study)
    ]
    return StudyOutcome(
        name=study_name,
        storage=url,
        n_trials=len(study.get_trials(deepcopy=False, states=FINISHED)),
        ran=remaining,
        failed=failed,
        best=best,
    )
