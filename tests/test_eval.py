"""The end-of-run evaluation: known-good and known-bad scores, packed arms, a study that stores it,
the queries, an objective, the plot, and databases written before it."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ablate.arms import train_arm, train_pack
from ablate.cli import main
from ablate.engine.arm import ArmConfig
from ablate.engine.loop import RunConfig
from ablate.eval import evaluation_row
from ablate.objectives import OBJECTIVES
from ablate.spec import parse_spec
from ablate.store import open_storage, query
from ablate.study import run_study
from ablate.subjects.aaclip.arm import EvalConfig, PackSetup, aaclip_arm
from ablate.subjects.aaclip.data.synthetic import SyntheticAnomalyDataset
from ablate.subjects.aaclip.evaluate import EVAL_METRICS, evaluate
from tests.study_helpers import MINI, copy_db

CLASSES = ("carpet", "grid", "leather", "tile", "wood")


class _Scorer(torch.nn.Module):
    """A stand-in subject that scores a batch by a rule: the known-good and known-bad cases."""

    n_arms = 1

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule
        self.g = torch.Generator().manual_seed(0)

    def anomaly_scores(self, batch, scoring=None):
        from ablate.subjects.aaclip.scoring import BatchScores, log_odds

        masks = batch.masks.reshape(-1, *batch.masks.shape[-2:])
        if self.rule == "oracle":  # told the mask: a perfect map, a perfect image score
            maps = 0.1 + 0.8 * masks
        elif self.rule == "inverted":
            maps = 0.9 - 0.8 * masks
        else:  # random scores, no information
            maps = torch.rand(masks.shape, generator=self.g)
        if self.rule == "random":
            score = torch.rand(len(maps), generator=self.g)
        else:  # from the image label, as the map's maximum would give it
            score = maps.flatten(1).amax(1) if self.rule == "oracle" else 0.9 - 0.8 * masks.flatten(1).amax(1)
        return BatchScores(maps, log_odds(maps), maps.flatten(1).amax(1), score)


def _test_batches(n: int = 20, bs: int = 5, size: int = 32):
    data = SyntheticAnomalyDataset(size, seed=3)
    return [data.batch(list(range(i * bs, (i + 1) * bs))) for i in range(n)]


def test_a_model_told_the_mask_scores_one_and_random_scores_half():
    batches = _test_batches()
    oracle = evaluate(_Scorer("oracle"), batches, torch.device("cpu"), CLASSES)[0]
    assert all(oracle.metrics[m] == 1.0 for m in EVAL_METRICS)
    assert all(v == 1.0 for cls in oracle.per_class.values() for v in cls.values())
    bad = evaluate(_Scorer("inverted"), batches, torch.device("cpu"), CLASSES)[0]
    assert bad.metrics["image_auroc"] == 0.0 and bad.metrics["pixel_auroc"] == 0.0
    rnd = evaluate(_Scorer("random"), batches, torch.device("cpu"), CLASSES)[0]
    assert abs(rnd.metrics["pixel_auroc"] - 0.5) < 0.02  # ~100k pixels: tight around chance
    assert abs(rnd.metrics["image_auroc"] - 0.5) < 0.25  # 20 images per class: loose
    # pixel AP of a random score is the anomalous pixel share, far below the oracle's 1
    share = sum(c["anomalous_pixels"] for c in rnd.counts.values()) / sum(c["pixels"] for c in rnd.counts.values())
    assert rnd.metrics["pixel_ap"] == pytest.approx(share, abs=0.02)
    assert sum(c["images"] for c in rnd.counts.values()) == 100


def test_a_class_with_one_label_is_nan_with_its_reason_and_left_out_of_the_mean():
    batches = _test_batches(4, 5)
    for b in batches:  # 'grid' images lose their defects
        grid = b.class_idx == 1
        b.labels[grid] = 0
        b.masks[grid] = 0
    res = evaluate(_Scorer("oracle"), batches, torch.device("cpu"), CLASSES)[0]
    assert math.isnan(res.per_class["grid"]["image_auroc"]) and math.isnan(res.per_class["grid"]["pixel_ap"])
    assert res.reasons["grid/image"] == "no anomalous samples" and res.reasons["grid/pixel"] == "no anomalous samples"
    assert res.metrics["image_auroc"] == 1.0  # the mean over the classes that have a value


def _cfg(**kw) -> ArmConfig:
    base = aaclip_arm(
        run=RunConfig(steps=3, probe_every=-1, count_flops=False),
        probe_batches=2,
        gain_batches=2,
        device="cpu",
        eval=EvalConfig(enabled=True, batches=5),
    )
    return replace(base, **kw)


def test_packed_arms_evaluate_as_each_arm_alone():
    cfgs = [_cfg(seed=0), _cfg(seed=1)]
    packed = train_pack(cfgs, built=PackSetup(cfgs))
    for cfg, got in zip(cfgs, packed):
        alone = train_arm(cfg).evaluation
        for m in EVAL_METRICS:
            assert got.evaluation.metrics[m] == pytest.approx(alone.metrics[m], abs=1e-6)
        assert got.evaluation.counts == alone.counts


def test_evaluation_off_by_default_leaves_the_result_unevaluated():
    off = _cfg()
    res = train_arm(replace(off, subject=replace(off.subject, eval=EvalConfig())))
    assert res.evaluation is None
    summary = res.summary()
    assert all(summary[m] is None for m in EVAL_METRICS) and summary["evaluation"] is None


def test_eval_every_evaluates_after_every_n_updates_and_leaves_training_alone():
    """eval.every = 2 over 4 steps: evaluations after 2 and 4 updates, each a step row; the one after
    2 updates is what a 2-step run's end evaluation gives, and the losses are those of a run without."""

    def cfg(steps: int, every: int) -> ArmConfig:
        base = _cfg()
        ev = replace(base.subject.eval, every=every)
        return replace(base, run=replace(base.run, steps=steps), subject=replace(base.subject, eval=ev))

    blocks = []
    res = train_arm(cfg(4, 2), on_flush=blocks.append)
    plain = train_arm(cfg(4, 0))
    short = train_arm(cfg(2, 0))
    assert res.metrics["loss"] == plain.metrics["loss"] and plain.step_evaluations == {}
    assert sorted(res.step_evaluations) == [2, 4]
    assert res.step_evaluations[4] == evaluation_row(res.evaluation.metrics)
    assert res.evaluation.metrics == plain.evaluation.metrics
    for m in EVAL_METRICS:
        assert res.step_evaluations[2][f"eval/{m}"] == pytest.approx(short.evaluation.metrics[m], abs=1e-9)
    assert res.step_evaluations[2] != res.step_evaluations[4]  # two steps of training moved the scores
    rows = {step: values for block in blocks for step, values in block}
    assert set(rows[2]) >= {"loss", "eval/pixel_auroc"} and "eval/pixel_auroc" not in rows[1]
    assert rows[4] == res.step_evaluations[4]  # the end's evaluation: a row of its own, after the last step


