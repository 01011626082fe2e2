"""Terminal views of the query frames: the columns a reader compares, ranked so that a narrow
terminal drops the least useful first (``tablefit``), intervals folded into one cell, every number
formatted by ``textfmt``'s one rule. csv and json output carry every column of the frames instead.

pandas is imported inside the functions that take frames: ``studies_view`` serves ``ablate query
--studies``, which answers without pandas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ablate.ranking import REFERENCE_LABELS
from ablate.tablefit import Col, hidden_note
from ablate.textfmt import MISSING, column_decimals, fixed, fmt, fmt_ci, scale_text

if TYPE_CHECKING:
    import pandas as pd

from ablate.eval import EVAL_METRICS

# Short headers of the objectives and metrics, and what each stands for (the legend under a table
# names the column of csv/json output a short header comes from).
SHORT = {
    "adapter_gain": "gain",
    "adapter_gain_rel": "gain/base",
    "dilution_train": "dilution",
    "dilution_update": "upd. dil.",
    "dilution_init": "dil. @0",
    "dilution_bypass": "bypass dil.",
    "loss_slope": "slope",
    "loss_slope_rel": "slope-base",
    "loss_last": "last loss",
    "train_grad_ratio": "R train",
    "train_grad_ratio_ac1": "R ac1",
    "grad_ratio_init": "R @0",
    "image_auroc": "img AUROC",
    "image_ap": "img AP",
    "pixel_auroc": "px AUROC",
    "pixel_ap": "px AP",
}
EVAL_COLUMNS = EVAL_METRICS
CLASSES_NOTE = "n (bad): images (anomalous); nan: undefined (one label only; csv/json say which)"

REFERENCES = frozenset(REFERENCE_LABELS.values())
# How runs that belong to no trial are named in --runs: the references as in every view, and a
# subject's Stage 1 of a seed (AA-CLIP: the text adapter the seed's arms share).
RUN_LABELS = {**REFERENCE_LABELS, "stage1": "stage1 (per seed)"}


@dataclass(frozen=True)
class TableView:
    """A table ready to print: ranked columns, string cells, and the lines that explain it."""

    columns: tuple[Col, ...]
    rows: list[list[str]]
    notes: tuple[str, ...] = ()

    @property
    def headers(self) -> list[str]:
        return [c.header for c in self.columns]

    def caption(self, kept: Sequence[int]) -> str:
        """The notes, the legend of the short headers shown, and which columns ``kept`` leaves out."""
        shown = [self.columns[i].header for i in kept]
        lines = [*self.notes, legend(shown), hidden_note(self.columns, kept)]
        return "\n".join(line for line in lines if line)

    def __getitem__(self, header: str) -> list[str]:
        """The cells of one column (for tests and callers that pick a value)."""
        i = self.headers.index(header)
        return [r[i] for r in self.rows]


def _num(v: Any) -> Any:
    """A float for numbers, None for missing (pandas NA, NaN, None); other values unchanged."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return None if math.isnan(f) else f


def _decimals(records: Sequence[dict], name: str) -> int:
    return column_decimals(_num(r.get(k)) for r in records for k in (name, f"{name}_lo", f"{name}_hi"))


def _ci(row: dict, name: str, decimals: int) -> str:
    return fmt_ci(_num(row.get(name)), _num(row.get(f"{name}_lo")), _num(row.get(f"{name}_hi")), decimals=decimals)


def _scale(v: Any) -> str:
    return scale_text(_num(v))


def _int(v: Any) -> str:
    v = _num(v)
    return MISSING if v is None else str(int(v))


def legend(headers: Sequence[str]) -> str:
    """What the short headers among ``headers`` stand for (the csv/json column names)."""
    pairs = [f"{short} = {long}" for long, short in SHORT.items() if short in headers]
    return f"{', '.join(pairs)} (csv/json names)" if pairs else ""


