"""Build a study database of N trials for the read benchmark, through ablate's own writers.

    PYTHONPATH=. python bench/read_db.py sqlite:///big.db --trials 1000

Every row is made by the store's writers (``register_study`` and ``write_finished_runs``, which
builds each run's rows with the same helpers as ``start_run``/``MetricBuffer``/``write_probes``/
``finish_run``) from synthetic but plausible results: per run ``--steps`` steps of 5 metrics
(loss, grad_norm_layers/proj/branch, upd_layers; the learnable gates add ``gate/*``), ``--probes``
probe points with per-batch ratios, and a full summary. About 2% of trials fail (no summary) or are
pruned, and about 1% carry a non-finite value, so the reads meet every status and the NaN encoding.
The Optuna study with the same trials is added through Optuna's own API (``--no-optuna`` skips it;
``ablate query`` then takes each trial's status from its runs).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate.store import FinishedRun, open_storage, register_study, write_finished_runs  # noqa: E402
from ablate.store.schema import RUN_FLOAT_FIELDS, RUN_GROUP_COLUMNS  # noqa: E402

GROUPS = ("layers", "proj", "all")  # the AA-CLIP subject's groups and their union

FIXES = ("none", "fixed-scale", "learnable-alpha", "zero-init", "tanh-gate", "layerscale", "norm-match")
SCALED = {"fixed-scale", "learnable-alpha", "tanh-gate", "layerscale", "norm-match"}
GATES = {"learnable-alpha": "alpha", "tanh-gate": "tanh_alpha", "layerscale": "layerscale_mean"}
METRICS = ("loss", "grad_norm_layers", "grad_norm_proj", "grad_norm_branch", "upd_layers")
OBJECTIVES = ("adapter_gain", "dilution_train")
RUNS_PER_TRANSACTION = 100


def spec_text(name: str, seeds: list[int], steps: int) -> str:
    return (
        f'name = "{name}"\n[training]\nsteps = {steps}\n[probe]\nthreshold = 0.8\ngroup = "layers"\n'
        f"[search]\nfixes = {json.dumps(list(FIXES))}\n"
        f"[study]\nseeds = {json.dumps(seeds)}\nobjectives = {json.dumps(list(OBJECTIVES))}\n"
    )


def _summary(rng: random.Random, fix: str, role: str, steps: int, diverge: float) -> dict[str, Any]:
    """Plausible summary numbers: ratios near 0.9 for branch arms, 1 for the references."""
    ref = role != "trial"
    s: dict[str, Any] = {}
    names = [*RUN_FLOAT_FIELDS, *(t.format(g=g) for t in RUN_GROUP_COLUMNS.values() for g in GROUPS)]
    for name in names:
        if "ratio" in name:
            base = 1.0 if ref else math.exp(rng.gauss(-0.1, 0.08))
            s[name] = base * (0.95 if name.endswith("_lo") else 1.05 if name.endswith("_hi") else 1.0)
        elif name.startswith("adapter_gain"):
            s[name] = 0.0 if role == "control" else rng.gauss(0.05, 0.03)
        else:
            s[name] = rng.gauss(0.0, 1.0)
    s["loss_slope"] = rng.gauss(-4.5, 0.6)
    s.update(
        groups=list(GROUPS), steps=steps, group="layers", frozen="layers" if role == "control" else "", verdict="OK"
    )
    s["adapter_gain_batches"] = [rng.gauss(0.05, 0.03) for _ in range(6)]
    if not ref and rng.random() < diverge:  # a diverged run: the NaN/inf encoding is part of every read
        s["loss_slope"], s["train_grad_ratio_proj"] = float("nan"), float("inf")
    return s


def _probes(rng: random.Random, n: int, steps: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        p: dict[str, Any] = {"step": round(i * steps / max(1, n - 1)), "group": "layers", "verdict": "OK"}
        p["grad_ratio"] = r = math.exp(rng.gauss(-0.1, 0.1))
        p["grad_ratio_lo"], p["grad_ratio_hi"] = r * 0.9, r * 1.1
        for g in GROUPS:
            p[f"grad_ratio_{g}"], p[f"grad_ratio_{g}_lo"], p[f"grad_ratio_{g}_hi"] = r, r * 0.9, r * 1.1
            p[f"grad_share_{g}"] = rng.random()
            p[f"grad_norm_{g}_with"], p[f"grad_norm_{g}_without"] = rng.random(), rng.random()
        p.update(grad_norm_branch=rng.random(), grad_share=rng.random(), norm_inflation=1.0 + rng.random())
        p.update(loss_with=3.0, loss_without=3.0, feature_cosine=0.9, threshold=0.8)
        p["per_batch_ratios"] = {g: [r * math.exp(rng.gauss(0, 0.05)) for _ in range(8)] for g in GROUPS}
        out.append(p)
    return out


def _metrics(rng: random.Random, fix: str, steps: int) -> dict[str, list[float]]:
    loss0, decay = 3.2 + rng.random() * 0.2, 0.002 + rng.random() * 0.003
    m = {
        "loss": [loss0 * math.exp(-decay * t) + rng.gauss(0, 0.02) for t in range(steps)],
        **{name: [abs(rng.gauss(1.0, 0.2)) for _ in range(steps)] for name in METRICS[1:]},
    }
    if fix in GATES:
        m[f"gate/{GATES[fix]}"] = [0.1 + 0.001 * t for t in range(steps)]
    return m


def _run(
    rng: random.Random, role: str, trial: int | None, seed: int, fix: str, scale: float | None, a: argparse.Namespace
) -> FinishedRun:
    status = "complete"
    if role == "trial":
        u = rng.random()
        status = "failed" if u < a.fail else "pruned" if u < 2 * a.fail else "complete"
    steps = a.steps if status == "complete" else a.steps // 3
    return FinishedRun(
        role=role,
        trial_number=trial,
        seed=seed,
        fix=fix,
        scale=scale,
        device="cpu",
        status=status,
        summary=_summary(rng, fix, role, steps, a.fail) if status == "complete" else None,
        metrics=_metrics(rng, fix, steps),
        probes=_probes(rng, a.probes if status == "complete" else 1, steps),
        error="RuntimeError: synthetic failure" if status == "failed" else None,
    )


def trial_arms(n: int, rng: random.Random) -> Iterator[tuple[int, str, float | None]]:
    """Every fix at its default scale first (as a study enqueues them), then sampled scales."""
    defaults = {"fixed-scale": 0.1, "learnable-alpha": 0.1, "tanh-gate": 0.0, "layerscale": 1e-4, "norm-match": 0.1}
    for t in range(n):
        fix = FIXES[t % len(FIXES)]
        if fix not in SCALED:
            scale = None
        elif t < len(FIXES):
            scale = defaults[fix]
        elif fix == "tanh-gate":
            scale = rng.random()
        else:
            scale = 10 ** rng.uniform(-4, 0)
        yield t, fix, scale


def _trial_outcome(seeds: list[FinishedRun]) -> tuple[str, float | None, str, list[float] | None]:
    """(fix, scale, worst status, Optuna values) of a trial: all Optuna needs, none of the series."""
    worst = max((r.status for r in seeds), key=("complete", "pruned", "failed").index)
    values = None
    if worst == "complete":
        gains = [r.summary["adapter_gain"] for r in seeds if r.summary]
        ratios = [r.summary["train_grad_ratio"] for r in seeds if r.summary]
        values = [sum(gains) / len(gains), max(0.0, -sum(math.log(x) for x in ratios) / len(ratios))]
    return seeds[0].fix, seeds[0].scale, worst, values


def add_optuna_trials(url: str, name: str, runs: dict[int, tuple[str, float | None, str, list[float] | None]]) -> None:
    """The Optuna study beside ours, as ``ablate study run`` leaves it (params, state, values)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(storage=url, study_name=name, directions=["maximize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(OBJECTIVES))
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
    trials = []
    for _, (fix, scale, worst, values) in sorted(runs.items()):
        params: dict[str, Any] = {"fix": fix}
        dists: dict[str, Any] = {"fix": CategoricalDistribution(list(FIXES))}
        if scale is not None:
            params[f"scale[{fix}]"] = scale
            log = fix != "tanh-gate"
            dists[f"scale[{fix}]"] = FloatDistribution(1e-4 if log else 0.0, 1.0, log=log)
        trials.append(create_trial(params=params, distributions=dists, values=values, state=states[worst]))
    study.add_trials(trials)


def build(
    url: str,
    trials: int,
    seeds: int = 1,
    steps: int = 300,
    probes: int = 7,
    optuna: bool = True,
    name: str = "bench",
    rng_seed: int = 0,
    fail: float = 0.01,
) -> dict[str, Any]:
    """Create ``name`` in ``url`` with ``trials`` trials x ``seeds`` seeds; return what was written.

    ``fail``: the share of trial runs that fail, the same share is pruned, and the same share of
    complete ones carries a NaN slope and an infinite ratio."""
    a = argparse.Namespace(steps=steps, probes=probes, fail=fail)
    rng = random.Random(rng_seed)
    t0 = time.perf_counter()
    engine = open_storage(url)
    seed_list = list(range(seeds))
    objectives = [
        {"metric": "adapter_gain", "direction": "maximize"},
        {"metric": "dilution_train", "direction": "minimize"},
    ]
    study_id = register_study(engine, name, name, spec_text(name, seed_list, steps), f"{rng_seed:064d}", objectives, {})
    batch = [_run(rng, role, None, s, "no-branch", None, a) for s in seed_list for role in ("baseline", "control")]
    by_trial: dict[int, tuple[str, float | None, str, list[float] | None]] = {}
    n_runs = 0
    for t, fix, scale in trial_arms(trials, rng):
        seeds_of_trial = [_run(rng, "trial", t, s, fix, scale, a) for s in seed_list]
        by_trial[t] = _trial_outcome(seeds_of_trial)
        batch += seeds_of_trial
        if len(batch) >= RUNS_PER_TRANSACTION:
            n_runs += len(write_finished_runs(engine, study_id, batch))
            batch = []
    n_runs += len(write_finished_runs(engine, study_id, batch))
    t_ablate = time.perf_counter() - t0
    if optuna:
        add_optuna_trials(engine.url.render_as_string(hide_password=False), name, by_trial)
    return {
        "trials": trials,
        "seeds": seeds,
        "runs": n_runs,
        "steps": steps,
        "probe_points_per_run": probes,
        "optuna_trials": optuna,
        "write_ablate_s": round(t_ablate, 1),
        "write_total_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--probes", type=int, default=7)
    p.add_argument("--no-optuna", action="store_true")
    p.add_argument("--name", default="bench")
    args = p.parse_args(argv)
    info = build(args.url, args.trials, args.seeds, args.steps, args.probes, not args.no_optuna, args.name)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
