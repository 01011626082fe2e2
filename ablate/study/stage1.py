"""The subject's Stage 1 in a study: once per seed, before that seed's baseline, shared by its arms.

AA-CLIP trains its text adapter (Stage 1) before the image adapters (Stage 2). A study trains it
once per seed on the study's training data, as a run row with role ``stage1`` (its per-step losses
in ``ablate_step_metrics``) and the adapter's weights in ``ablate_blobs``, so every worker of the
study, on any machine, gives every arm of that seed the same text side (the arms stay paired).
Like the baseline, a seed's Stage 1 run another worker holds is waited for, not repeated.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from ablate.engine.device import resolve_device
from ablate.engine.fixes import NO_BRANCH
from ablate.engine.metrics import edge_means, loss_slope
from ablate.store import writer
from ablate.subjects.aaclip.arm import arm_data, load_text_adapter, run_stage1, training_pool
from ablate.subjects.aaclip.data.order import steps_per_epoch
from ablate.subjects.aaclip.stage1 import to_bytes
from ablate.threads import apply_threads

if TYPE_CHECKING:
    from ablate.study.runner import StudyRun

ROLE = "stage1"
BLOB = "text_adapter"


class StudyStage1:
    """Stage 1 runs of one study (a no-op when the spec trains none)."""

    def __init__(self, runner: StudyRun) -> None:
        self.runner = runner
        self._weights: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def on(self) -> bool:
        return self.runner.spec.trains_stage1

    def run_free(self, seeds: list[int]) -> None:
        """Run each seed's Stage 1 that no other worker holds or has finished (first pass)."""
        if not self.on:
            return
        for seed in seeds:
            if seed in self._weights or writer.reference_status(*self._where(seed)) == "complete":
                continue
            try:
                self._run(seed)
            except (writer.RunBusy, writer.RunComplete):
                continue

    def weights(self, seed: int) -> dict[str, torch.Tensor] | None:
        """The seed's text adapter: cached, read from the database, trained here, or waited for while
        another worker trains it; None when the spec trains no Stage 1."""
        from ablate.study.runner import REFERENCE_POLL_S, RunFailed

        if not self.on:
            return None
        while seed not in self._weights:
            data = writer.reference_blob(*self._where(seed), BLOB)
            if data is not None:
                self._weights[seed] = load_text_adapter(self.runner.spec.arm(NO_BRANCH, None, seed).model, data)
                break
            if writer.reference_status(*self._where(seed)) == "complete":
                raise RunFailed(f"stage1 seed {seed}: the complete run has no {BLOB} weights stored")
            try:
                self._run(seed)
            except writer.RunComplete:
                continue  # another worker finished it between our read and our claim: read it
            except writer.RunBusy:
                self.runner.reporter.waiting(f"stage1 seed {seed} (running in another worker)")
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
        label = f"stage1 text adapter seed {seed}"
        if runner.threads is not None:  # the same thread policy as every other run of the worker
            n, _why = runner.threads()
            apply_threads(n)
            label += f" ({n} thread{'s' if n > 1 else ''})"
        try:
            data = arm_data(cfg, runner._like)
            runner._like = runner._like or data  # every later arm shares its backbone and data
            s1 = cfg.stage1
            runner.reporter.run_start(
                label, s1.steps or s1.epochs * steps_per_epoch(training_pool(cfg, data), s1.batch_size)
            )
            with writer.RunHeartbeat(runner.engine, [run_id], HEARTBEAT_S):
                result = run_stage1(cfg, data, resolve_device(cfg.device), runner.reporter.step)
            losses = result.metrics["loss"]
            first, last = edge_means(losses)
            writer.write_metrics(runner.engine, run_id, result.metrics)
            writer.write_blob(runner.engine, run_id, BLOB, to_bytes(result.state))
            summary = {
                "steps": result.steps,
                "loss_first": first,
                "loss_last": last,
                "loss_slope": loss_slope(losses),
                "wall_s": result.wall_s,
                "steps_per_s": result.steps / max(result.wall_s, 1e-9),
            }
            writer.finish_run(runner.engine, run_id, "complete", summary)
        except KeyboardInterrupt:
            writer.finish_run(runner.engine, run_id, "failed", None, error="interrupted")
            runner.reporter.run_end(label, None, "interrupted")
            raise
        except Exception as exc:
            writer.finish_run(runner.engine, run_id, "failed", None, error=f"{type(exc).__name__}: {exc}")
            runner.reporter.run_end(label, None, "failed", f"{type(exc).__name__}: {exc}")
            raise RunFailed(f"{label}: {exc}") from exc
        self._weights[seed] = result.state
        runner.reporter.run_end(label, None, "complete")