def scope_note(frame: pd.DataFrame) -> str:
    """What the intervals in a view are (said under every table)."""
    import pandas as pd

    scopes = set(frame.get("ci_scope", pd.Series(dtype=object)).dropna())
    if not scopes:
        return ""
    if scopes == {"seeds"}:
        return "[lo, hi]: 95% interval over seeds (t on seed means; ratios on the log scale)"
    return "[lo, hi]: 95% interval WITHIN ONE SEED only (batch noise); add seeds for an interval over seeds"


def _metric_columns(records: list[dict], objectives: list[str], extras: Sequence[tuple[str, int]]) -> list:
    """(Col, cell function) for the objectives (rank 0, with intervals) and the extra metrics."""
    out = []
    for m in objectives:
        dec = _decimals(records, m)
        # left: 'value [lo, hi]' cells differ in length, and the values should line up
        out.append((Col(SHORT.get(m, m), "left"), lambda r, m=m, d=dec: _ci(r, m, d)))
    for m, rank in extras:
        if m in objectives or (m == "train_grad_ratio" and "dilution_train" in objectives):
            continue  # dilution_train is -log of this ratio: showing both would say one thing twice
        if m in EVAL_COLUMNS and all(_num(r.get(m)) is None for r in records):
            continue  # the study was not evaluated: no column of dashes
        dec = _decimals(records, m)
        out.append((Col(SHORT.get(m, m), "right", rank), lambda r, m=m, d=dec: fixed(_num(r.get(m)), d)))
    return out


def _view(columns: list, records: list[dict], notes: Sequence[str]) -> TableView:
    cols = tuple(c for c, _ in columns)
    rows = [[cell(r) for _, cell in columns] for r in records]
    return TableView(cols, rows, tuple(n for n in notes if n))


_TRIAL_EXTRAS = (
    ("train_grad_ratio", 1),
    ("image_auroc", 2),
    ("pixel_auroc", 2),
    ("loss_slope", 2),
    ("grad_ratio_init", 3),
    ("loss_last", 4),
)


def trials_view(frame: pd.DataFrame, objectives: list[str]) -> TableView:
    """One line per trial: number, fix, scale, the objectives with intervals, then what fits."""
    records = frame.to_dict(orient="records")
    all_ranked = all(bool(r["ranked"]) for r in records)

    def seeds(r: dict) -> str:
        text = f"{r['n_seeds']}/{r['seeds_wanted']}"
        return text if r["ranked"] else f"{r['status']} {text}"

    columns = [
        (Col("#", "right"), lambda r: _int(r["trial_number"])),
        (Col("fix"), lambda r: str(r["fix"])),
        (Col("scale", "right"), lambda r: _scale(r["scale"])),
        # every trial complete: the seed count says little; an unranked one is news, but the objectives
        # come first when the terminal is narrow (the note below says how many are unranked)
        (Col("seeds", "left", 3 if all_ranked else 1), seeds),
        *_metric_columns(records, objectives, _TRIAL_EXTRAS),
    ]
    unranked = sum(1 for r in records if not r["ranked"])
    note = (
        f"{unranked} of {len(records)} trials not ranked (failed, pruned or incomplete): seeds says which"
        if unranked
        else ""
    )
    return _view(columns, records, [scope_note(frame), note])


def _fix_label(r: dict) -> str:
    """A fix with its best trial's scale ('tanh-gate s=0'), as the figures label it."""
    scale = _num(r.get("scale"))
    return str(r["fix"]) if scale is None else f"{r['fix']} s={scale_text(scale)}"


def recommendation_line(records: Sequence[dict], primary: str) -> str:
    """The recommended fix in one line (the rule ``ablate report`` uses), or why there is none."""
    chosen = next((r for r in records if r.get("recommended") is True), None)
    if chosen is None:
        return "recommended: none yet (no ranked trial with every objective known)"
    trial = _int(chosen["best_trial"])
    return f"recommended: {_fix_label(chosen)} (trial {trial}), the front's best on {primary}"


