"""Binary artefacts of runs (ablate_blobs): kept in the database so every worker of a study, on any
machine, reads the same one (AA-CLIP's Stage 1 text adapter of a seed)."""

from __future__ import annotations

import hashlib

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from ablate.store.encode import utcnow
from ablate.store.schema import REFERENCE_KEYS, BlobModel, RunModel
from ablate.timers import timed


@timed("db")
def write_blob(engine: Engine, run_id: int, name: str, data: bytes) -> None:
    """Store a run's binary artefact (replacing one of that name); written before the run is finished,
    so a complete run always has its artefacts."""
    with Session(engine) as session, session.begin():
        session.execute(delete(BlobModel).where(BlobModel.run_id == run_id, BlobModel.name == name))
        digest = hashlib.sha256(data).hexdigest()
        session.add(
            BlobModel(run_id=run_id, name=name, sha256=digest, nbytes=len(data), data=data, created_at=utcnow())
        )


@timed("db")
def reference_blob(engine: Engine, study_id: int, seed: int, role: str, name: str) -> bytes | None:
    """The artefact ``name`` of a seed's complete reference run (e.g. its ``stage1``), None until it has
    landed; a stored artefact whose bytes no longer match their digest is an error."""
    with Session(engine) as session:
        run = RunModel.find(session, study_id, role, REFERENCE_KEYS[role], seed)
        if run is None or run.status != "complete":
            return None
        blob = session.scalars(select(BlobModel).where(BlobModel.run_id == run.id, BlobModel.name == name)).first()
        if blob is None:
            return None
        data = bytes(blob.data)
        if hashlib.sha256(data).hexdigest() != blob.sha256:
            raise ValueError(f"{name} of run {run.id}: stored bytes do not match their sha256")
        return data
