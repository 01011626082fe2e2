"""A subject's Stage 1 in a study: once per seed, before that seed's baseline, shared by its arms.

A subject may train something per seed before the arms it compares (``SubjectKind.trains_stage1``;
AA-CLIP trains its text adapter, Stage 1, before the image adapters, Stage 2). A study trains it
once per seed, as a run row with role ``stage1`` (its per-step losses in ``ablate_step_metrics``)
and its state in ``ablate_blobs``, so every worker of the study, on any machine, gives every arm of
that seed the same state (the arms stay paired). Like the baseline, a seed's Stage 1 run another
worker holds is waited for, not repeated.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from ablate import arms
from ablate.engine.fixes import NO_BRANCH
from ablate.engine.metrics import edge_means, loss_slope
from ablate.store import claims, metric_writes
from ablate.store.blobs import reference_blob, write_blob
from ablate.threads import apply_threads
from ablate.timers import span

if TYPE_CHECKING:
    from ablate.study.runner import StudyRun

ROLE = "stage1"
BLOB = "stage1"  # the state's name in ablate_blobs


class StudyStage1:
    """Stage 1 runs of one study (a no-op when the spec trains none)."""

    def __init__(self, runner: StudyRun) -> None:
        self.runner = runner
        self._weights: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def on(self) -> bool:
        spec = self.runner.spec
        cfg = spec.arm(NO_BRANCH, None, spec.study.seeds[0])
        return arms.kind_of(cfg).trains_stage1(cfg)

    def run_free(self, seeds: list[int]) -> None:
        """Run each seed's Stage 1 that no other worker holds or has finished (first pass)."""
        if not self.on:
            return
        for seed in seeds:
            if seed in self._weights or claims.reference_status(*self._where(seed)) == "complete":
                continue
            try:
                self._run(seed)
            except (claims.RunBusy, claims.RunComplete):
                continue

    def weights(self, seed: int) -> dict[str, torch.Tensor] | None:
        """The seed's text adapter: cached, read from the database, trained here, or waited for while
        another worker trains it; None when the spec trains no Stage 1."""
        from ablate.study.runner import REFERENCE_POLL_S, RunFailed

        if not self.on:
            return None
        while seed not in self._weights:
            data = reference_blob(*self._where(seed), BLOB)
            if data is not None:
                cfg = self.runner.spec.arm(NO_BRANCH, None, seed)
                self._weights[seed] = arms.kind_of(cfg).stage1_state(cfg, data)
                break
            if claims.reference_status(*self._where(seed)) == "complete":
                raise RunFailed(f"stage1 seed {seed}: the complete run has no {BLOB} weights stored")
            try:
                self._run(seed)
            except claims.RunComplete:
                continue  # another worker finished it between our read and our claim: read it
            except claims.RunBusy:
                self.runner.reporter.waiting(f"stage1 seed {seed} (running in another worker)")
                with span("waiting"):
                    time.sleep(REFERENCE_POLL_S)
        return self._weights[seed]

    def _where(self, seed: int) -> tuple[Any, int, int, str]:
        return self.runner.engine, self.runner.study_id, seed, ROLE

    def _run(self, seed: int) -> None:
        """Claim, train and store one seed's Stage 1 (RunBusy / RunComplete when another worker has it)."""
        from ablate.study.runner import HEARTBEAT_S, RunFailed

        runner = self.runner
        run_id = runner.claim(ROLE, None, NO_BRANCH, None, seed)
        cfg = runner.spec.arm(NO_BRANCH, None, seed)
        label = f"stage1 seed {seed}"
        if runner.threads is not None:  # the same thread policy as every other run of the worker
            n, _why = runner.threads()
            apply_threads(n)
            label += f" ({n} thread{'s' if n > 1 else ''})"
        kind = arms.kind_of(cfg)
        try:
            with claims.RunHeartbeat(runner.engine, [run_id], HEARTBEAT_S), span("stage1"):
                result, data = kind.run_stage1(
                    cfg, runner._like, lambda steps: runner.reporter.run_start(label, steps), runner.reporter.step
                )
            runner._like = runner._like or data  # every later arm shares its backbone and data
            losses = result.metrics["loss"]
            first, last = edge_means(losses)
            metric_writes.write_metrics(runner.engine, run_id, result.metrics)
            write_blob(runner.engine, run_id, BLOB, kind.stage1_bytes(result.state))
            summary = {
                "steps": result.steps,
                "loss_first": first,
                "loss_last": last,
                "loss_slope": loss_slope(losses),
                "wall_s": result.wall_s,
                "steps_per_s": result.steps / max(result.wall_s, 1e-9),
            }
            claims.finish_run(runner.engine, run_id, "complete", summary)
        except KeyboardInterrupt:
            claims.finish_run(runner.engine, run_id, "failed", None, error="interrupted")
            runner.reporter.run_end(label, None, "interrupted")
            raise
        except Exception as exc:
            claims.finish_run(runner.engine, run_id, "failed", None, error=f"{type(exc).__name__}: {exc}")
            runner.reporter.run_end(label, None, "failed", f"{type(exc).__name__}: {exc}")
            raise RunFailed(f"{label}: {exc}") from exc
        self._weights[seed] = result.state
        runner.reporter.run_end(label, None, "complete")