def fixes_view(frame: pd.DataFrame, objectives: list[str]) -> TableView:
    """The references, then each fix's best ranked trial, best first, with intervals, a verdict
    against the baseline, and the recommended fix named under the table."""
    records = frame.to_dict(orient="records")
    primary = objectives[0] if objectives else "adapter_gain"

    def none_ranked(r: dict) -> bool:
        return r["fix"] not in REFERENCES and _num(r.get("best_trial")) is None

    metric_cols = []
    for col, cell in _metric_columns(records, objectives, _TRIAL_EXTRAS):
        unranked = col.rank == 0  # an objective's cell says why a fix has no value

        def guarded(r: dict, cell=cell, unranked=unranked) -> str:
            if not none_ranked(r):
                return cell(r)
            return f"({int(r.get('n_unranked') or 0)} unranked)" if unranked else MISSING

        metric_cols.append((col, guarded))
    columns = [
        (Col("#", "right"), lambda r: _int(r.get("rank"))),
        (Col("fix"), lambda r: r["fix"] if none_ranked(r) else _fix_label(r)),
        *metric_cols[: len(objectives)],
        (Col("vs base"), lambda r: MISSING if _num(r.get("vs_baseline")) is None else str(r["vs_baseline"])),
        (Col("seeds", "right", 3), lambda r: MISSING if none_ranked(r) else _int(r["n_seeds"])),
        *metric_cols[len(objectives) :],
    ]
    notes = [
        recommendation_line(records, primary),
        f"vs base: {primary} minus the baseline's, paired by seed (95% interval vs 0)",
        f"#: rank by {primary}, best first (each fix's best ranked trial; s: its scale)",
        scope_note(frame),
    ]
    return _view(columns, records, notes)


_ROLE_ORDER = {"stage1": -1, "baseline": 0, "control": 1, "trial": 2}


def runs_view(frame: pd.DataFrame) -> TableView:
    """One line per run, the references first; an ``mfu`` column only where some run has one."""
    records = frame.to_dict(orient="records")
    records.sort(
        key=lambda r: (
            _ROLE_ORDER.get(str(r.get("role")), 3),
            _num(r.get("trial_number")) or 0,
            _num(r.get("seed")) or 0,
            _num(r.get("run_id")) or 0,
        )
    )
    with_mfu = any(_num(r.get("mfu")) is not None for r in records)

    def trial(r: dict) -> str:
        return MISSING if str(r.get("role")) in RUN_LABELS else _int(r.get("trial_number"))

    def fix(r: dict) -> str:
        return RUN_LABELS.get(str(r.get("role")), str(r["fix"]))

    def metric(name: str, header: str, rank: int) -> tuple:
        dec = column_decimals(_num(r.get(name)) for r in records)
        return (Col(header, "right", rank), lambda r: fixed(_num(r.get(name)), dec))

    columns = [
        (Col("run", "right"), lambda r: _int(r["run_id"])),
        (Col("trial", "right"), trial),
        (Col("seed", "right"), lambda r: _int(r["seed"])),
        (Col("fix"), fix),
        (Col("scale", "right", 1), lambda r: _scale(r.get("scale"))),
        (Col("status", "left", 1), lambda r: str(r["status"])),
        metric("adapter_gain", "gain", 0),
        metric("train_grad_ratio", "R train", 1),
        metric("train_grad_ratio_ac1", "R ac1", 2),
        metric("loss_slope", "slope", 2),
        metric("grad_ratio_init", "R @0", 3),
        *([metric("mfu", "mfu", 3)] if with_mfu else []),
        metric("loss_last", "last loss", 4),
        metric("wall_s", "wall s", 4),
        *([(Col("worker", "left", 5), worker_text)] if any(r.get("worker_host") for r in records) else []),
    ]
    return _view(
        columns,
        records,
        [
            "the no-branch baseline and the frozen control run once per seed, for every trial",
            "R ac1: lag-1 autocorrelation of R train's per-step ratios; its within-seed interval is widened for it"
            if any(_num(r.get("train_grad_ratio_ac1")) is not None for r in records)
            else "",
        ],
    )


