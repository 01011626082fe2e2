"""Every malformed input is refused before anything is written: exit 2, one line naming the field as
the user wrote it (a spec key path, a CLI option or argument), and the database unchanged.

One table, run through the real entry point in-process against a database that already holds a
finished study; each case compares a full dump of the database before and after.
"""

from __future__ import annotations

import pytest

from tests.study_helpers import MINI, copy_db, refused_line

# (id, spec text or None, extra argv, the field the error must name). "{spec}", "{db}" and "{tmp}"
# are filled in per case; a spec case runs `study run {spec} --storage {db}` plus the extra argv.
S = MINI.replace('name = "mini"', 'name = "other"')


def sub(old: str, new: str) -> str:
    assert old in S, old
    return S.replace(old, new)


def add(section: str, line: str) -> str:
    return S.replace(f"[{section}]", f"[{section}]\n{line}") if f"[{section}]" in S else S + f"\n[{section}]\n{line}\n"


SPEC_CASES = [
    ("unknown key", add("training", "stepz = 3"), [], "training.stepz"),
    ("unknown section", S + "\n[optimizer]\nlr = 1\n", [], "optimizer"),
    ("unknown top-level key", "foo = 1\n" + S, [], "foo"),
    ("steps not a number", sub("steps = 6", 'steps = "six"'), [], "training.steps"),
    ("steps fractional", sub("steps = 6", "steps = 6.5"), [], "training.steps"),
    ("steps zero", sub("steps = 6", "steps = 0"), [], "training.steps"),
    ("steps negative", sub("steps = 6", "steps = -5"), [], "training.steps"),
    ("steps absurd", sub("steps = 6", "steps = 1000000000000"), [], "training.steps"),
    ("lr infinite", add("training", "lr = inf"), [], "training.lr"),
    ("lr nan", add("training", "lr = nan"), [], "training.lr"),
    ("lr zero", add("training", "lr = 0.0"), [], "training.lr"),
    ("lr negative", add("training", "lr = -0.001"), [], "training.lr"),
    ("device unknown", sub('device = "cpu"', 'device = "tpu"'), [], "training.device"),
    ("pack zero", add("training", "pack = 0"), [], "training.pack"),
    ("pack absurd", add("training", "pack = 100000"), [], "training.pack"),
    ("compile not a bool", add("training", 'compile = "yes"'), [], "training.compile"),
    ("batch size zero", sub("batch_size = 2", "batch_size = 0"), [], "data.batch_size"),
    ("batch size absurd", sub("batch_size = 2", "batch_size = 100000000"), [], "data.batch_size"),
    ("train size zero", sub("train_size = 16", "train_size = 0"), [], "data.train_size"),
    ("train size absurd", sub("train_size = 16", "train_size = 1000000000000"), [], "data.train_size"),
    ("anomaly fraction above 1", add("data", "anomaly_fraction = 2.0"), [], "data.anomaly_fraction"),
    ("anomaly fraction nan", add("data", "anomaly_fraction = nan"), [], "data.anomaly_fraction"),
    ("data seed negative", add("data", "seed = -1"), [], "data.seed"),
    ("probe batches one", sub("batches = 2", "batches = 1"), [], "probe.batches"),
    ("probe every negative", sub("every = 3", "every = -3"), [], "probe.every"),
    ("probe threshold infinite", add("probe", "threshold = inf"), [], "probe.threshold"),
    ("probe threshold zero", add("probe", "threshold = 0.0"), [], "probe.threshold"),
    ("probe group unknown", add("probe", 'group = "heads"'), [], "probe.group"),
    ("gain batches one", sub("gain_batches = 2", "gain_batches = 1"), [], "probe.gain_batches"),
    ("no fixes", sub('fixes = ["none", "fixed-scale", "tanh-gate"]', "fixes = []"), [], "search.fixes"),
    ("unknown fix", sub('"none", "fixed', '"nope", "fixed'), [], "search.fixes"),
    ("fix listed twice", sub('"none", "fixed', '"none", "none", "fixed'), [], "search.fixes"),
    ("baseline as a fix", sub('"none", "fixed', '"no-branch", "fixed'), [], "search.fixes"),
    ("scale range inverted", add("search", "scale = { min = 1.0, max = 0.01 }"), [], "search.scale"),
    ("scale max infinite", add("search", "scale = { min = 0.01, max = inf }"), [], "search.scale.max"),
    ("scale min negative", add("search", "scale = { min = -1.0, max = 1.0 }"), [], "search.scale.min"),
    (
        "scale for a fix not searched",
        add("search", "scale_per_fix = { layerscale = { min = 0.1, max = 1.0 } }"),
        [],
        "search.scale_per_fix",
    ),  # fmt: skip
    ("default scale outside its range", add("search", "scale = { min = 0.5, max = 1.0 }"), [], "search.scale"),
    ("unknown objective", add("study", 'objectives = ["accuracy"]'), [], "study.objectives"),
    (
        "three objectives",
        add("study", 'objectives = ["adapter_gain", "dilution_train", "loss_slope_rel"]'),
        [],
        "study.objectives",
    ),  # fmt: skip
    ("objective twice", add("study", 'objectives = ["adapter_gain", "adapter_gain"]'), [], "study.objectives"),
    (
        "ratio objective rewarding amplification",
        add("study", 'objectives = ["train_grad_ratio"]'),
        [],
        "study.objectives",
    ),  # fmt: skip
    ("no seeds", sub("seeds = [0, 1]", "seeds = []"), [], "study.seeds"),
    ("seed twice", sub("seeds = [0, 1]", "seeds = [0, 0]"), [], "study.seeds"),
    ("sampler unknown", add("study", 'sampler = "grid"'), [], "study.sampler"),
    ("sampler seed negative", add("study", "sampler_seed = -1"), [], "study.sampler_seed"),
    ("trials zero", sub("trials = 4", "trials = 0"), [], "study.trials"),
    (
        "more trials than distinct points",
        sub('"none", "fixed-scale", "tanh-gate"', '"none", "zero-init"'),
        [],
        "study.trials",
    ),  # fmt: skip
    ("pruning with two objectives", add("study", "pruning = true"), [], "study.pruning"),
    ("constraint without its minimum", add("study", 'constraint_metric = "dilution_train"'), [], "study"),
    ("backbone unknown", S + '\n[model]\nbackbone = "vit-xxl"\n', [], "model.backbone"),
    ("inject past the last block", S + "\n[model]\ninject_at = 99\n", [], "model.inject_at"),
    ("inject negative", S + "\n[model]\ninject_at = -1\n", [], "model.inject_at"),
    ("adapter weight above 1", S + "\n[model]\nadapter_weight = 5.0\n", [], "model.adapter_weight"),
    ("weights file missing", S + '\n[model]\npretrained = "/no/such/ViT-L-14-336.pt"\n', [], "model.pretrained"),
    ("weights not a checkpoint", S + '\n[model]\npretrained = "{tmp}/garbage.pt"\n', [], "model.pretrained"),
    ("weights tag not cached", S + '\n[model]\npretrained = "openai"\n', [], "model.pretrained"),
    ("eval batches zero", add("eval", "batches = 0"), [], "eval.batches"),
    ("eval bins one", add("eval", "bins = 1"), [], "eval.bins"),
    ("eval enabled not a bool", add("eval", 'enabled = "yes"'), [], "eval.enabled"),
    ("evaluation objective without evaluation", add("study", 'objectives = ["image_auroc"]'), [], "study.objectives"),
    ("precision unknown", add("training", 'precision = "fp8"'), [], "training.precision"),
    ("stage1 lr zero", S + "\n[stage1]\nlr = 0.0\n", [], "stage1.lr"),
    ("stage1 epochs zero", S + "\n[stage1]\nepochs = 0\n", [], "stage1.epochs"),
    ("stage1 attention unknown", S + '\n[stage1]\nsurgery_attention = "heads"\n', [], "stage1.surgery_attention"),
    ("eval scoring unknown", add("eval", 'scoring = "mean"'), [], "eval.scoring"),
    ("eval domain unknown", add("eval", 'domain = "space"'), [], "eval.domain"),
    ("augment unknown", add("data", 'augment = "mixup"'), [], "data.augment"),
    ("detection logit scale zero", S + "\n[model]\ndetection_logit_scale = 0.0\n", [], "model.detection_logit_scale"),
    ("text adapter missing", S + '\n[model]\ntext_adapter = "{tmp}/no_adapter.pt"\n', [], "model.text_adapter"),
    (
        "text adapter of another shape",
        S + '\n[model]\ntext_adapter = "{tmp}/adapter_32.pt"\n',
        [],
        "model.text_adapter",
    ),
    ("text adapter not a checkpoint", S + '\n[model]\ntext_adapter = "{tmp}/garbage.pt"\n', [], "model.text_adapter"),
    ("name with spaces", sub('name = "other"', 'name = "my study"'), [], "name"),
    ("not TOML", S + "\n[[[", [], "spec"),
]

