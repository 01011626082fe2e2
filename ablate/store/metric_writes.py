"""Per-step metrics, probe points and per-class evaluation numbers of a run, written in batches.

Per-step metrics go through :class:`MetricBuffer`: one transaction and one executemany INSERT per
flush, never a commit per value and never Optuna's ``trial.report`` per step. The row builders here
are also what :mod:`ablate.store.bulk` uses, so both paths store identical rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, insert

from ablate.store.encode import encode_fields, encode_float, encode_float_lists
from ablate.store.groups import probe_group_rows
from ablate.store.schema import PROBE_FLOAT_FIELDS, ProbeGroupMetricModel, ProbePointModel, StepMetricModel
from ablate.timers import timed

if TYPE_CHECKING:
    from ablate.engine.result import ProbeResult


def _host_floats(values: list[Any]) -> list[Any]:
    """Move device tensors to the host in one transfer per device instead of one sync per value."""
    tensors: dict[Any, list[int]] = {}
    for i, v in enumerate(values):
        if type(v).__module__.startswith("torch") and hasattr(v, "device"):
            tensors.setdefault(v.device, []).append(i)
    if not tensors:
        return values
    import torch  # only reached when the caller handed us tensors, so torch is already imported

    out = list(values)
    for idx in tensors.values():
        stacked = torch.stack([values[i].reshape(()).to(torch.float64) for i in idx]).tolist()
        for i, v in zip(idx, stacked, strict=True):
            out[i] = v
    return out


def metric_rows(run_id: int, values: Mapping[tuple[int, str], Any]) -> list[dict[str, Any]]:
    """ablate_step_metrics rows for ``{(step, name): value}``, non-finite values encoded."""
    keys = list(values)
    rows = []
    for (step, name), raw in zip(keys, _host_floats(list(values.values())), strict=True):
        value, flag = encode_float(raw)
        rows.append({"run_id": run_id, "step": step, "name": name, "value": value, "flag": flag})
    return rows


def series_values(metrics: Mapping[str, Sequence[Any]]) -> dict[tuple[int, str], Any]:
    """A finished run's series (name -> value per step) keyed (step, name), in the order
    :func:`write_metrics` buffers them: step by step, names in the series' order."""
    n_steps = max((len(v) for v in metrics.values()), default=0)
    return {(step, name): vals[step] for step in range(n_steps) for name, vals in metrics.items() if step < len(vals)}


class MetricBuffer:
    """Buffers per-step metrics of one run and writes them in one transaction per flush.

    Flushes automatically once ``flush_every`` distinct steps are buffered, on :meth:`flush`, and on
    leaving a ``with`` block (also after an exception, so a failed run keeps the steps it reached).
    Values may be Python floats or 0-d tensors; tensors are detached when added and copied to the
    host only at flush time (no host sync per step). A (step, name) added twice before a
    flush keeps the last value; adding a step that was already flushed fails at the next flush.
    ``n_flushes`` counts the transactions written, ``n_rows`` the rows.
    """

    def __init__(self, engine: Engine, run_id: int, flush_every: int = 200) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.engine = engine
        self.run_id = run_id
        self.flush_every = flush_every
        self.n_flushes = 0
        self.n_rows = 0
        self._rows: dict[tuple[int, str], Any] = {}
        self._steps: set[int] = set()

    def __len__(self) -> int:
        """Rows buffered and not yet written."""
        return len(self._rows)

    def _put(self, step: int, name: str, value: Any) -> None:
        if hasattr(value, "detach"):
            value = value.detach()
        self._rows[(int(step), str(name))] = value
        self._steps.add(int(step))

    def add_step(self, step: int, values: Mapping[str, Any]) -> None:
        """Buffer the metrics of one step, e.g. ``{"loss": 3.1, "grad_norm": 0.4}``."""
        for name, value in values.items():
            self._put(step, name, value)
        self._maybe_flush()

    def add_rows(self, rows: Iterable[tuple[int, str, Any] | Mapping[str, Any]]) -> None:
        """Buffer rows given as ``(step, name, value)`` tuples or ``{"step", "name", "value"}`` dicts."""
        for row in rows:
            if isinstance(row, Mapping):
                self._put(row["step"], row["name"], row["value"])
            else:
                step, name, value = row
                self._put(step, name, value)
            self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self._steps) >= self.flush_every:
            self.flush()

    @timed("db")
    def flush(self) -> int:
        """Write everything buffered in one transaction (one executemany INSERT); return rows written.

        On error the buffer is kept, so a caller may retry after, e.g., a lock timeout.
        """
        if not self._rows:
            return 0
        rows = metric_rows(self.run_id, self._rows)
        with self.engine.begin() as conn:
            conn.execute(insert(StepMetricModel.__table__), rows)
        self.n_flushes += 1
        self.n_rows += len(rows)
        self._rows.clear()
        self._steps.clear()
        return len(rows)

    def __enter__(self) -> MetricBuffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.flush()


