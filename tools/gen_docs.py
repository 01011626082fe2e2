"""Write the docs' generated blocks: the study-spec key table (from the pydantic spec in ablate/spec.py)
and the performance tables (from bench/results/*.json), so neither can drift from its source.

    PYTHONPATH=. python tools/gen_docs.py           # rewrite the blocks in docs/
    PYTHONPATH=. python tools/gen_docs.py --check   # exit 1 if a block is stale (tests/test_docs.py)

A block sits between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->`` in a page; the
prose around it is written by hand. Every key of the spec must have a description here (``KEY_NOTES``):
a key added to ablate/spec.py without one fails the check, as does a description of a key that no
longer exists.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# ------------------------------------------------------------------------------------ study specs

KEY_NOTES: dict[str, str] = {
    "subject.factory": "`module:function` returning your `nn.Module`, called with `[subject.args]`.",
    "subject.batches": "`module:function(seed, split, batch_size)` giving batches; split is `train`, `probe` or "
    "`gain`.",
    "subject.loss": "`module:function(model, batch)` giving the scalar loss.",
    "subject.path": "A folder put first on `sys.path` (default: the spec's folder).",
    "subject.batch_size": "What `batches` is called with.",
    "subject.args": "Keyword arguments of `factory`.",
    "subject.groups": "The adapter groups watched: parameter or module names (exact or dotted suffix), or `re:` "
    "patterns; disjoint.",
    "subject.branch.at": "The module whose output the branch joins (a forward hook).",
    "subject.branch.build": "`module:function(model)` building the branch, which maps x to c of x's shape.",
    "subject.branch.output": "Which element of a tuple output is the stream.",
    "subject.branch.zero": "The module zero-init zeroes (default: the branch's last Linear or Conv).",
    "subject.backbone_seed": "Seed of the frozen weights every arm shares.",
    "model.quick_gelu": "Run the backbone with QuickGELU (the activation OpenAI's CLIP was trained with); AA-CLIP "
    "runs GELU, the default (docs/parity.md).",
    "model.detection_logit_scale": "Factor on the detection cosines before the cross-entropy: AA-CLIP's 1 "
    "(the default); 100 is the usual CLIP temperature.",
    "model.text_adapter": "A Stage 1 text adapter checkpoint (ablate's or AA-CLIP's `text_adapter.pth`) instead of "
    "training one.",
    "training.precision": "`fp32` (AA-CLIP's, exact parity), `tf32` (TF32 matrix products on CUDA) or `bf16` "
    "(bfloat16 autocast on CUDA; docs/parity.md says what it changes).",
    "eval.scoring": "How maps and image scores are made: `aaclip` (AA-CLIP's) or `softmax` (probabilities, "
    "mean over levels, no blur).",
    "eval.domain": "AA-CLIP's blur and image score for `industrial` or `medical` data.",
    "stage1.enabled": "Train AA-CLIP's Stage 1 text adapter once per seed before its arms (off: the frozen CLIP's "
    "text embeddings).",
    "stage1.epochs": "Stage 1 epochs over the training set (AA-CLIP: 5).",
    "stage1.steps": "When > 0, this many Stage 1 steps instead of the epochs.",
    "stage1.lr": "Stage 1's Adam learning rate (AA-CLIP: 1e-5).",
    "stage1.batch_size": "Stage 1's batch size (AA-CLIP: 16).",
    "stage1.orthogonal_weight": "Weight of the orthogonality loss between the normal and abnormal text "
    "embeddings (AA-CLIP: 0.1).",
    "stage1.surgery_attention": "The value-value attention of Stage 1's image features: `batch` (as AA-CLIP's "
    "code runs it, across the images of a batch) or `tokens` (within each image).",
    "name": "The study's name in the database (default: the spec file's name without .toml).",
    "description": "One line saying what the study is for; the report shows it.",
    "model.backbone": "The frozen CLIP: `tiny` (64 px, 8 blocks, CPU) or `vit-l-14-336@518` (AA-CLIP's scale).",
    "model.pretrained": "Backbone weights: a local checkpoint file or an open_clip tag in the local cache; "
    "none = random init. Nothing is downloaded.",
    "model.inject_at": "The block after which the branch joins the residual stream (0-based).",
    "model.context_norm": "L2-normalise each text-context token before the branch attends to it.",
    "model.adapter_weight": "The residual weight of the image adapters (AA-CLIP's 0.1).",
    "model.backbone_seed": "Seed of a random-init backbone: one network for every seed and arm.",
    "data.kind": "`synthetic` (generated textures with exact masks) or a data set on disk: `mvtec`, `visa`, "
    "`manifest`.",
    "data.root": "The data set's folder (mvtec, visa).",
    "data.manifest": "The JSON-lines file (manifest): one image a line.",
    "data.split_csv": "VisA's split file (default: ROOT/split_csv/1cls.csv).",
    "data.classes": "A subset of the classes, in this order (default: every class).",
    "data.seed": "Seed of the synthetic data and of the few-shot draw.",
    "data.batch_size": "Images per batch (per arm).",
    "data.train_size": "Synthetic data only: the size of the training pool.",
    "data.anomaly_fraction": "Synthetic data only: the share of anomalous images.",
    "data.split": "The split trained on: `test` (AA-CLIP's choice: it has anomalies and masks), `train`, `all`.",
    "data.real_names": 'The name a class\'s prompts use, e.g. `{ bottle = "dark bottle" }` (default: the '
    "folder name, `_` as a space).",
    "data.few_shot": "k training images per class, drawn with `data.seed` (0 = all).",
    "data.augment": "Training-image augmentation, image and mask together: `aaclip` (AA-CLIP's rotation, "
    "translation, flips and colour jitter), `flips` (flips and 90-degree rotations) or `none`.",
    "data.workers": "Processes reading training images ahead (0 = none); the numbers do not depend on it.",
    "data.dataset": "Which of AA-CLIP's data sets this is (`mvtec`, `visa`, `mpdd`, `btad`, `brain`, `liver`, "
    "`retina`, `colon_clinicdb`, `colon_colondb`, `colon_kvasir`, `colon_cvc300`): its class names in the "
    "prompts (default: `mvtec`/`visa` by kind, else folder names).",
    "data.shots_file": "AA-CLIP's k-shot list (`<k>-shot.jsonl`): its images are the training set, paths "
    "relative to the data set's folder (default: the split, `few_shot` drawn with `data.seed`).",
    "eval_data.kind": "The evaluation set's layout: `mvtec`, `visa`, `manifest`.",
    "eval_data.root": "Its folder (mvtec, visa).",
    "eval_data.manifest": "Its JSON-lines file (manifest).",
    "eval_data.split_csv": "Its VisA split file.",
    "eval_data.classes": "A subset of its classes.",
    "eval_data.split": "The split evaluated on.",
    "eval_data.dataset": "Which of AA-CLIP's data sets it is: its class names in the prompts.",
    "training.steps": "Adam steps per run.",
    "training.lr": "Adam's learning rate.",
    "training.device": "`auto` (cuda when present), `cpu`, `cuda`.",
    "training.pack": "Arms trained side by side in one forward/backward (same numbers as one by one). Up to "
    "the seeds it packs a trial's seeds; from twice the seeds, pack // seeds trials of one fix.",
    "training.compile": "Wrap the training step in torch.compile (GPU).",
    "probe.batches": "Held-out batches the bypass probe averages over (>= 2 for an interval).",
    "probe.every": "Probe every K steps (0: at the start and the end).",
    "probe.threshold": "The ratio R at or above which a probe's verdict is OK (drawn on the figures).",
    "probe.group": "The adapter group the verdicts, `adapter_gain` and the dilution objectives judge.",
    "probe.gain_batches": "Held-out batches `adapter_gain` is measured on.",
    "search.fixes": "The fixes searched (default: every registered fix); a join may add `+zero-init`.",
    "search.scale.min": "The smallest scale searched.",
    "search.scale.max": "The largest scale searched.",
    "search.scale.log": "Sample the scale on a log axis.",
    "search.scale_per_fix.<fix>.min": "One fix's own smallest scale.",
    "search.scale_per_fix.<fix>.max": "One fix's own largest scale.",
    "search.scale_per_fix.<fix>.log": "One fix's own axis (tanh-gate's default range is linear [0, 1]).",
    "study.trials": "Finished trials wanted; every fix runs once at its default scale first.",
    "study.seeds": "The seeds every trial runs (the replicates; three or more give intervals over seeds).",
    "study.sampler": "Optuna's sampler: `tpe`, `nsga2`, `random`.",
    "study.sampler_seed": "Seed of the sampler (each trial's draw is seeded from it and its number).",
    "study.objectives": "One or two objectives (concepts: what the numbers mean); raw ratios are refused.",
    "study.frozen_control": "Run the frozen control per seed: the known-bad case the objectives must score "
    "below the baseline.",
    "study.constraint_metric": "With one objective: a metric kept as a constraint instead.",
    "study.constraint_min": "The constraint's bound, in the metric's own direction.",
    "study.pruning": "Optuna's median pruner on the objective's value so far (`loss_slope`, `loss_last` only).",
    "eval.enabled": "End every run with the AUROC/AP evaluation (default: on for data on disk, off for "
    "synthetic data).",
    "eval.batches": "Synthetic data: test batches of `data.batch_size` images (data on disk: every image).",
    "eval.bins": "Binned pixel metrics: histogram bins per class, over its observed range.",
    "eval.pixel_metrics": "`exact` (pixel AUROC/AP as scikit-learn computes them, the maps spilled to a "
    "temporary folder, 4 bytes a pixel) or `binned` (histograms, no disk, a bounded error).",
    "eval.every": "Also evaluate every this many steps, each stored as a step row `eval/<metric>` (0: at "
    "the end only).",
}


def _inner(annotation: Any) -> tuple[Any, bool]:
    """(the pydantic model a field holds or None, whether a dict key comes first)."""
    from pydantic import BaseModel

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is dict:
        model, _ = _inner(args[-1])
        return model, True
    if args and origin not in (list, typing.Literal):
        return _inner(args[0])
    return (annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None), False


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Literal:
        return " \\| ".join(f"`{json.dumps(a)}`" for a in typing.get_args(annotation))
    if origin is list:
        return f"list of {_type_text(args[0])}"
    if origin is dict:
        return f"table of {_type_text(args[-1])}"
    if args and len(typing.get_args(annotation)) > len(args):  # X | None
        return f"{_type_text(args[0])} (or unset)"
    names = {str: "text", int: "integer", float: "number", bool: "true/false", Any: "any value"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _toml(v: Any) -> str:
    if v is None:
        return "unset"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{}" if not v else "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    return repr(v)


def _bounds(field: Any) -> str:
    out = []
    for m in field.metadata:
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >=")):
            if getattr(m, attr, None) is not None:
                out.append(f"{word} {getattr(m, attr)}")
        if getattr(m, "pattern", None):
            out.append(f"matches `{m.pattern}`")
    return ", ".join(out)


def spec_keys() -> list[tuple[str, str, str, str]]:
    """(key, type, default, allowed) for every key of the study spec, in the spec's order."""
    from pydantic_core import PydanticUndefined

    from ablate.spec import StudySpec

    rows: list[tuple[str, str, str, str]] = []

    def walk(model: Any, prefix: str) -> None:
        for name, field in model.model_fields.items():
            sub, keyed = _inner(field.annotation)
            key = prefix + name
            if sub is not None:
                walk(sub, key + (".<fix>." if keyed else "."))
                continue
            if field.default_factory is not None:
                default = _toml(field.default_factory())
            elif field.default is PydanticUndefined:
                default = "required"
            else:
                default = _toml(field.default)
            rows.append((key, _type_text(field.annotation), default, _bounds(field)))

    walk(StudySpec, "")
    return rows