CLI_CASES = [
    ("spec file missing", None, ["study", "run", "{tmp}/nope.toml", "--storage", "{db}"], "SPEC"),
    ("spec not UTF-8", None, ["study", "run", "{tmp}/latin1.toml", "--storage", "{db}"], "SPEC"),
    ("spec binary", None, ["study", "run", "{tmp}/binary.toml", "--storage", "{db}"], "SPEC"),
    ("trials zero", S, ["--trials", "0"], "--trials"),
    ("trials not a number", S, ["--trials", "many"], "--trials"),
    ("empty study name", S, ["--name", " "], "--name"),
    ("name taken by another spec", S, ["--name", "mini"], "--name"),
    ("in-memory storage", S, ["--storage", "sqlite://"], "--storage"),
    ("storage scheme unknown", S, ["--storage", "nosuchdb://x/y"], "--storage"),
    ("plots into a file", S, ["--plots", "{tmp}/taken.png"], "--plots"),
    ("threads zero", S, ["--threads", "0"], "--threads"),
    ("train steps zero", None, ["train", "--steps", "0"], "--steps"),
    ("train steps not a number", None, ["train", "--steps", "abc"], "--steps"),
    ("train scale zero", None, ["train", "--fix", "fixed-scale", "--scale", "0"], "--scale"),
    ("train scale negative", None, ["train", "--fix", "tanh-gate", "--scale", "-0.5"], "--scale"),
    ("train scale infinite", None, ["train", "--fix", "fixed-scale", "--scale", "inf"], "--scale"),
    ("train fix unknown", None, ["train", "--fix", "bogus"], "--fix"),
    ("train batch size zero", None, ["train", "--batch-size", "0"], "--batch-size"),
    ("train inject past the last block", None, ["train", "--inject-at", "99"], "--inject-at"),
    ("train threshold nan", None, ["train", "--threshold", "nan"], "--threshold"),
    ("train weights missing", None, ["train", "--pretrained", "/no/such.pt"], "--pretrained"),
    ("train eval batches negative", None, ["train", "--eval-batches", "-1"], "--eval-batches"),
    ("probe device unknown", None, ["probe", "--device", "tpu"], "--device"),
    ("probe backbone unknown", None, ["probe", "--backbone", "vit-huge"], "--backbone"),
    ("probe group unknown", None, ["probe", "--group", "heads"], "--group"),
    ("probe batches one", None, ["probe", "--batches", "1"], "--batches"),
    ("probe combination invalid", None, ["probe", "--fix", "zero-init+norm-match"], "--fix"),
    ("query study unknown", None, ["query", "--storage", "{db}", "--study", "nosuch"], "--study"),
    ("query group-by unknown", None, ["query", "--storage", "{db}", "--group-by", "seed"], "--group-by"),
    ("query format unknown", None, ["query", "--storage", "{db}", "--format", "xml"], "--format"),
    ("query storage missing", None, ["query", "--storage", "sqlite:///{tmp}/none.db"], "--storage"),
    ("query sql writes", None, ["query", "--storage", "{db}", "--sql", "delete from ablate_runs"], "--sql"),
    (
        "query sql two statements",
        None,
        ["query", "--storage", "{db}", "--sql", "select 1; drop table trials"],
        "--sql",
    ),  # fmt: skip
    (
        "query sql timeout zero",
        None,
        ["query", "--storage", "{db}", "--sql", "select 1", "--sql-timeout", "0"],
        "--sql-timeout",
    ),  # fmt: skip
    ("plot study unknown", None, ["plot", "--storage", "{db}", "--study", "nosuch", "--out", "{tmp}/p"], "--study"),
    ("plot kind unknown", None, ["plot", "--storage", "{db}", "--kind", "bogus", "--out", "{tmp}/p"], "--kind"),
    ("plot into a file", None, ["plot", "--storage", "{db}", "--out", "{tmp}/taken.png"], "--out"),
]

