"""The report's text: a :class:`~ablate.report.model.Report` composed into a list of blocks
(headings, paragraphs, bullet lists, tables, figures, code) that the Markdown and HTML writers
render, so both files say exactly the same thing.

Every number here comes from the Report (read from the database); the words around them are chosen
by comparing those numbers (an interval that holds 0, two intervals that overlap, a ratio below the
probe threshold), never typed in. Inline markup in text is limited to ``code`` and **bold**.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ablate import textfmt
from ablate.eval import EVAL_METRICS
from ablate.objectives import OBJECTIVES
from ablate.report.figures import CAPTIONS
from ablate.report.model import (
    BASELINE_LABEL,
    CONTROL_LABEL,
    ArmEvidence,
    Paired,
    Report,
    StepAutocorrelation,
)
from ablate.stats import (
    CHECKED_AUTOCORRELATION,
    HIGH_AUTOCORRELATION,
    LEVEL,
    RATIO_FLOOR,
    SCOPE_SEEDS,
    SCOPE_WITHIN,
    Interval,
    t_ppf,
)

# --------------------------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""


@dataclass(frozen=True)
class Figure:
    path: Path  # a PNG in the report's folder
    caption: str


@dataclass(frozen=True)
class Code:
    text: str
    language: str = ""


Block = Heading | Para | Bullets | Table | Figure | Code


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)


# ------------------------------------------------------------------------------------------ numbers

PCT = f"{LEVEL:.0%}"  # the intervals' level, as the report writes it


def num(v: float | int | None) -> str:
    """A number in prose, by the CLI's one rule (ablate/textfmt.py): three significant digits in
    fixed point, '-' when missing; integers as they are."""
    return textfmt.number(v)


def _has_bounds(iv: Interval) -> bool:
    return math.isfinite(iv.lo) and math.isfinite(iv.hi)


def ci(iv: Interval, decimals: int | None = None) -> str:
    """'estimate [lo, hi]' with one number of decimals (the CLI's ``value [lo, hi]`` cell), or the
    estimate alone when there is no interval."""
    if not _has_bounds(iv):
        return textfmt.number(iv.estimate) if decimals is None else textfmt.fixed(iv.estimate, decimals)
    return textfmt.interval(iv.estimate, iv.lo, iv.hi, decimals)


def paired_ci(iv: Interval, decimals: int | None = None) -> str:
    """An interval over seeds: 'one seed: no interval' when there is one seed."""
    if iv.n == 0:
        return "n/a"
    if iv.n == 1 or not _has_bounds(iv):
        return f"{ci(iv, decimals)} (one seed: no interval)"
    return f"{ci(iv, decimals)} (n = {iv.n})"


scale_text = textfmt.scale_text


@dataclass(frozen=True)
class Num:
    """A number cell of a table: the column's numbers share one number of decimals, as in the CLI."""

    value: float | None


@dataclass(frozen=True)
class CI:
    """An interval cell ('v [lo, hi]'); ``paired`` adds its seed count ('(n = 3)')."""

    iv: Interval
    paired: bool = False


def _numbers(cell: object) -> list[float | None]:
    if isinstance(cell, Num):
        return [cell.value]
    if isinstance(cell, CI):
        return [cell.iv.estimate, cell.iv.lo, cell.iv.hi]
    return []


def table(header: tuple[str, ...], rows: Sequence[Sequence[object]], note: str = "") -> Table:
    """A Table whose Num and CI cells are written column by column: each column's numbers share the
    decimals that give its largest value three significant digits (ablate/textfmt.py)."""
    rows = [tuple(r) for r in rows]
    decimals = [
        textfmt.column_decimals(v for r in rows for v in _numbers(r[j]) if v is not None) for j in range(len(header))
    ]

    def text(cell: object, d: int) -> str:
        if isinstance(cell, Num):
            return textfmt.fixed(cell.value, d)
        if isinstance(cell, CI):
            return paired_ci(cell.iv, d) if cell.paired else ci(cell.iv, d)
        return str(cell)

    return Table(header, tuple(tuple(text(c, d) for c, d in zip(r, decimals)) for r in rows), note)


def arm_name(fix: str, scale: float, trial: int | None = None) -> str:
    s = f"`{fix}`"
    if not math.isnan(scale):
        s += f" at scale {num(scale)}"
    if trial is not None:
        s += f" (trial {trial})"
    return s


def _holds(iv: Interval, value: float) -> bool:
    return _has_bounds(iv) and iv.lo <= value <= iv.hi


def _overlap(a: Interval, b: Interval) -> bool:
    return _has_bounds(a) and _has_bounds(b) and a.lo <= b.hi and b.lo <= a.hi


def _scope_words(arms: Sequence[ArmEvidence]) -> str:
    scopes = {a.ci_scope for a in arms if a.ci_scope}
    if scopes <= {SCOPE_SEEDS}:
        return f"[lo, hi]: {PCT} Student-t interval over seeds (on the logs for ratios)."
    if SCOPE_WITHIN in scopes:
        return (
            f"[lo, hi]: {PCT} interval WITHIN ONE SEED (batch or step-to-step noise): it says how well that "
            "seed is measured, not how another seed would come out."
        )
    return "No intervals: one value per arm."


# ------------------------------------------------------------------------------------------ compose


def compose(report: Report, figures: dict[str, Path], source: str, generated: str, program: str = "ablate") -> Document:
    """The whole report as blocks; ``figures`` are {kind: PNG path}, ``source`` the database URL shown,
    ``program`` the command its "reproduce" section runs ablate with."""
    s = report.setting
    doc = Document(f"Gradient dilution: study {s.study}")
    doc.add(
        Para(
            f"Written by `ablate report` from `{source}` on {generated}. Every number below is read from that "
            "database (the same summaries `ablate query` prints); nothing is typed in."
        )
    )
    _question(doc, report)
    _brief(doc, report)
    _setting(doc, report)
    _evidence(doc, report, figures)
    _ranking(doc, report, figures)
    _paired(doc, report)
    _caveats(doc, report)
    _recommendation(doc, report)
    _more_figures(doc, figures)
    _excluded(doc, report)
    _reproduce(doc, report, source, program)
    return doc


def _question(doc: Document, r: Report) -> None:
    s = r.setting
    fixes = s.spec["search"].get("fixes")
    searched = ", ".join(f"`{f}`" for f in fixes) if fixes else "every registered fix"
    doc.add(
        Heading(2, "1. The question"),
        Para(
            s.wording.question(s.spec)
            + " This study asks, with paired runs and intervals: does the branch dilute the gradient reaching "
            "the trained modules, and which way of joining it keeps what they learn? Joins searched: "
            f"{searched}. The judged group is `{s.judged_group}`; every arm is compared with the no-branch "
            "baseline of the same seed."
        ),
    )


def _ratio_verdict(iv: Interval, what: str) -> str:
    """Whether a ratio against the baseline is below, above or not resolved from 1, by its interval."""
    if not _has_bounds(iv):
        return f"{what} {num(iv.estimate)} (no interval)"
    text = f"{what} {ci(iv)}" + (" (interval within one seed)" if iv.scope == SCOPE_WITHIN else "")
    if iv.hi < 1:
        return f"{text}, below 1"
    if iv.lo > 1:
        return f"{text}, above 1"
    return f"{text}, which holds 1"


def _brief(doc: Document, r: Report) -> None:
    doc.add(Heading(2, "2. In brief"))
    bare = r.arm("none")  # the original report's join: the branch added at full scale
    if bare is not None and bare.trial_number is not None:
        g = r.setting.judged_group
        doc.add(
            Para(
                f"Does the branch dilute the adapters' gradient? Added at full scale (`none`, trial "
                f"{bare.trial_number}), the `{g}` adapters' gradient during training against the baseline run of "
                f"the same seed is {_ratio_verdict(bare.train_grad_ratio, 'R train')}; the step-0 bypass probe "
                f"(the original report's measurement) gives {_ratio_verdict(bare.grad_ratio_init, 'R@0')}; and "
                f"in what they learned, {_gain_verdict(bare.adapter_gain_diff)}."
            )
        )
    rec = r.recommendation
    if rec is None:
        doc.add(Para("No trial is ranked (complete, every seed): there is nothing to compare or recommend yet."))
        return
    t = rec.trial
    doc.add(
        Para(
            f"Recommended join: **{arm_name(t.fix, t.scale, t.trial_number)}**, on the Pareto front and best on "
            f"`{rec.primary}` ({ci(t.objectives[rec.primary])}, {t.n_seeds} seed{'s' * (t.n_seeds != 1)}). "
            f"Against the no-branch baseline, paired by seed: adapter gain difference "
            f"{paired_ci(rec.paired.gain_diff)}. {_told_apart(rec)} See the caveats (section 7) before acting on it."
        )
    )


def _told_apart(rec) -> str:
    if rec.runner_up is None:
        return "No other fix is ranked, so there is nothing to tell it apart from."
    ru = rec.runner_up
    v = rec.versus_runner_up
    name = arm_name(ru.fix, ru.scale, ru.trial_number)
    if v is None or v.n == 0:
        return f"The runner-up is {name}; they share no seed to compare on."
    if v.n == 1 or not _has_bounds(v):
        return (
            f"Against the runner-up {name}: {paired_ci(v)} on `{rec.primary}`, so the study cannot say how sure it is."
        )
    if _holds(v, 0.0):
        return (
            f"Against the runner-up {name}, paired by seed: {paired_ci(v)} on `{rec.primary}`; the interval "
            "holds 0, so the study cannot tell the two apart."
        )
    return f"Against the runner-up {name}, paired by seed: {paired_ci(v)} on `{rec.primary}`; the interval excludes 0."


def _setting(doc: Document, r: Report) -> None:
    s = r.setting
    spec = s.spec

    def val(section: str, key: str) -> str:
        text = textfmt.spec_value(spec[section][key])
        return text + (" (default)" if f"{section}.{key}" in s.defaulted else "")

    objectives = ", ".join(f"`{m}` ({s.directions[m]})" for m in s.objectives)
    scales = spec["search"].get("scale")
    per_fix = spec["search"].get("scale_per_fix") or {}
    v = val
    rows = [
        ("study", f"`{s.study}`" + (f": {s.description}" if s.description else "")),
        ("created", str(s.created_at) if s.created_at else "n/a"),
        ("spec hash", f"`{s.spec_hash[:16]}`"),
        *s.wording.setting_rows(spec, val),
        (
            "training",
            f"{v('training', 'steps')} Adam steps, lr {v('training', 'lr')}, "
            f"device {v('training', 'device')}, pack {v('training', 'pack')}",
        ),
        (
            "probe",
            f"{v('probe', 'batches')} held-out batches, adapter gain on {v('probe', 'gain_batches')}, "
            f"every {v('probe', 'every')} steps, threshold {v('probe', 'threshold')}, "
            f"judged group {v('probe', 'group')}",
        ),
        (
            "search",
            (", ".join(f"`{f}`" for f in spec["search"].get("fixes", [])) or "every registered fix (default)")
            + (f"; scale {_range(scales)}" if isinstance(scales, dict) else "; scale range: the spec's default")
            + "".join(f"; {fix}: {_range(rng)}" for fix, rng in per_fix.items() if isinstance(rng, dict)),
        ),
        (
            "study",
            f"{v('study', 'trials')} trials wanted, {r.n_trials} stored; seeds {v('study', 'seeds')}; "
            f"sampler {v('study', 'sampler')}; frozen control {v('study', 'frozen_control')}",
        ),
        ("objectives", objectives),
        (
            "runs",
            f"{s.n_runs} stored; steps per complete run: {', '.join(map(str, s.run_steps)) or 'n/a'}; "
            f"arms trained side by side: up to {s.packed}; total wall time {num(s.wall_s)} s",
        ),
        ("versions", ", ".join(f"{k} {x or 'n/a'}" for k, x in s.versions.items())),
        ("git revision", f"`{s.git_revision}`" if s.git_revision else "n/a"),
        ("devices of the runs", ", ".join(s.devices) or "n/a"),
        ("workers", _workers_text(s.workers)),
    ]
    if s.hardware:
        for h in s.hardware:
            parts = [f"{h.get('platform', '?')}, {h.get('machine', '?')}", f"{h.get('cpu_count', '?')} CPU cores"]
            if h.get("processor"):
                parts.append(str(h["processor"]))
            if h.get("gpu"):
                parts.append(f"GPU {h['gpu']} ({h.get('gpu_memory_gib', '?')} GiB, CUDA {h.get('cuda', '?')})")
            rows.append((f"hardware ({h.get('host', '?')})", "; ".join(parts)))
    else:
        rows.append(("hardware", f"host {s.host or 'n/a'}; no hardware description stored (an older ablate ran it)"))
    doc.add(
        Heading(2, "3. Setting"),
        Para("From the spec stored with the study (\"(default)\": not written in the spec, the spec's default) and "
             "the study's and runs' records."),
        Table(("what", "value"), tuple(rows)),
    )  # fmt: skip


def _workers_text(workers: tuple[tuple[str, int], ...], shown: int = 8) -> str:
    """'2 workers: vm:41 local 1/2 devices 0 (5 runs); ...' (host:pid launcher job devices)."""
    if not workers:
        return "not recorded (an older ablate ran the runs)"
    listed = "; ".join(f"{w} ({n} run{'s' if n != 1 else ''})" for w, n in workers[:shown])
    more = f"; and {len(workers) - shown} more" if len(workers) > shown else ""
    return f"{len(workers)} worker{'s' if len(workers) != 1 else ''}: {listed}{more}"


def _range(rng: dict) -> str:
    """A spec scale range as '[min, max] (log)'; missing ends are the spec's defaults."""
    lo, hi = rng.get("min", "default"), rng.get("max", "default")
    scale = "log" if rng.get("log", True) else "linear"
    return f"[{lo}, {hi}] ({scale})"


def _evidence_rows(r: Report) -> list[ArmEvidence]:
    return [e for e in r.evidence if e.reference or e.trial_number is not None]


def _arm_cells(e: ArmEvidence) -> tuple[str, ...]:
    trial = "-" if e.trial_number is None else str(e.trial_number)
    return (e.label, trial, scale_text(e.scale), str(e.n_seeds))


ARM_HEADER = ("arm", "trial", "scale", "seeds")


def _evidence(doc: Document, r: Report, figures: dict[str, Path]) -> None:
    s = r.setting
    g = s.judged_group
    others = [o for o in s.groups if o != g]
    arms = _evidence_rows(r)
    note = _scope_words(arms)
    doc.add(
        Heading(2, "4. Evidence per fix"),
        Para(
            f"One row per fix: its best ranked trial by `{s.objectives[0]}` (as `ablate query --group-by fix`), "
            f"over that trial's {len(s.seeds)} seed{'s' * (len(s.seeds) != 1)}; and the two references over their "
            f"seeds: the no-branch baseline (`{BASELINE_LABEL}`) and the frozen-adapter control "
            f"(`{CONTROL_LABEL}`, the `{g}` group never updated: the known-bad case). Ratios are geometric means "
            "over seeds. " + note
        ),
    )
    unranked = [e for e in r.evidence if not e.reference and e.trial_number is None]
    if unranked:
        doc.add(
            Para(
                "Fixes with no ranked trial (not shown): "
                + ", ".join(f"`{e.label}` ({e.n_unranked} unranked)" for e in unranked)
                + "."
            )
        )

    doc.add(
        Heading(3, "4.1 Bypass probe at step 0, per adapter group"),
        Para(
            f"R@0: the adapters' gradient norm with the branch / with it bypassed, same weights and held-out "
            f"batches (the original report's measurement, here with an interval). share: the `{g}` group's share "
            f"of the squared gradient against the branch's. Verdict: R@0 of `{g}` >= {num(s.threshold)} is OK."
        ),
        table(
            (*ARM_HEADER, f"R@0 {g} [{PCT}]", *(f"R@0 {o}" for o in others), f"share {g}", "verdict"),
            tuple(
                (*_arm_cells(e), CI(e.grad_ratio_init), *(Num(e.grad_ratio_init_groups[o]) for o in others),
                 Num(e.grad_share_init_groups[g]), e.verdict or "-")
                for e in arms
            ),
            note,
        ),
    )  # fmt: skip
    dil = "dilution_train" in s.objectives
    doc.add(
        Heading(3, "4.2 Training-time gradient against the baseline"),
        Para(
            "R train: geometric mean over steps after warm-up of the group's gradient norm in the arm's run / in "
            "the baseline run of the same seed at the same step (< 1: the branch dilutes the adapters' gradient "
            "during training)." + (" dilution_train = max(0, -log R train of the judged group)." if dil else "")
        ),
        table(
            (*ARM_HEADER, f"R train {g} [{PCT}]", *(f"R train {o}" for o in others),
             *((f"dilution_train [{PCT}]",) if dil else ())),
            tuple(
                (*_arm_cells(e), CI(e.train_grad_ratio), *(Num(e.train_grad_ratio_groups[o]) for o in others),
                 *((CI(e.objectives["dilution_train"]),) if dil else ()))
                for e in arms
            ),
            note,
        ),
    )  # fmt: skip
    doc.add(
        Heading(3, "4.3 Update sizes against the baseline"),
        Para(
            "R update: the same ratio for the update-to-weight ratio ||dθ||/||θ|| per step, what Adam actually did "
            "(Adam normalises gradient scale, so a uniform gradient shrink alone changes little here; frozen "
            f"adapters score the floor {num(RATIO_FLOOR)})."
        ),
        table(
            (*ARM_HEADER, f"R update {g} [{PCT}]", *(f"R update {o}" for o in others)),
            tuple((*_arm_cells(e), CI(e.train_update_ratio), *(Num(e.train_update_ratio_groups[o]) for o in others))
                  for e in arms),
            note,
        ),
    )  # fmt: skip
    doc.add(
        Heading(3, "4.4 Forward disruption at step 0"),
        Para(
            "How much the branch changes the forward pass before any training, per seed then over seeds: the loss "
            "with the branch minus without it (same weights and batches), the cosine between the final features "
            "with and without it, and the norm inflation |x + join(c)| / |x| where it joins."
        ),
        table(
            (*ARM_HEADER, f"loss with - without [{PCT}]", f"feature cosine [{PCT}]", f"norm inflation [{PCT}]"),
            tuple((*_arm_cells(e), CI(e.loss0_delta), CI(e.feature_cosine), CI(e.norm_inflation)) for e in arms),
            f"[lo, hi]: {PCT} t-interval over the seeds' values (one seed: no interval).",
        ),
    )  # fmt: skip
    doc.add(
        Heading(3, "4.5 What the adapters learned"),
        Para(
            f"adapter gain: held-out loss with the `{g}` group reset to its initial weights minus the loss as "
            "trained (> 0: what it learned helps; exactly 0 for the frozen control). gain - baseline is paired "
            "with the baseline by seed and held-out batch. loss slope: least-squares slope per 100 steps after "
            "warm-up (negative = learning)."
        ),
        table(
            (*ARM_HEADER, f"adapter gain [{PCT}]", "gain / baseline", f"gain - baseline [{PCT}]", "loss slope",
             "slope - baseline"),
            tuple(
                (*_arm_cells(e), CI(e.adapter_gain), Num(e.adapter_gain_rel), CI(e.adapter_gain_diff),
                 Num(e.loss_slope), Num(e.loss_slope_rel))
                for e in arms
            ),
            note,
        ),
    )  # fmt: skip
    doc.add(Heading(3, "4.6 Detection quality (AUROC)"))
    evaluated = [e for e in arms if e.auroc]
    if not evaluated:
        doc.add(
            Para(
                "Not evaluated: this database stores no AUROC for any run of the study, so nothing here says how "
                "well a fix detects anomalies; the ranking rests on the adapter gain and the gradient measures."
            )
        )
    else:
        cols = sorted({c for e in evaluated for c in e.auroc})
        doc.add(
            table(
                (*ARM_HEADER, *(f"{c} [{PCT}]" for c in cols)),
                tuple(
                    (*_arm_cells(e), *(CI(e.auroc[c]) if c in e.auroc else "not evaluated" for c in cols))
                    for e in arms
                ),
                f"[lo, hi]: {PCT} t-interval over the seeds' values.",
            )
        )  # fmt: skip
        checkpointed = [e for e in arms if e.eval_best]
        if checkpointed:
            ms = [m for m in EVAL_METRICS if any(m in e.eval_best for e in checkpointed)]
            doc.add(
                Para(
                    "These runs were also evaluated during training (`eval.every`), as AA-CLIP's test.py scores "
                    "every epoch's checkpoint: the best of each run's evaluations (the end's included) and the "
                    "last (the end's, which the table above and the ranking use). The best is chosen on the test "
                    "set itself, so it flatters the arm."
                ),
                table(
                    (*ARM_HEADER, *(f"{m} {which} [{PCT}]" for m in ms for which in ("best", "last"))),
                    tuple(
                        (*_arm_cells(e), *(CI(d[m]) if m in d else "-" for m in ms for d in (e.eval_best, e.eval_last)))
                        for e in checkpointed
                    ),
                    f"[lo, hi]: {PCT} t-interval over the seeds' values.",
                ),
            )
        if "eval" in figures:
            doc.add(Figure(figures["eval"], CAPTIONS["eval"]))
    for kind in ("loss", "grad-norms"):
        if kind in figures:
            doc.add(Figure(figures[kind], CAPTIONS[kind]))


def _obj_header(r: Report) -> tuple[str, ...]:
    return tuple(
        f"{m} ({'max' if r.setting.directions[m] == 'maximize' else 'min'}) [{PCT}]" for m in r.setting.objectives
    )


def _ranking(doc: Document, r: Report, figures: dict[str, Path]) -> None:
    s = r.setting
    doc.add(Heading(2, "5. The fixes ranked on the Pareto front"))
    if not r.ranked:
        doc.add(Para("No ranked trial has a value for every objective: nothing to rank."))
        return
    objectives = ", ".join(f"`{m}` ({s.directions[m]}: {OBJECTIVES[m].meaning})" for m in s.objectives)
    doc.add(
        Para(
            f"Objectives: {objectives}. A trial is on the front (Pareto rank 1) when no other ranked trial is at "
            "least as good on every objective and better on one; rank 2 is the front once rank 1 is removed, and "
            f"so on. Within a rank, trials are ordered by `{s.objectives[0]}`. Only ranked trials (complete, every "
            f"seed) take part: {len(r.ranked)} of {r.n_trials}. Each fix is placed by its best trial on "
            f"`{s.objectives[0]}` (ties: the better Pareto rank), as `ablate query --group-by fix` ranks them."
        ),
        table(
            ("place", "fix", "trial", "scale", "seeds", "Pareto rank", *_obj_header(r)),
            tuple(
                (str(i), t.fix, str(t.trial_number), scale_text(t.scale), str(t.n_seeds), str(t.pareto_rank),
                 *(CI(t.objectives[m]) for m in s.objectives))
                for i, t in enumerate(r.fix_ranking, 1)
            ),
            _scope_words(_evidence_rows(r)),
        ),
    )  # fmt: skip
    front = r.front
    doc.add(
        Para(
            f"The front holds {len(front)} trial{'s' * (len(front) != 1)}: "
            + "; ".join(arm_name(t.fix, t.scale, t.trial_number) for t in front)
            + "."
        )
    )
    base = r.arm(BASELINE_LABEL)
    if base is not None:
        doc.add(
            Para(
                "For reference, the no-branch baseline scores "
                + ", ".join(f"`{m}` {ci(base.objectives[m])}" for m in s.objectives)
                + " (it is the comparison, not a candidate)."
            )
        )
    if "tradeoff" in figures:
        doc.add(Figure(figures["tradeoff"], CAPTIONS["tradeoff"]))


def _paired_row(p: Paired) -> tuple[object, ...]:
    return (
        p.fix,
        str(p.trial_number),
        scale_text(p.scale),
        ", ".join(map(str, p.seeds)) or "none",
        CI(p.gain_diff, paired=True),
        CI(p.slope_diff, paired=True),
        CI(p.grad_ratio, paired=True),
        CI(p.update_ratio, paired=True),
    )


def _gain_verdict(iv: Interval) -> str:
    """What a paired gain difference against the baseline says, from its interval."""
    if iv.n < 2 or not _has_bounds(iv):
        return f"gain - baseline {paired_ci(iv)}"
    if iv.hi < 0:
        return f"the adapters learn less than without the branch ({ci(iv)}, below 0)"
    if iv.lo > 0:
        return f"the adapters learn more than without the branch ({ci(iv)}, above 0)"
    return f"no difference from the baseline is resolved ({ci(iv)} holds 0)"


def _paired(doc: Document, r: Report) -> None:
    doc.add(Heading(2, "6. Paired comparisons with the baseline across seeds"))
    if not r.paired:
        doc.add(Para("No ranked trial: nothing to compare."))
        return
    g = r.setting.judged_group
    doc.add(
        Para(
            "Each seed's run is compared with the no-branch baseline run of the same seed (same initial weights "
            "of every module but the branch, same training and held-out batches); the per-seed "
            f"differences are then averaged with a {PCT} t-interval over the seeds (n = seeds with both runs "
            "complete). Rows: each fix's best-placed trial and every trial on the front."
        ),
        table(
            ("fix", "trial", "scale", "seeds", "adapter gain - baseline", "loss slope - baseline",
             f"R train {g} (vs baseline)", f"R update {g} (vs baseline)"),
            tuple(_paired_row(p) for p in r.paired),
            f"Differences: mean [{PCT} t-interval] over seeds; ratios: geometric mean, interval on the logs.",
        ),
    )  # fmt: skip
    lines = [f"{arm_name(p.fix, p.scale, p.trial_number)}: {_gain_verdict(p.gain_diff)}." for p in r.paired]
    doc.add(Bullets(tuple(lines)))


def _caveats(doc: Document, r: Report) -> None:
    s = r.setting
    items = []
    n = len(s.seeds)
    if n == 1:
        items.append(
            "One seed: every interval is within that seed (batch or step-to-step noise) and says how well this one "
            "initialisation is measured, not how another would come out; the paired comparisons have no interval."
        )
    else:
        t = t_ppf(0.5 + LEVEL / 2, n - 1)
        items.append(
            f"{n} seeds: the intervals over seeds use a t quantile of {num(t)} ({n - 1} degree{'s' * (n != 2)} "
            "of freedom), so they are wide; more seeds narrow them fastest."
        )
    items += s.wording.caveats(s.spec)
    steps = ", ".join(map(str, s.run_steps)) or "n/a"
    items.append(f"Short training: each run has {steps} steps; what happens later in training is not measured.")
    items += s.wording.late_caveats(s.spec)
    if r.excluded:
        items.append(
            f"{len(r.excluded)} of {r.n_trials} trials are excluded (pruned, failed or incomplete; section 10) and "
            "never ranked."
        )
    base = r.arm(BASELINE_LABEL)
    if r.control_vs_baseline is None:
        items.append(
            "No frozen control was run, so nothing shows that the objectives score non-learning adapters worse."
        )
    else:
        for m, diff in r.control_vs_baseline.items():
            worse = diff.hi < 0 if s.directions[m] == "maximize" else diff.lo > 0
            said = f"the frozen control - the baseline on `{m}`, paired by seed: {paired_ci(diff)}"
            if diff.n < 2 or not _has_bounds(diff):
                items.append(f"Validity: {said}; without an interval this check cannot be judged.")
            elif worse:
                items.append(f"Validity: {said}; the objective scores adapters that never learn worse.")
            else:
                items.append(
                    f"Validity: {said}; here `{m}` does not score adapters that never learn worse, so on its own "
                    "it cannot show that a fix keeps the adapters learning."
                )
    if base is not None and _holds(base.adapter_gain, 0.0):
        items.append(
            f"The baseline's own adapter gain ({ci(base.adapter_gain)}) holds 0: even without the branch what the "
            "adapters learn is not resolved, so differences in gain are hard to read."
        )
    disagree = [
        e for e in r.evidence
        if not e.reference and e.trial_number is not None
        and math.isfinite(e.grad_ratio_init.estimate) and math.isfinite(e.train_grad_ratio.estimate)
        and (e.grad_ratio_init.estimate >= s.threshold) != (e.train_grad_ratio.estimate >= s.threshold)
    ]  # fmt: skip
    for e in disagree:
        items.append(
            f"`{e.label}`: the step-0 bypass probe (R@0 {num(e.grad_ratio_init.estimate)}) and the training-time "
            f"ratio (R train {num(e.train_grad_ratio.estimate)}) fall on different sides of the threshold "
            f"{num(s.threshold)}: a probe at initialisation alone would misjudge it."
        )
    if not any(e.auroc for e in r.evidence):
        items.append("AUROC was not evaluated: nothing here measures detection quality.")
    ac = r.step_autocorrelation
    if ac.n_high:
        items.append(_autocorrelation_caveat(ac, n))
    doc.add(Heading(2, "7. Caveats"), Bullets(tuple(items)))


def _autocorrelation_caveat(ac: StepAutocorrelation, n_seeds: int) -> str:
    """When runs' per-step ratios are strongly autocorrelated: their within-seed intervals are wide."""
    where = arm_name(ac.fix, ac.scale, ac.trial_number) + f", seed {ac.seed}"
    text = (
        f"Autocorrelated steps: in {ac.n_high} of {ac.n_runs} runs the per-step ratios to the baseline "
        f"(`train_grad_ratio`, `train_update_ratio`) have lag-1 autocorrelation >= {num(HIGH_AUTOCORRELATION)} "
        f"(up to {num(ac.highest)}, {where}), so they hold few independent steps: the runs' within-seed "
        "intervals (`ablate query --runs`, columns `*_ac1`) are widened for it and are wide"
    )
    text += (
        "; with one seed these are the intervals shown here, and more steps or seeds would narrow them."
        if n_seeds == 1
        else "; the intervals over seeds shown here already carry that noise."
    )
    if ac.highest > CHECKED_AUTOCORRELATION:
        text += f" Above {num(CHECKED_AUTOCORRELATION)} the within-seed interval's coverage is not checked."
    return text


def _recommendation(doc: Document, r: Report) -> None:
    doc.add(Heading(2, "8. Recommendation"))
    rec = r.recommendation
    if rec is None:
        doc.add(Para("No recommendation: no trial is ranked."))
        return
    t = rec.trial
    other = "; ".join(f"`{m}` {ci(t.objectives[m])}" for m in r.setting.objectives)
    items = [
        f"Use **{arm_name(t.fix, t.scale, t.trial_number)}**: on the Pareto front and the front's best on "
        f"`{rec.primary}`; {other} over {t.n_seeds} seed{'s' * (t.n_seeds != 1)}.",
        f"Against the no-branch baseline, paired by seed: adapter gain {paired_ci(rec.paired.gain_diff)}, "
        f"R train {paired_ci(rec.paired.grad_ratio)}: {_gain_verdict(rec.paired.gain_diff)}.",
        _told_apart(rec),
    ]
    apart, close, unknown = [], [], []
    for t, diff in rec.versus_fixes:
        entry = f"{arm_name(t.fix, t.scale, t.trial_number)} {paired_ci(diff)}"
        if diff.n < 2 or not _has_bounds(diff):
            unknown.append(entry)
        elif _holds(diff, 0.0):
            close.append(entry)
        else:
            apart.append(entry)
    what = f"recommended - other on `{rec.primary}`, paired by seed"
    if apart:
        items.append(f"Told apart from ({what}; the interval excludes 0): " + "; ".join(apart) + ".")
    if close:
        items.append(f"Not told apart from ({what}; the interval holds 0): " + "; ".join(close) + ".")
    if unknown:
        items.append(f"Without an interval ({what}): " + "; ".join(unknown) + ".")
    if len(r.setting.seeds) == 1:
        items.append("One seed: the choice has no interval over seeds; run more seeds before relying on it.")
    doc.add(Bullets(tuple(items)))


def _more_figures(doc: Document, figures: dict[str, Path]) -> None:
    rest = [k for k in ("ratio-scale", "gates") if k in figures]
    doc.add(Heading(2, "9. More figures"))
    if not rest:
        doc.add(Para("No more than those above (no scale series or learned gates to draw)."))
    for kind in rest:
        doc.add(Figure(figures[kind], CAPTIONS[kind]))


def _excluded(doc: Document, r: Report) -> None:
    doc.add(Heading(2, "10. Excluded trials"))
    if not r.excluded:
        doc.add(Para(f"No trial is excluded: all {r.n_trials} trials are ranked."))
        return
    doc.add(
        Para("Listed with their status; never ranked, compared or recommended."),
        Table(
            ("trial", "fix", "scale", "status", "complete seeds"),
            tuple(
                (str(e.trial_number), e.fix, scale_text(e.scale), e.status, f"{e.n_seeds}/{e.seeds_wanted}")
                for e in r.excluded
            ),
        ),
    )


def _reproduce(doc: Document, r: Report, source: str, program: str) -> None:
    name = r.setting.study
    doc.add(
        Heading(2, "11. Reproduce"),
        Para("The tables above, and this report, from the same database:"),
        Code(
            f"{program} query --study {name} --storage {source} --group-by fix --format csv\n"
            f"{program} query --study {name} --storage {source} --runs --format csv\n"
            f"{program} report {name} --storage {source} --out DIR",
            "bash",
        ),
        Para(f"The spec stored with the study (`{program} study run` on it reruns the study):"),
        Code(r.setting.spec_text.strip(), "toml"),
    )
