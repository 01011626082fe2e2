"""Per-group numbers: wide names (``train_grad_ratio_layers``) <-> long rows (run, group, name).

The engine's results and the read frames name a group's number by a template
(``RUN_GROUP_COLUMNS`` / ``PROBE_GROUP_COLUMNS`` in ablate/store/schema.py); the database keeps one row
per (run[, step], group, name), so a subject may have any groups.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, select

from ablate.store.encode import decode_float, encode_float
from ablate.store.schema import (
    PROBE_GROUP_COLUMNS,
    RUN_GROUP_COLUMNS,
    ProbeGroupMetricModel,
    RunGroupMetricModel,
    RunModel,
)


def wide_name(templates: Mapping[str, str], name: str, group: str) -> str:
    return templates[name].format(g=group)


def wide_columns(templates: Mapping[str, str], groups: Sequence[str]) -> list[str]:
    """Every wide column of ``groups``, metric by metric (``train_grad_ratio_layers``, ``..._proj``, ...)."""
    return [t.format(g=g) for t in templates.values() for g in groups]


def _rows(values: Mapping[str, Any], groups: Iterable[str], templates: Mapping[str, str], **key: Any) -> list[dict]:
    rows = []
    for g in groups:
        for name, template in templates.items():
            column = template.format(g=g)
            if column in values and values[column] is not None:
                value, flag = encode_float(values[column])
                rows.append({**key, "group_name": g, "name": name, "value": value, "flag": flag})
    return rows


_ENDINGS = ("lo", "hi", "ci", "with", "without")  # what ends a judged or per-group column, never a group


def groups_in(values: Mapping[str, Any], templates: Mapping[str, str]) -> list[str]:
    """The groups a record's wide keys name: its ``groups`` list, else every suffix that fills one of
    ``templates`` (``train_grad_ratio_{g}`` -> ``layers``), in key order."""
    if isinstance(values.get("groups"), list | tuple) and values["groups"]:
        return list(values["groups"])
    found: dict[str, None] = {}
    for template in templates.values():
        head, _, tail = template.partition("{g}")
        for k in values:
            if k.startswith(head) and k.endswith(tail) and len(k) > len(head) + len(tail):
                g = k[len(head) : len(k) - len(tail)]
                if g not in _ENDINGS and not g.endswith(tuple(f"_{e}" for e in _ENDINGS)):
                    found[g] = None
    return list(found)


def run_group_rows(run_id: int, values: Mapping[str, Any], groups: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The ablate_run_groups rows of a run summary's wide per-group values (``groups``: default, those
    its keys name)."""
    groups = groups_in(values, RUN_GROUP_COLUMNS) if groups is None else groups
    return _rows(values, groups, RUN_GROUP_COLUMNS, run_id=run_id)


def probe_group_rows(run_id: int, step: int, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ablate_probe_groups rows of a probe point's wide per-group values (``ProbeResult.flat()``)."""
    groups = groups_in(values, PROBE_GROUP_COLUMNS)
    return _rows(values, groups, PROBE_GROUP_COLUMNS, run_id=run_id, step=step)


def read_run_groups(conn: Connection, study_id: int) -> tuple[dict[int, dict[str, float]], list[str]]:
    """Per run of the study, its per-group numbers under their wide names; and the group names seen
    (in first-seen order of run and row)."""
    G = RunGroupMetricModel
    stmt = (
        select(G.run_id, G.group_name, G.name, G.value, G.flag)
        .join(RunModel, RunModel.id == G.run_id)
        .where(RunModel.study_id == study_id)
        .order_by(G.run_id)
    )
    out: dict[int, dict[str, float]] = {}
    seen: dict[str, None] = {}
    for run_id, group, name, value, flag in conn.execute(stmt):
        if name in RUN_GROUP_COLUMNS:
            out.setdefault(int(run_id), {})[wide_name(RUN_GROUP_COLUMNS, name, group)] = decode_float(value, flag)
            seen[group] = None
    return out, list(seen)


def read_probe_groups(conn: Connection, study_id: int) -> dict[tuple[int, int], dict[str, float]]:
    """Per probe point (run id, step) of the study, its per-group numbers under their wide names."""
    G = ProbeGroupMetricModel
    stmt = (
        select(G.run_id, G.step, G.group_name, G.name, G.value, G.flag)
        .join(RunModel, RunModel.id == G.run_id)
        .where(RunModel.study_id == study_id)
    )
    out: dict[tuple[int, int], dict[str, float]] = {}
    for run_id, step, group, name, value, flag in conn.execute(stmt):
        if name in PROBE_GROUP_COLUMNS:
            column = wide_name(PROBE_GROUP_COLUMNS, name, group)
            out.setdefault((int(run_id), int(step)), {})[column] = decode_float(value, flag)
    return out


def ordered_groups(seen: Sequence[str], preferred: Sequence[str] = ()) -> list[str]:
    """The groups in the study's order (``preferred``, from its spec) with the union ``all`` last."""
    head = [g for g in preferred if g in seen and g != "all"]
    rest = [g for g in seen if g not in head and g != "all"]
    return [*head, *rest, *(["all"] if "all" in seen else [])]
