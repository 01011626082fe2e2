"""ablate's SQL store: ablate_* tables beside Optuna's, written in batches, read as DataFrames.

    engine = open_storage("sqlite:///results.db")           # or $ABLATE_STORAGE, or PostgreSQL
    study_id = register_study(engine, "quick", "quick", spec_text, spec_hash, objectives, runtime_meta())
    run_id = start_run(engine, study_id, "trial", 0, seed=0, fix="zero-init", scale=None, device="cpu")
    with MetricBuffer(engine, run_id) as buf:
        buf.add_step(step, {"loss": loss})
    write_probe(engine, run_id, probe.to_dict())
    finish_run(engine, run_id, "complete", result.summary())
    trials_frame(engine, "quick")

Importing this package imports nothing heavy: each name loads its module on first use, so the
engine set-up needs neither pandas nor optuna nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use (PEP 562), so `import ablate.store.engine` (every CLI command) does not pay
# for pandas, which only the query functions need.
_EXPORTS: dict[str, str] = {
    "decode_fields": "ablate.store.encode",
    "decode_float": "ablate.store.encode",
    "decode_float_list": "ablate.store.encode",
    "encode_fields": "ablate.store.encode",
    "encode_float": "ablate.store.encode",
    "encode_float_list": "ablate.store.encode",
    "DEFAULT_STORAGE": "ablate.store.engine",
    "STORAGE_ENV": "ablate.store.engine",
    "create_schema": "ablate.store.engine",
    "display_url": "ablate.store.engine",
    "find_storage": "ablate.store.engine",
    "dispose_engines": "ablate.store.engine",
    "make_engine": "ablate.store.engine",
    "open_storage": "ablate.store.engine",
    "storage_url": "ablate.store.engine",
    "group_by_fix": "ablate.store.query",
    "json_records": "ablate.store.query",
    "latest_study": "ablate.store.query",
    "list_studies": "ablate.store.query",
    "probe_frame": "ablate.store.query",
    "run_sql": "ablate.store.query",
    "runs_frame": "ablate.store.query",
    "step_metrics_frame": "ablate.store.query",
    "study_settings": "ablate.store.query",
    "trials_frame": "ablate.store.query",
    "TABLE_NAMES": "ablate.store.schema",
    "Base": "ablate.store.schema",
    "ProbePointModel": "ablate.store.schema",
    "RunModel": "ablate.store.schema",
    "StepMetricModel": "ablate.store.schema",
    "StudyModel": "ablate.store.schema",
    "MetricBuffer": "ablate.store.metric_writes",
    "RunBusy": "ablate.store.claims",
    "RunComplete": "ablate.store.claims",
    "fail_stale_runs": "ablate.store.claims",
    "finish_run": "ablate.store.claims",
    "reference_run": "ablate.store.claims",
    "reference_status": "ablate.store.claims",
    "register_study": "ablate.store.provenance",
    "runtime_meta": "ablate.store.provenance",
    "start_run": "ablate.store.claims",
    "write_metrics": "ablate.store.metric_writes",
    "write_probe": "ablate.store.metric_writes",
    "write_probes": "ablate.store.metric_writes",
    "write_result": "ablate.store.claims",
    "FinishedRun": "ablate.store.bulk",
    "write_finished_runs": "ablate.store.bulk",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ablate.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "DEFAULT_STORAGE",
    "FinishedRun",
    "write_finished_runs",
    "STORAGE_ENV",
    "find_storage",
    "TABLE_NAMES",
    "Base",
    "MetricBuffer",
    "RunBusy",
    "RunComplete",
    "ProbePointModel",
    "RunModel",
    "StepMetricModel",
    "StudyModel",
    "reference_run",
    "reference_status",
    "fail_stale_runs",
    "create_schema",
    "decode_fields",
    "decode_float",
    "decode_float_list",
    "display_url",
    "dispose_engines",
    "encode_fields",
    "encode_float",
    "encode_float_list",
    "finish_run",
    "group_by_fix",
    "json_records",
    "latest_study",
    "list_studies",
    "make_engine",
    "open_storage",
    "probe_frame",
    "register_study",
    "run_sql",
    "runs_frame",
    "runtime_meta",
    "start_run",
    "step_metrics_frame",
    "study_settings",
    "storage_url",
    "trials_frame",
    "write_metrics",
    "write_probe",
    "write_probes",
    "write_result",
]
