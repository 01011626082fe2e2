"""Where a study's numbers came from: its row in ablate_studies (name, spec, objectives), the
software, git revision and host it ran with, and the worker each run ran in.

Every function takes an Engine and does its own short transaction.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ablate.store.encode import utcnow
from ablate.store.schema import StudyModel
from ablate.timers import timed

META_FIELDS = (
    "ablate_version",
    "torch_version",
    "open_clip_version",
    "optuna_version",
    "python_version",
    "git_revision",
    "host",
)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(cwd: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _git_revision(cwd: Path) -> str | None:
    """HEAD's hash, with "-dirty" when tracked files have uncommitted changes; None outside git."""
    rev = _git(cwd, "rev-parse", "HEAD")
    if not rev:
        return None
    return rev + ("-dirty" if _git(cwd, "status", "--porcelain", "--untracked-files=no") else "")


def runtime_meta(git_dir: str | Path | None = None) -> dict[str, str | None]:
    """The software versions, git revision and host for :func:`register_study`.

    Reads installed package metadata instead of importing torch/optuna/open_clip, so it is cheap.
    ``git_dir`` defaults to the directory of this source file (the ablate checkout).
    """
    return {
        "ablate_version": _version("ablate-branch"),
        "torch_version": _version("torch"),
        "open_clip_version": _version("open_clip_torch"),
        "optuna_version": _version("optuna"),
        "python_version": platform.python_version(),
        "git_revision": _git_revision(Path(git_dir) if git_dir else Path(__file__).resolve().parent),
        "host": socket.gethostname(),
    }


def _objectives_json(objectives: Sequence[Mapping[str, str]]) -> str:
    out = []
    for obj in objectives:
        if "metric" not in obj or "direction" not in obj:
            raise ValueError(f"objective {dict(obj)!r} needs 'metric' and 'direction'")
        out.append({"metric": str(obj["metric"]), "direction": str(obj["direction"])})
    return json.dumps(out)


def _release_line(version: str | None) -> tuple[str, ...]:
    """A release's major.minor: studies are resumed only by the release line that started them
    (a minor release may change what a run computes; e.g. 0.2 made the AA-CLIP subject AA-CLIP's)."""
    return tuple((version or "0.1").split(".")[:2])


@timed("db")
def register_study(
    engine: Engine,
    name: str,
    optuna_study_name: str,
    spec_text: str,
    spec_hash: str,
    objectives: Sequence[Mapping[str, str]],
    meta: Mapping[str, Any] | None = None,
) -> int:
    """Create the study row, or return the existing id when ``name`` exists with the same spec hash.

    Idempotent so that resuming a study, or several workers starting it, all land on one row. A name
    reused for a different spec is refused: its results would otherwise mix two experiments.
    ``meta`` keys are those of :func:`runtime_meta`; missing keys are stored as NULL, others ignored.
    """
    meta = meta or {}

    def existing(session: Session) -> int | None:
        row = StudyModel.find_by_name(name, session)
        if row is None:
            return None
        if row.spec_hash != spec_hash:
            from ablate.specdiff import changes_text, spec_changes

            changed = changes_text(spec_changes(row.spec_text or "", spec_text))
            raise ValueError(
                f"study {name!r} already exists with a different spec: {changed}; use another --name "
                "(or the spec it was started with)"
            )
        mine = meta.get("ablate_version")
        if mine is not None and _release_line(row.ablate_version) != _release_line(mine):
            raise ValueError(
                f"study {name!r} was run by ablate {row.ablate_version or 'before 0.1.0'}, and this release "
                f"({mine}) computes AA-CLIP as AA-CLIP does (docs/parity.md), so its trials would not compare; "
                "it stays readable; continue under another --name"
            )
        return row.id

    with Session(engine) as session:
        found = existing(session)
        if found is not None:
            return found
        row = StudyModel(
            name=name,
            optuna_study_name=optuna_study_name,
            spec_text=spec_text,
            spec_hash=spec_hash,
            objectives=_objectives_json(objectives),
            created_at=utcnow(),
            **{k: (None if meta.get(k) is None else str(meta[k])) for k in META_FIELDS},
        )
        session.add(row)
        try:
            session.commit()
            return row.id
        except IntegrityError:  # another worker registered the same name between our read and write
            session.rollback()
            found = existing(session)
            if found is None:
                raise
            return found


# Set by ablate's launchers (ablate/launch/) in each worker's environment; a worker started by hand
# is recognised from its scheduler's own variables, else it is a plain `ablate study run` ("cli").
LAUNCHER_ENV = "ABLATE_WORKER_LAUNCHER"
JOB_ENV = "ABLATE_WORKER_JOB"


def _scheduler(env: Mapping[str, str]) -> tuple[str, str | None]:
    """(launcher, job) for a worker no ablate launcher started: SLURM, a Kubernetes Job, or neither."""
    if env.get("SLURM_JOB_ID"):
        array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        return "slurm", f"{array}_{task}" if array and task else env["SLURM_JOB_ID"]
    if env.get("KUBERNETES_SERVICE_HOST"):
        index = env.get("JOB_COMPLETION_INDEX")  # an Indexed Job's pod number
        return "kubernetes", index if index is not None else env.get("HOSTNAME")
    return "cli", None


def worker_record(gpus_visible: int, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``ablate_runs`` worker columns for runs this process claims (schema.WORKER_FIELDS): host,
    process id, launcher, job or task id, and the devices it saw: ``CUDA_VISIBLE_DEVICES`` as set
    ("" reads "none"), else "all" when ``gpus_visible`` > 0, else "cpu"."""
    env = os.environ if env is None else env
    launcher, job = _scheduler(env)
    cuda = env.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        devices = cuda.strip() or "none"
    else:
        devices = "all" if gpus_visible > 0 else "cpu"
    return {
        "worker_host": socket.gethostname(),
        "worker_pid": os.getpid(),
        "worker_launcher": env.get(LAUNCHER_ENV) or launcher,
        "worker_job": env.get(JOB_ENV) or job,
        "worker_devices": devices[:128],
    }