def worker_text(run: dict) -> str:
    """Where a run ran, from its worker columns: 'host:pid launcher job devices' ('-' when not recorded)."""
    if not run.get("worker_host"):
        return MISSING
    parts = [f"{run['worker_host']}:{_int(run.get('worker_pid'))}", str(run.get("worker_launcher") or MISSING)]
    if run.get("worker_job"):
        parts.append(str(run["worker_job"]))
    parts.append(f"devices {run.get('worker_devices') or MISSING}")
    return " ".join(parts)


def studies_view(rows: Sequence[Any], wide: bool = False) -> TableView:
    """``query --studies`` from the catalog's rows: times to the minute and short hashes unless wide."""
    hash_len = None if wide else 12

    def short(v: Any) -> str:
        return MISSING if v is None else str(v)[:hash_len]

    columns = [
        (Col("name"), lambda r: str(r.name)),
        (Col("created", "left"), lambda r: r.created_at.isoformat(sep=" ", timespec="seconds" if wide else "minutes")),
        (Col("trials", "right"), lambda r: str(r.n_trials)),
        (Col("runs", "right"), lambda r: str(r.n_runs)),
        (Col("spec_hash", "left", 1), lambda r: short(r.spec_hash)),
        (Col("git_revision", "left", 2), lambda r: short(r.git_revision)),
        (Col("optuna_study_name", "left", 3), lambda r: str(r.optuna_study_name)),
    ]
    note = "trials: complete ones (every run complete, Optuna COMPLETE)" + (
        "" if wide else "; hashes shortened (--wide: in full)"
    )
    return TableView(tuple(c for c, _ in columns), [[cell(r) for _, cell in columns] for r in rows], (note,))


def frame_view(frame: pd.DataFrame) -> TableView:
    """Any frame (``--sql``, an empty result), float columns by the one rule; when it is too wide the
    rightmost columns go first (the query's own order says what matters), the first always stays."""
    columns = []
    for rank, name in enumerate(frame.columns):
        series = frame.iloc[:, rank]  # by position: a query may name two columns alike (a.*, b.*)
        kind = series.dtype.kind
        if kind == "f":
            dec = column_decimals(_num(v) for v in series)
            columns.append((Col(str(name), "right", rank), lambda v, d=dec: fixed(_num(v), d)))
        else:
            columns.append((Col(str(name), "right" if kind in "iu" else "left", rank), lambda v: fmt(_num(v))))
    rows = [[cell(v) for (_, cell), v in zip(columns, row, strict=True)] for row in frame.itertuples(index=False)]
    return TableView(tuple(c for c, _ in columns), rows)


def probe_view(results: Sequence[Any], first: str, groups: Sequence[str]) -> TableView:
    """``ablate probe`` (one row per fix) or the bypass probe points of ``ablate train`` (one row per
    step): R with its interval for the judged group, the other groups' R, the share, the cosine."""
    g = results[0].group
    others = [o for o in groups if o != g]
    r_dec = column_decimals(v for r in results for v in (r.grad_ratio, *r.grad_ratio_ci))
    o_dec = column_decimals(r.groups[o].ratio for r in results for o in others)
    s_dec = column_decimals(r.groups[g].share for r in results)
    c_dec = column_decimals((r.feature_cosine for r in results), digits=4)
    columns = (
        [(Col("fix"), lambda r: r.fix), (Col("scale", "right"), lambda r: _scale(r.scale))]
        if first == "fix"
        else [(Col(first, "right"), lambda r: str(r.step))]
    )
    columns += [
        (Col("R [95%]"), lambda r: fmt_ci(r.grad_ratio, *r.grad_ratio_ci, decimals=r_dec)),
        *[(Col(o, "right", 1), lambda r, o=o: fixed(r.groups[o].ratio, o_dec)) for o in others],
        (Col("share", "right", 2), lambda r: fixed(r.groups[g].share, s_dec)),
        (Col("cos", "right", 2), lambda r: fixed(r.feature_cosine, c_dec)),
        (Col("verdict"), lambda r: r.verdict),
    ]
    note = (
        f"R: |grad {g}| with / without the branch [95% within this seed]; "
        f"{', '.join(others)}: R of those groups; "
        f"share: |g_{g}|^2 / (|g_{g}|^2 + |g_branch|^2); cos: final features with vs without"
    )
    return TableView(tuple(c for c, _ in columns), [[cell(r) for _, cell in columns] for r in results], (note,))