EVAL_SPEC = (
    MINI.replace(
        "trials = 4\nseeds = [0, 1]", 'trials = 2\nseeds = [0]\nobjectives = ["image_auroc", "dilution_train"]'
    )
    .replace('fixes = ["none", "fixed-scale", "tanh-gate"]', 'fixes = ["none", "zero-init"]')
    .replace('name = "mini"', 'name = "evalmini"')
    + "[eval]\nenabled = true\nbatches = 10\nevery = 3\n"
)
assert "image_auroc" in EVAL_SPEC and "zero-init" in EVAL_SPEC


@pytest.fixture(scope="module")
def eval_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("evalstudy") / "results.db"
    spec = parse_spec(EVAL_SPEC)
    assert spec.eval.enabled and spec.study.objectives[0] == "image_auroc"
    run_study(spec, EVAL_SPEC, f"sqlite:///{path}")
    return path


def cli(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    cap = capsys.readouterr()
    return info.value.code, cap.out, cap.err


def test_a_study_with_evaluation_stores_every_metric_per_run_and_class(eval_db):
    engine = open_storage(f"sqlite:///{eval_db}", create=False)
    runs = query.runs_frame(engine)
    complete = runs[(runs.status == "complete") & (runs.role != "stage1")]
    assert len(complete) == 4  # 2 trials, a baseline and a control (the Stage 1 run is not evaluated)
    assert runs[runs.role == "stage1"].image_auroc.isna().all()
    for m in EVAL_METRICS:
        assert complete[m].notna().all() and complete[m].between(0, 1).all(), m
    # eval.every = 3 of 6 steps: evaluated after 3 updates and at the end, each a step row
    steps = query.step_metrics_for_runs(engine, list(complete.run_id), prefix="eval/")
    for run_id, group in steps.groupby("run_id"):
        assert sorted(set(group.step)) == [3, 6] and set(group.name) == {f"eval/{m}" for m in EVAL_METRICS}
        row = complete[complete.run_id == run_id].iloc[0]
        end = group[group.step == 6].set_index("name").value
        assert all(end[f"eval/{m}"] == pytest.approx(row[m]) for m in EVAL_METRICS)
    assert set(steps.run_id) == set(complete.run_id)
    classes = query.class_metrics_frame(engine)
    assert len(classes) == 4 * len(CLASSES)
    assert set(classes.class_name) == set(CLASSES)
    assert (classes.images > 0).all() and (classes.pixels == classes.images * 64 * 64).all()
    # the run's column is the mean over its classes that have a value
    for run_id, group in classes.groupby("run_id"):
        row = complete[complete.run_id == run_id].iloc[0]
        for m in EVAL_METRICS:
            assert row[m] == pytest.approx(group[m].dropna().mean())


def test_image_auroc_is_an_objective_optuna_and_the_queries_agree_on(eval_db, capsys):
    import optuna

    url = f"sqlite:///{eval_db}"
    study = optuna.load_study(study_name="evalmini", storage=url)
    trials = query.trials_frame(open_storage(url, create=False))
    for t in study.trials:
        row = trials[trials.trial_number == t.number].iloc[0]
        assert t.values[0] == pytest.approx(row["image_auroc"])
    assert OBJECTIVES["image_auroc"].direction == "maximize"
    code, out, _ = cli(capsys, "query", "--storage", url, "--json")
    rows = json.loads(out)
    assert code == 0 and all({*EVAL_METRICS, "image_auroc_lo"} <= set(r) for r in rows)
    assert rows[0]["pixel_auroc"] == pytest.approx(trials.pixel_auroc.iloc[0])
    code, out, _ = cli(capsys, "query", "--storage", url, "--runs", "--json")
    runs = [r for r in json.loads(out) if r["status"] == "complete" and r["role"] != "stage1"]
    assert code == 0 and runs and all(r["image_ap"] is not None for r in runs)
    code, out, _ = cli(capsys, "query", "--storage", url, "--classes", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 4 * len(CLASSES) and {"class_name", *EVAL_METRICS, "note"} <= set(rows[0])
    for args in ((), ("--runs",), ("--classes",), ("--group-by", "fix")):
        code, out, _ = cli(capsys, "query", "--storage", url, *args)
        assert code == 0 and max(len(line) for line in out.splitlines()) <= 80, (args, out)
    assert "img AUROC" in cli(capsys, "query", "--storage", url)[1]


def test_the_evaluation_plot_draws_what_the_trials_frame_holds(eval_db, tmp_path, capsys):
    from ablate.plot import extract_eval

    url = f"sqlite:///{eval_db}"
    engine = open_storage(url, create=False)
    trials = query.trials_frame(engine)
    fixes = query.group_by_fix(engine)
    refs = fixes[fixes.fix.isin(list(query.REFERENCE_LABELS.values()))]
    data = extract_eval(trials, refs)
    assert [e.trial_number for e in data.entries] == [None, None, *sorted(trials.trial_number)][: len(data.entries)]
    for e in data.entries:
        if e.trial_number is not None:
            assert e.values["image_auroc"][0] == pytest.approx(
                trials.set_index("trial_number").image_auroc[e.trial_number]
            )
    code, out, _ = cli(capsys, "plot", "--storage", url, "--out", str(tmp_path / "p"), "--json")
    assert code == 0 and any(p.endswith("eval.png") for p in json.loads(out)["plots"])
    from ablate.plot.layout import legends_over_axes, overlapping_texts
    from ablate.plot.render import render_eval

    fig = render_eval(data)
    assert overlapping_texts(fig) == [] and legends_over_axes(fig) == []


def test_an_unevaluated_study_says_so_and_draws_no_evaluation_plot(mini_study_db, tmp_path, capsys):
    url = f"sqlite:///{copy_db(mini_study_db, tmp_path / 'r.db')}"
    code, out, _ = cli(capsys, "plot", "--storage", url, "--out", str(tmp_path / "p"), "--json")
    assert code == 0 and not any(Path(p).stem == "eval" for p in json.loads(out)["plots"])
    code, _, err = cli(capsys, "plot", "--storage", url, "--out", str(tmp_path / "p"), "--kind", "eval")
    assert code == 2 and "enabled = true" in err
    code, out, _ = cli(capsys, "query", "--storage", url, "--classes", "--json")
    assert code == 0 and json.loads(out) == []


def test_an_evaluation_objective_without_evaluation_is_refused():
    from ablate.errors import AblateInputError

    with pytest.raises(AblateInputError, match="study.objectives.*eval.enabled"):
        parse_spec(MINI.replace("seeds = [0, 1]", 'seeds = [0, 1]\nobjectives = ["pixel_auroc"]'))


def test_a_database_from_before_the_evaluation_reads_and_gains_the_columns(mini_study_db, tmp_path, capsys):
    """An older file: ablate_runs without the four columns and no ablate_class_metrics table."""
    path = copy_db(mini_study_db, tmp_path / "old.db")
    with sqlite3.connect(path) as con:
        con.execute("DROP TABLE ablate_class_metrics")
        for m in EVAL_METRICS:
            con.execute(f"ALTER TABLE ablate_runs DROP COLUMN {m}")
    before = path.read_bytes()
    url = f"sqlite:///{path}"
    code, out, _ = cli(capsys, "query", "--storage", url, "--runs", "--json")  # read-only: no write
    assert code == 0 and all(r["image_auroc"] is None for r in json.loads(out))
    assert cli(capsys, "query", "--storage", url, "--classes", "--json")[0] == 0
    assert path.read_bytes() == before
    engine = open_storage(url)  # a writer brings the file up to date: nullable columns, a new table
    with sqlite3.connect(path) as con:
        cols = {r[1] for r in con.execute("PRAGMA table_info(ablate_runs)")}
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert set(EVAL_METRICS) <= cols and "ablate_class_metrics" in tables
    assert query.runs_frame(engine).image_auroc.isna().all()


def test_train_eval_batches_prints_the_metrics_in_json(capsys):
    args = ["train", "--fix", "zero-init", "--steps", "2", "--batches", "2", "--device", "cpu", "--no-baseline"]
    code, out, _ = cli(capsys, *args, "--eval-batches", "3", "--json")
    doc = json.loads(out)
    assert code == 0 and all(0 <= doc[m] <= 1 for m in EVAL_METRICS if doc[m] is not None)
    assert set(doc["evaluation"]["per_class"]) == set(CLASSES)
    assert doc["evaluation"]["counts"]["carpet"]["pixels"] == doc["evaluation"]["counts"]["carpet"]["images"] * 64 * 64
    code, out, _ = cli(capsys, *args, "--json")
    assert code == 0 and json.loads(out)["evaluation"] is None and json.loads(out)["image_auroc"] is None
    code, _, err = cli(capsys, *args, "--eval-batches", "-1")
    assert code == 2 and "--eval-batches" in err


def test_the_bulk_writer_stores_the_same_class_rows_as_finish_run(tmp_path):
    from ablate.store import claims, provenance
    from ablate.store.bulk import FinishedRun, write_finished_runs

    ev = evaluate(_Scorer("random"), _test_batches(4, 5), torch.device("cpu"), CLASSES)[0]
    summary = {"steps": 3, "image_auroc": ev.metrics["image_auroc"], "evaluation": ev.to_dict()}
    frames = []
    for how in ("stream", "bulk"):
        engine = open_storage(f"sqlite:///{tmp_path / how}.db")
        sid = provenance.register_study(
            engine, "s", "s", "x", "h" * 64, [{"metric": "loss_slope", "direction": "minimize"}]
        )
        if how == "stream":
            run_id = claims.start_run(engine, sid, "baseline", None, 0, "no-branch", None, "cpu")
            claims.finish_run(engine, run_id, "complete", summary)
        else:
            write_finished_runs(
                engine, sid, [FinishedRun("baseline", None, 0, "no-branch", None, "cpu", "complete", summary)]
            )
        frames.append(query.class_metrics_frame(engine, "s").drop(columns=["run_id"]))
    assert len(frames[0]) == len(CLASSES)
    assert frames[0].equals(frames[1])
    assert frames[0].set_index("class_name").image_auroc.to_dict() == pytest.approx(
        {c: v["image_auroc"] for c, v in ev.per_class.items()}, nan_ok=True
    )


@pytest.mark.parametrize("scoring", ["aaclip", "softmax"])
def test_the_aaclip_scores_of_a_model_told_the_mask_rank_it_first(scoring):
    """The real scoring path (AA-CLIP's blurred logit-difference maps and class-normalised image
    scores, or the softmax alternative) on logits planted from the mask: near-perfect pixel ranking
    (the grid is coarser than the mask), perfect images; planted the other way round, the worst."""
    from ablate.subjects.aaclip.arm import ArmSetup
    from ablate.subjects.aaclip.model import ForwardOut
    from ablate.subjects.aaclip.scoring import Scoring

    setup = ArmSetup(_cfg())
    model = setup.model
    batches = list(setup.test_batches())
    for sign, expect in ((1.0, 1.0), (-1.0, 0.0)):

        def told(images, class_idx, sign=sign, batch_of={id(b.images): b for b in batches}):  # noqa: B006
            b = batch_of[id(images)]
            coarse = torch.nn.functional.adaptive_avg_pool2d(b.masks.unsqueeze(1), model.grid)
            logits = torch.cat([-coarse, coarse], 1) * 20 * sign
            det = torch.stack([-b.labels.float(), b.labels.float()], 1) * 0.2 * sign
            return ForwardOut([logits] * len(model.levels), det, None, None, det)

        model.forward = told
        res = evaluate(model, batches, torch.device("cpu"), model.classes, scoring=Scoring(scoring))[0]
        assert res.metrics["image_auroc"] == expect
        assert abs(res.metrics["pixel_auroc"] - expect) < 0.05, res.metrics
    del model.forward
    real = evaluate(model, batches, torch.device("cpu"), model.classes, scoring=Scoring(scoring))[0]
    assert 0.2 < real.metrics["pixel_auroc"] < 0.8  # untrained: near chance


def test_the_report_shows_the_best_and_the_last_evaluation_of_each_arm(eval_db):
    from ablate.report.document import compose
    from ablate.report.markdown import render_markdown
    from ablate.report.model import gather

    engine = open_storage(f"sqlite:///{eval_db}", create=False)
    report = gather(engine, "evalmini")
    arms = [e for e in report.evidence if e.n_seeds]
    assert arms and all(set(e.eval_best) == set(EVAL_METRICS) for e in arms)
    runs = query.runs_frame(engine)
    steps = query.step_metrics_for_runs(engine, list(runs.run_id), prefix="eval/")
    for e in arms:
        for m in ("image_auroc", "pixel_auroc"):  # the last is the end's evaluation, the run's own column
            assert e.eval_last[m].estimate == pytest.approx(e.auroc[m].estimate)
        assert all(e.eval_best[m].estimate >= e.eval_last[m].estimate - 1e-12 for m in EVAL_METRICS)
    # one seed: the best is the larger of the run's two evaluations, read straight from its step rows
    from ablate.report.model import BASELINE_LABEL

    base = report.arm(BASELINE_LABEL)
    run_id = int(runs[runs.role == "baseline"].run_id.iloc[0])
    mine = steps[(steps.run_id == run_id) & (steps.name == "eval/pixel_auroc")]
    assert base.eval_best["pixel_auroc"].estimate == pytest.approx(mine.value.max())
    text = render_markdown(compose(report, {}, "db", "now"), Path("."))
    assert "pixel_auroc best" in text and "pixel_auroc last" in text and "eval.every" in text