def spec_keys_markdown() -> str:
    rows = spec_keys()
    keys = [r[0] for r in rows]
    missing = [k for k in keys if k not in KEY_NOTES]
    stale = [k for k in KEY_NOTES if k not in keys]
    if missing or stale:
        raise SystemExit(
            f"tools/gen_docs.py KEY_NOTES: describe {', '.join(missing) or '-'}; remove {', '.join(stale) or '-'}"
        )
    out = []
    section = None
    for key, kind, default, allowed in rows:
        head = key.split(".", 1)[0] if "." in key else ""
        if head != section:
            section = head
            out += ["", f"### `[{head}]`" if head else "### Top level", ""]
            out += ["| key | type | default | allowed | what it sets |", "| --- | --- | --- | --- | --- |"]
        cell = allowed.replace("|", "\\|") or "-"
        out.append(f"| `{key}` | {kind} | `{default}` | {cell} | {KEY_NOTES[key]} |")
    return "\n".join(out).strip("\n")


# ------------------------------------------------------------------------------------ performance

RESULTS = ROOT / "bench" / "results"


def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def _made(doc: dict[str, Any], file: str) -> str:
    load = doc.get("load_avg_1m", doc.get("load_before"))
    load_text = (
        f"load average {float(load):.1f} before the run" if isinstance(load, int | float) else "load not recorded"
    )
    if isinstance(load, str) and "load average" in load:
        load_text = "load " + load.split("load average:")[-1].strip() + " (1, 5, 15 min) before the run"
    return f"`{doc['command']}`, {doc['date']}, {load_text}; JSON: `bench/results/{file}`"