def write_metrics(engine: Engine, run_id: int, metrics: Mapping[str, Sequence[Any]], flush_every: int = 200) -> int:
    """Write a finished run's series (``TrainResult.metrics``: name -> value per step); return rows."""
    n_steps = max((len(v) for v in metrics.values()), default=0)
    with MetricBuffer(engine, run_id, flush_every) as buf:
        for step in range(n_steps):
            buf.add_step(step, {name: vals[step] for name, vals in metrics.items() if step < len(vals)})
    return buf.n_rows


def probe_row(run_id: int, probe: Mapping[str, Any] | ProbeResult) -> dict[str, Any]:
    d = dict(probe.flat() if hasattr(probe, "flat") else probe)
    ci = d.get("grad_ratio_ci") or (None, None)
    d.setdefault("grad_ratio_lo", ci[0])
    d.setdefault("grad_ratio_hi", ci[1])
    columns, nonfinite = encode_fields(d, PROBE_FLOAT_FIELDS)
    return {
        "run_id": run_id,
        "step": int(d["step"]),
        "judged_group": d.get("group"),
        **columns,
        "verdict": d.get("verdict"),
        "per_batch_ratios": encode_float_lists(d.get("per_batch_ratios")),
        "nonfinite": nonfinite,
    }


def probe_group_rows_of(run_id: int, probe: Mapping[str, Any] | ProbeResult) -> list[dict[str, Any]]:
    """The ablate_probe_groups rows of one probe point (its per-group numbers)."""
    d = probe.flat() if hasattr(probe, "flat") else probe
    return probe_group_rows(run_id, int(d["step"]), d)


@timed("db")
def write_probes(engine: Engine, run_id: int, probes: Iterable[Mapping[str, Any] | ProbeResult]) -> int:
    """Write several probe points (and their per-group numbers) in one transaction; return how many."""
    probes = list(probes)
    rows = [probe_row(run_id, p) for p in probes]
    group_rows = [r for p in probes for r in probe_group_rows_of(run_id, p)]
    if rows:
        with engine.begin() as conn:
            conn.execute(insert(ProbePointModel.__table__), rows)
            if group_rows:
                conn.execute(insert(ProbeGroupMetricModel.__table__), group_rows)
    return len(rows)


def write_probe(engine: Engine, run_id: int, probe: Mapping[str, Any] | ProbeResult) -> None:
    """Write one probe point (``ProbeResult.to_dict()`` or the ProbeResult itself)."""
    write_probes(engine, run_id, [probe])


def class_metric_rows(run_id: int, evaluation: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The ablate_class_metrics rows of a run's evaluation (``EvalResult.to_dict()``; None: none):
    per class its four metrics (NULL + flag and the reason when undefined) and its counts."""
    if not evaluation:
        return []
    reasons = evaluation.get("reasons", {})
    rows = []
    for name, values in evaluation.get("per_class", {}).items():
        for metric, v in values.items():
            value, flag = encode_float(v)
            note = reasons.get(f"{name}/{metric.split('_')[0]}") if flag is not None else None
            rows.append(
                {"run_id": run_id, "class_name": name, "metric": metric, "value": value, "flag": flag, "note": note}
            )
        for metric, n in evaluation.get("counts", {}).get(name, {}).items():
            rows.append(
                {"run_id": run_id, "class_name": name, "metric": metric, "value": float(n), "flag": None, "note": None}
            )
    return rows