CASES = [(f"spec: {c[0]}", *c[1:]) for c in SPEC_CASES] + [(f"cli: {c[0]}", *c[1:]) for c in CLI_CASES]


def test_the_table_is_large():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def workdir(mini_study_db, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("malformed")
    copy_db(mini_study_db, tmp / "results.db")
    (tmp / "garbage.pt").write_bytes(b"this is not a checkpoint")
    # a text adapter of a 32-wide text tower: the tiny backbone's is 64 wide
    from ablate.subjects.aaclip.layers import TextAdapter
    from ablate.subjects.aaclip.stage1 import to_bytes

    (tmp / "adapter_32.pt").write_bytes(to_bytes(TextAdapter(32, 32).state_dict()))
    (tmp / "taken.png").write_bytes(b"x")
    (tmp / "latin1.toml").write_bytes(S.replace("other", "caf\xe9").encode("latin-1"))
    (tmp / "binary.toml").write_bytes(b'name = "x"\n\xff\xfe\x00 binary')
    return tmp


@pytest.mark.parametrize("label, spec_text, argv, field", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_refused_before_anything_is_written(capsys, workdir, label, spec_text, argv, field):
    db = workdir / "results.db"
    fill = {"{tmp}": str(workdir), "{db}": f"sqlite:///{db}"}

    def filled(s: str) -> str:
        for k, v in fill.items():
            s = s.replace(k, v)
        return s

    args = [filled(a) for a in argv]
    if spec_text is not None:
        spec = workdir / "case.toml"
        spec.write_text(filled(spec_text))
        args = ["study", "run", str(spec), "--storage", f"sqlite:///{db}", "--quiet", *args]
    line = refused_line(capsys, db, args)
    assert field in line, line
    if field.startswith(("--", "study", "training", "model", "data", "probe", "search", "eval", "stage1")):
        assert f"{field}:" in line or f"'{field}'" in line, line
    assert not (workdir / "plots").exists()