def _s(v: float) -> str:
    from ablate.textfmt import fmt

    return f"{fmt(float(v), 3)} s"  # three significant digits, the one number rule


def reads_markdown(file: str = "reads_sqlite.json") -> str:
    doc = _load(file)
    sqlite = doc["sqlite"]
    small, big = sqlite["1000"]["commands"], sqlite["10000"]["commands"]
    growth = sqlite["growth_1000_to_10000"]
    out = [
        f"Made by {_made(doc, file)}. Database: {doc['database']}; median of the repeats, peak RSS of the "
        "command's process.",
        "",
        "| command | 1,000 trials | 10,000 trials | growth | peak RSS at 10,000 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in small:
        out.append(
            f"| `ablate {name}` | {_s(small[name]['s'])} | {_s(big[name]['s'])} | {growth[name]:.2f}x | "
            f"{big[name]['peak_rss_mb']:.0f} MB |"
        )
    slow = [f"`ablate {name}`" for name, g in growth.items() if g > 3.0]
    heavy = [f"`ablate {name}`" for name, c in big.items() if c["peak_rss_mb"] >= 500.0]
    out += [
        "",
        "At 10,000 trials every command within 3x its 1,000-trial time: "
        + ("yes" if not slow else "no, " + ", ".join(slow))
        + "; every command under 500 MB: "
        + ("yes" if not heavy else "no, " + ", ".join(heavy))
        + ".",
    ]
    return "\n".join(out)


def gpu_markdown(file: str = "gpu_h200.json") -> str:
    doc = _load(file)
    out = [
        f"Made by {_made(doc, file)}. {doc['device']}, `{doc['backbone']}`, random init, bf16 autocast, batch "
        f"{doc['batch_size']} per arm, {doc['steps']} steps per figure, probes off, torch {doc['torch']}.",
        "",
        f"| fix | alone: ms/step | alone: MFU | {doc['pack']} packed: ms/step | {doc['pack']} packed: images/s "
        f"| {doc['pack']} packed: MFU | peak GB | speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for fix, r in doc["fixes"].items():
        a, p = r["unpacked"], r["packed"]
        out.append(
            f"| {fix} | {a['step_ms']:.0f} | {a['mfu']:.3f} | {p['step_ms']:.0f} | {p['images_per_s']:.0f} | "
            f"{p['mfu']:.3f} | {p['peak_mem_gb']:.1f} | {r['speedup']:.2f}x |"
        )
    t = doc["trial"]
    out += [
        "",
        f"A {t['steps']}-step `{t['fix']}` trial of {t['seeds']} seeds, packed ({t['note']}): {t['wall_s']:.1f} s, "
        f"{t['train_steps_per_s']:.1f} training steps/s, MFU {t['mfu']:.2f} over the training steps.",
    ]
    return "\n".join(out)


def cpu_markdown() -> str:
    packed, trials = _load("packed_cpu.json"), _load("packed_trials_cpu.json")
    over_cpu, over_gpu = _load("overhead_cpu.json"), _load("overhead_h200.json")
    workers = _load("workers_cpu.json")
    slices = _load("attention_slices_cpu.json")

    def med(v: list[float]) -> float:
        return sorted(v)[len(v) // 2]

    rows = [
        (
            f"{packed['seeds']} seeds of one trial, packed vs one after another ({packed['steps']} steps, "
            f"`{packed['backbone']}`, {packed['threads']} threads)",
            f"{med(packed['unpacked_s']):.1f} s vs {med(packed['packed_s']):.1f} s: {packed['speedup']:.2f}x",
            _made(packed, "packed_cpu.json"),
        ),
        (
            f"{trials['trials']} trials x {trials['seeds']} seeds as one pack of {trials['arms_packed']} vs a pack "
            "per trial",
            f"{med(trials['one_pack_per_trial_s']):.1f} s vs {med(trials['trials_packed_s']):.1f} s: "
            f"{trials['speedup']:.2f}x",
            _made(trials, "packed_trials_cpu.json"),
        ),
        (
            f"the harness's training loop vs a bare PyTorch loop ({over_cpu['device']}, {over_cpu['steps']} steps)",
            f"{over_cpu['overhead_ratio']:.2f}x ({over_cpu['overhead_ratio_wall']:.2f}x with the held-out gain)",
            _made(over_cpu, "overhead_cpu.json"),
        ),
        (
            f"the same at real scale ({over_gpu['device']}, `{over_gpu['backbone']}`, {over_gpu['steps']} steps)",
            f"{over_gpu['overhead_ratio']:.2f}x ({over_gpu['overhead_ratio_wall']:.2f}x with the held-out gain)",
            _made(over_gpu, "overhead_h200.json"),
        ),
        (
            f"the quick study with 1 worker and with `--workers 2` ({workers['cores']} cores)",
            f"{workers['one_worker_s']:.1f} s vs {workers['workers_2_s']:.1f} s: "
            f"{workers['workers_2_over_one_wall']:.2f}x the wall time, identical numbers: "
            f"{str(workers['workers_2_identical']).lower()}, same per-fix table: {str(workers['same_table']).lower()}",
            _made(workers, "workers_cpu.json"),
        ),
        (
            f"a pack of {slices['arms_in_pack']} quick arms ({slices['fix']}), {slices['steps_per_side']} training "
            "steps with the branch's dropout attention over the whole batch vs in slices",
            f"{slices['whole']['total_s']:.1f} s vs {slices['sliced']['total_s']:.1f} s: {slices['speedup']:.2f}x; "
            f"slowest step {slices['whole']['max_ms']:.0f} ms vs {slices['sliced']['max_ms']:.0f} ms (medians "
            f"{slices['whole']['median_ms']:.0f} and {slices['sliced']['median_ms']:.0f} ms); identical losses: "
            f"{str(slices['identical']).lower()}",
            _made(slices, "attention_slices_cpu.json"),
        ),
    ]
    out = ["| measurement | result | made by |", "| --- | --- | --- |"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out)


def study_overhead_markdown(file: str = "study_overhead_cpu.json") -> str:
    """The quick study against the bare training of its arms, and where the study's time went."""
    d = _load(file)
    same = d.get("numbers", {}).get("identical")
    own = sum(d["breakdown_cpu_s"][k] for k in ("train_steps", "data", "stage1"))
    out = [
        f"Made by {_made(d, file)}. `{d['spec']}`: {d['arms']} arms of {d['steps']} steps (packs of {d['pack']}), "
        f"{d['threads']} torch thread; every number the study reports identical to the reference database's: "
        f"{str(same).lower()}.",
        "",
        "| | the study | the bare training of its arms | ratio |",
        "| --- | --- | --- | --- |",
        f"| wall | {_s(d['study_wall_s'])} | {_s(d['bare_s'])} | {d['ratio']:.2f}x |",
        f"| CPU | {_s(d['study_cpu_s'])} | {_s(d['bare_cpu_s'])} | {d['ratio_cpu']:.2f}x |",
        f"| wall, the bare loop with ablate's allocator setting | {_s(d['study_wall_s'])} | "
        f"{_s(d['bare_same_allocator_s'])} | {d['ratio_same_allocator']:.2f}x |",
        "",
        f"The probes and the adapter gain, the measurements the spec asks for, took {_s(d['measurement_s'])} "
        f"({d['measurement_s'] / d['bare_same_allocator_s']:.0%} of the bare training with ablate's allocator "
        f"setting); the rest of the study over the bare training: {d['ratio_without_measurement']:.2f}x "
        f"({d['ratio_without_measurement_same_allocator']:.2f}x against the loop with ablate's allocator "
        f"setting). Within the study's own process (no second process to drift against): its CPU over the "
        f"CPU of its own training (`train_steps`, `data`, `stage1`, {_s(own)}): {d['study_cpu_s'] / own:.2f}x.",
        "",
        "| part of the study | CPU | wall | share of the wall time |",
        "| --- | --- | --- | --- |",
    ]
    for part, wall in d["breakdown_s"].items():
        cpu = d["breakdown_cpu_s"][part]
        out.append(f"| {part} | {_s(cpu)} | {_s(wall)} | {wall / d['study_wall_s']:.1%} |")
    return "\n".join(out)


def writes_markdown(file: str = "store_writes.json") -> str:
    doc = _load(file)
    backends = [b for b in ("sqlite", "postgresql") if isinstance(doc.get(b), dict)]
    out = [
        f"Made by {_made(doc, file)}. One run of {doc['steps']:,} steps x {doc['metrics_per_step']} metrics, "
        f"medians of up to {doc['max_repeats']} repeats.",
        "",
        "| way | " + " | ".join({"sqlite": "SQLite", "postgresql": "PostgreSQL"}[b] for b in backends) + " |",
        "| --- |" + " --- |" * len(backends),
    ]
    for key, label in (
        ("a_metric_buffer_s", f"`MetricBuffer`, one transaction per {doc['flush_every']} steps"),
        ("b_commit_per_row_s", "one commit per row"),
        ("c_optuna_report_s", "Optuna `trial.report` per step (1 value per step, not 5)"),
    ):
        cells = []
        for b in backends:
            r = doc[b]
            if key not in r:
                cells.append("-")
            else:
                ratio = "" if key.startswith("a_") else f" ({r[key] / r['a_metric_buffer_s']:.1f}x)"
                cells.append(f"{_s(r[key])}{ratio}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------- blocks

BLOCKS: dict[str, dict[str, Callable[[], str]]] = {
    "docs/study-specs.md": {"spec-keys": spec_keys_markdown},
    "docs/performance.md": {
        "reads": reads_markdown,
        "gpu": gpu_markdown,
        "cpu": cpu_markdown,
        "writes": writes_markdown,
        "study-overhead": study_overhead_markdown,
    },
}


def _pattern(name: str) -> re.Pattern[str]:
    head, tail = f"<!-- generated: {name} -->", f"<!-- end generated: {name} -->"
    return re.compile(rf"({re.escape(head)})(.*?)({re.escape(tail)})", re.S)


def render(page: str, text: str) -> str:
    """``text`` (a page's Markdown) with its generated blocks written anew."""
    for name, make in BLOCKS[page].items():
        pattern = _pattern(name)
        if not pattern.search(text):
            raise SystemExit(f"{page}: no block '<!-- generated: {name} -->' ... '<!-- end generated: {name} -->'")
        body = make()
        text = pattern.sub(lambda m, body=body: m.group(1) + "\n" + body + "\n" + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 when a page's generated block is stale")
    args = p.parse_args(argv)
    stale = []
    for page in BLOCKS:
        path = ROOT / page
        old = path.read_text()
        new = render(page, old)
        if new != old:
            stale.append(page)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"stale generated blocks in {', '.join(stale)}: run PYTHONPATH=. python tools/gen_docs.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
