"""The worker every launcher starts, and what a launcher does once before starting any.

A worker is the plain command ``python -m ablate study run SPEC --storage URL --name NAME``, so a
worker started by a launcher is exactly one a user could start by hand. Its environment tells it
where it runs (provenance.LAUNCHER_ENV / JOB_ENV, CUDA_VISIBLE_DEVICES), which its runs record.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ablate.spec import StudySpec
from ablate.store.provenance import JOB_ENV, LAUNCHER_ENV


@dataclass(frozen=True)
class PreparedStudy:
    """A study created (or found) before its workers start."""

    name: str
    url: str  # the storage URL the workers get (password included: they must connect)
    total: int  # finished trials wanted
    done: int  # counted trials it holds already
    created: bool  # this call created it (a failed launch removes it again)


def prepare_study(spec: StudySpec, spec_text: str, storage: str, name: str, n_trials: int | None) -> PreparedStudy:
    """Create the study and its tables once, and enqueue every fix's default-scale trial, so the
    workers find them waiting (numbered as one worker would number them) instead of racing to
    enqueue. Then close this process's connections: a launcher must not hold any of the server's
    while its workers run."""
    from optuna.trial import TrialState

    from ablate.store.engine import dispose_engines
    from ablate.study.distinct import FINISHED, counted
    from ablate.study.runner import enqueue_defaults, open_study

    engine, _study_id, study, created = open_study(spec, spec_text, storage, name)
    url = engine.url.render_as_string(hide_password=False)
    total = n_trials if n_trials is not None else spec.study.trials
    trials = study.get_trials(deepcopy=False)
    enqueue_defaults(study, spec, max(0, total - len(counted(trials, (*FINISHED, TrialState.RUNNING)))))
    done = len(counted(study.get_trials(deepcopy=False)))
    storage = getattr(study._storage, "_backend", study._storage)  # noqa: SLF001 - Optuna's cache wraps it
    storage.engine.dispose()  # RDBStorage's own engine: its idle connections would stay open otherwise
    dispose_engines()
    return PreparedStudy(name, url, total, done, created)


def discard_study(url: str, name: str) -> None:
    """Remove a study a failed launch created (its Optuna study and its ``ablate_studies`` row); it
    holds no trial and no run yet."""
    import optuna
    from sqlalchemy import delete

    from ablate.store.engine import dispose_engines, open_storage
    from ablate.store.schema import StudyModel

    optuna.delete_study(study_name=name, storage=url)
    engine = open_storage(url)
    with engine.begin() as conn:
        conn.execute(delete(StudyModel).where(StudyModel.name == name))
    dispose_engines()


def worker_command(
    spec_path: str | Path,
    url: str,
    name: str,
    n_trials: int | None,
    extra: Sequence[str] = (),
    python: str | None = None,
) -> list[str]:
    """``python -m ablate study run SPEC --storage URL --name NAME [--trials N] --quiet --no-plots``."""
    cmd = [python or sys.executable, "-m", "ablate", "study", "run", str(Path(spec_path).resolve())]
    cmd += ["--storage", url, "--name", name]
    cmd += ["--trials", str(n_trials)] if n_trials is not None else []
    return [*cmd, "--quiet", "--no-plots", *extra]


def worker_env(
    launcher: str, job: str | None, devices: str | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The worker's environment: ``base`` (default this process's) plus who started it and, when
    given, the GPUs it may see."""
    env = dict(os.environ if base is None else base)
    env[LAUNCHER_ENV] = launcher
    if job is not None:
        env[JOB_ENV] = job
    else:
        env.pop(JOB_ENV, None)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    return env


def parse_gpus(text: str) -> list[int]:
    """``--gpus 0,1,3`` as device numbers (AblateInputError naming --gpus otherwise)."""
    from ablate.errors import AblateInputError

    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        raise AblateInputError("--gpus", f"must be comma-separated device numbers such as 0,1; got {text!r}") from None
    if any(i < 0 for i in ids):
        raise AblateInputError("--gpus", f"device numbers are >= 0; got {text!r}")
    return ids


def gpu_plan(workers: int, gpus: list[int] | None, visible: int, parent_visible: str | None) -> list[str | None]:
    """Each local worker's ``CUDA_VISIBLE_DEVICES``: round-robin over ``gpus`` (default every GPU this
    process sees), or None for every worker on a machine without one (they share the CPU cores).

    ``visible`` is the number of GPUs torch sees here; numbers in ``gpus`` count among those, so
    under ``CUDA_VISIBLE_DEVICES=4,5`` (``parent_visible``) ``--gpus 1`` is physical device 5.
    """
    from ablate.errors import AblateInputError

    if gpus is not None:
        if visible == 0:
            raise AblateInputError("--gpus", "this machine has no CUDA GPU (torch sees none); leave --gpus out")
        missing = [g for g in gpus if g >= visible]
        if missing:
            raise AblateInputError(
                "--gpus",
                f"device {missing[0]} does not exist: torch sees {visible} GPU(s), numbered 0 to {visible - 1}",
            )
    ids = list(range(visible)) if gpus is None else gpus
    if not ids:
        return [None] * workers
    physical = [p.strip() for p in parent_visible.split(",")] if parent_visible else None
    names = [physical[i] if physical and i < len(physical) else str(i) for i in ids]
    return [names[k % len(names)] for k in range(workers)]
