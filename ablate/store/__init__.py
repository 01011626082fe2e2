"""ablate's SQL store: ablate_* tables beside Optuna's, written in batches, read as DataFrames.

    engine = open_storage("sqlite:///results.db")           # or $ABLATE_STORAGE, or PostgreSQL
    study_id = register_study(engine, "quick", "quick", spec_text, spec_hash, objectives, runtime_meta())
    run_id = start_run(engine, study_id, "trial", 0, seed=0, fix="zero-init", scale=None, device="cpu")
    with MetricBuffer(engine, run_id) as buf:
        buf.add_step(step, {"loss": loss})
    write_probe(engine, run_id, probe.to_dict())
    finish_run(engine, run_id, "complete", result.summary())
    trials_frame(engine, "quick")

Importing this package does not import optuna, torch or the CLI.
"""

from ablate.store.encode import (
    decode_fields,
    decode_float,
    decode_float_list,
    encode_fields,
    encode_float,
    encode_float_list,
)
from ablate.store.engine import (
    DEFAULT_STORAGE,
    STORAGE_ENV,
    create_schema,
    display_url,
    dispose_engines,
    make_engine,
    open_storage,
    storage_url,
)
from ablate.store.query import (
    group_by_fix,
    json_records,
    latest_study,
    list_studies,
    probe_frame,
    run_sql,
    runs_frame,
    step_metrics_frame,
    study_settings,
    trials_frame,
)
from ablate.store.schema import (
    TABLE_NAMES,
    Base,
    ProbePointModel,
    RunModel,
    StepMetricModel,
    StudyModel,
)
from ablate.store.writer import (
    MetricBuffer,
    RunBusy,
    RunComplete,
    fail_stale_runs,
    finish_run,
    reference_run,
    reference_status,
    register_study,
    runtime_meta,
    start_run,
    write_metrics,
    write_probe,
    write_probes,
    write_result,
)

__all__ = [
    "DEFAULT_STORAGE",
    "STORAGE_ENV",
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