def classes_view(frame: pd.DataFrame) -> TableView:
    """One line per evaluated run and class (``query --classes``)."""
    records = frame.to_dict(orient="records")
    columns = [
        (Col("run", "right"), lambda r: _int(r["run_id"])),
        (Col("seed", "right", 2), lambda r: _int(r["seed"])),
        (Col("fix"), lambda r: str(r["fix"])),
        (Col("class"), lambda r: str(r["class_name"])),
        *[
            (Col(SHORT[m], "right", 1 if m.endswith("_ap") else 0), lambda r, m=m: fixed(_num(r.get(m)), 3))
            for m in EVAL_COLUMNS
        ],
        (Col("n (bad)", "right", 3), lambda r: f"{_int(r.get('images'))} ({_int(r.get('anomalous_images'))})"),
    ]
    return _view(columns, records, [CLASSES_NOTE])


_ENDS = ("", "_lo", "_hi")


def compare_view(c: Any) -> TableView:
    """``ablate compare A B``: per fix, each objective in A and in B with its interval and B - A with
    its interval, the primary objective first; under the table, which studies, how the differences
    were taken, and which spec keys and code versions differ (``c``: an ablate.compare.Comparison)."""
    from ablate.compare import records as compare_records
    from ablate.specdiff import changes_text

    records = compare_records(c)

    def test(r: dict) -> str:
        if r["method"] is None:
            return "only A" if r["a_n_seeds"] else "only B"
        if r["method"] == "paired":
            return f"paired ({r['a_n_seeds']})"
        return f"Welch ({r['a_n_seeds']}, {r['b_n_seeds']})"

    columns: list = [(Col("fix"), lambda r: str(r["fix"]))]
    for i, m in enumerate(c.objectives):
        short = SHORT.get(m, m)
        dec = column_decimals(_num(r.get(f"{m}_{side}{end}")) for r in records for side in "ab" for end in _ENDS)
        d_dec = column_decimals(_num(r.get(f"{m}_diff{end}")) for r in records for end in _ENDS)
        # narrow terminals keep the difference and its verdict; the two sides' values go first
        rank = 0 if i == 0 else 3
        columns += [
            (Col(f"{short} A", "left", rank + 1), lambda r, m=m, d=dec: _ci(r, f"{m}_a", d)),
            (Col(f"{short} B", "left", rank + 1), lambda r, m=m, d=dec: _ci(r, f"{m}_b", d)),
            (Col(f"{short} B-A", "left", rank), lambda r, m=m, d=d_dec: _ci(r, f"{m}_diff", d)),
        ]
        if i == 0:
            columns.append((Col("B vs A"), lambda r, m=m: r[f"{m}_verdict"] or MISSING))
            columns.append((Col("test", "left", 2), test))
    columns += [
        (Col("s A", "right", 5), lambda r: _scale(r["a_scale"])),
        (Col("s B", "right", 5), lambda r: _scale(r["b_scale"])),
    ]
    a, b = c.a, c.b
    versions = "; ".join(f"{f} {va or '-'} -> {vb or '-'}" for f, va, vb in c.version_changes)
    notes = [
        f"A: study {a.study} in {a.storage}; B: study {b.study} in {b.storage}"
        if a.storage != b.storage
        else f"A: study {a.study}; B: study {b.study} (in {a.storage})",
        "B-A: each seed's value in B minus A's, mean and 95% interval: paired by seed where both ran the same "
        "seeds (test: paired), else Welch's interval (test: Welch); B vs A: by the objective's direction",
        "each row: the references, or each study's best ranked trial of the fix (s: its scale)",
        f"spec keys that differ: {changes_text(list(c.spec_changes))}" if c.spec_changes else "spec: the same keys",
        f"code versions that differ: {versions}" if versions else "code versions: the same",
    ]
    return _view(columns, records, notes)
