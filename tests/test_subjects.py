"""A model ablate has never seen, named only in a spec, is a subject: the example through the CLI, the
refusals of a bad [subject], packed arms, and the engine's imports."""

from __future__ import annotations

import ast
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from ablate.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny_lm"

# A small model of the user's own, written beside its spec (as a user would): two blocks with
# adapters, a head, a branch joining after block 0.
TOY = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.adapter = nn.Linear(width, width)

    def forward(self, x):
        x = torch.tanh(self.lin(x))
        return x + 0.1 * self.adapter(x)


class Toy(nn.Module):
    def __init__(self, width=8, twice=False, freeze_adapter=False, tie=False):
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.blocks = nn.ModuleList([Block(width), Block(width)])
        self.head = nn.Linear(width, 1)
        self.twice = twice
        if freeze_adapter:
            self.blocks[0].adapter.weight.requires_grad_(False)
        if tie:
            self.blocks[1].adapter.weight = self.blocks[0].lin.weight

    def forward(self, x):
        x = self.embed(x)
        x = self.blocks[0](x)
        if self.twice:
            x = self.blocks[0](x)
        x = self.blocks[1](x)
        return self.head(x).squeeze(-1)


def build(**kw):
    return Toy(**kw)


def batches(seed, split, batch_size):
    g = torch.Generator().manual_seed(seed * 10 + {"train": 0, "probe": 1, "gain": 2}[split])
    for _ in range(32):
        x = torch.randn(batch_size, 4, generator=g)
        yield {"x": x, "y": x.sum(-1).sin()}


def loss(model, batch):
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


def loss_item(model, batch):
    out = model(batch["x"])
    return ((out - batch["y"]) ** 2).mean() * float(out.abs().max().item() > -1)


class Branch(nn.Module):
    def __init__(self, width, out=None):
        super().__init__()
        self.fc = nn.Linear(width, out or width)

    def forward(self, x):
        return self.fc(x)


def branch(model):
    return Branch(model.head.in_features)


def wide_branch(model):
    return Branch(model.head.in_features, model.head.in_features + 1)
"""

SPEC = """
name = "toy"
[subject]
factory = "toy_model:build"
batches = "toy_model:batches"
loss = "toy_model:loss"
batch_size = 8
[subject.groups]
adapters = ["re:blocks\\\\.\\\\d+\\\\.adapter\\\\..*"]
head = ["head"]
[subject.branch]
at = "blocks.0"
build = "toy_model:branch"
[training]
steps = 12
lr = 1e-2
device = "cpu"
[probe]
batches = 2
gain_batches = 4
every = 6
[search]
fixes = ["none", "fixed-scale"]
[study]
trials = 2
seeds = [0, 1]
"""


def _toy(tmp_path: Path, spec: str = SPEC) -> Path:
    (tmp_path / "toy_model.py").write_text(TOY)
    path = tmp_path / "toy.toml"
    path.write_text(spec)
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_example_subject_end_to_end_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """examples/tiny_lm as a user runs it: subject check, probe, a 2-trial study, query, plot, report."""
    here = tmp_path / "tiny_lm"
    shutil.copytree(EXAMPLE, here)
    spec = str(here / "study.toml")
    db = f"sqlite:///{tmp_path / 'lm.db'}"

    code, out, _ = _run(capsys, "subject", "check", spec, "--json")
    check = json.loads(out)
    assert code == 0 and check["branch"] == {"at": "blocks.0", "params": 16640, "calls": 1}
    assert check["groups"]["adapters"]["tensors"] == 8 and check["groups"]["head"]["params"] == 64 * 32 + 32
    assert check["groups"]["all"]["params"] == check["groups"]["adapters"]["params"] + check["groups"]["head"]["params"]

    code, out, _ = _run(capsys, "probe", "--spec", spec, "--fix", "zero-init", "--json")
    probe = json.loads(out)
    assert code == 0 and probe["grad_ratio"] == 1.0 and set(probe["per_batch_ratios"]) == {"adapters", "head", "all"}

    code, _, _ = _run(
        capsys, "study", "run", spec, "--storage", db, "--trials", "2", "--quiet", "--plots", str(tmp_path / "p")
    )
    assert code == 0
    code, out, _ = _run(capsys, "query", "--storage", db, "--group-by", "fix", "--format", "json")
    fixes = {r["fix"]: r for r in json.loads(out)}
    assert fixes["frozen (control)"]["adapter_gain"] == 0.0  # exactly: the adapters never moved
    assert fixes["no-branch (baseline)"]["adapter_gain_lo"] > 0  # the baseline's adapters learn the task
    assert {"none", "fixed-scale"} <= set(fixes)
    code, out, _ = _run(capsys, "query", "--storage", db, "--runs", "--format", "json")
    runs = json.loads(out)
    assert len(runs) == 8 and all(r["train_grad_ratio_adapters"] is not None for r in runs)
    assert all("train_grad_ratio_layers" not in r for r in runs)
    assert (tmp_path / "p" / "grad-norms.png").is_file()
    code, out, _ = _run(capsys, "report", "tiny-lm", "--storage", db, "--out", str(tmp_path / "r"))
    text = (tmp_path / "r" / "report.md").read_text()
    assert code == 0 and "`lm:build`" in text and "`adapters`" in text and "CLIP" not in text
    # plot --x/--y take the metrics of this study's own groups, and name them for AA-CLIP's
    xy = tmp_path / "xy"
    code, _, err = _run(capsys, "plot", "--storage", db, "--x", "train_grad_ratio_adapters", "--out", str(xy))
    assert code == 0, err
    assert sorted(f.name for f in xy.iterdir())[0] == "tradeoff-adapter_gain-vs-train_grad_ratio_adapters.png"
    code, _, err = _run(capsys, "plot", "--storage", db, "--x", "train_grad_ratio_layers", "--out", str(xy))
    assert code == 2 and err.startswith(
        "error: --x: unknown metric 'train_grad_ratio_layers' (did you mean 'train_grad_ratio_adapters'?)"
    )


def test_packed_arms_of_a_user_model_train_as_alone(tmp_path: Path) -> None:
    from ablate import arms
    from ablate.spec import load_spec

    spec, _ = load_spec(_toy(tmp_path))
    cfgs = [spec.arm("learnable-alpha", s, seed) for seed, s in ((0, 0.1), (1, 0.5))]
    alone = [arms.train_arm(c) for c in cfgs]
    packed = arms.train_pack(cfgs)
    for a, p in zip(alone, packed, strict=True):
        assert p.metrics.keys() == a.metrics.keys()
        for name in a.metrics:
            assert p.metrics[name] == pytest.approx(a.metrics[name], rel=1e-4, abs=1e-7), name
        assert p.adapter_gain == pytest.approx(a.adapter_gain, rel=1e-4, abs=1e-7)
        assert p.probes[-1].grad_ratio == pytest.approx(a.probes[-1].grad_ratio, rel=1e-4)


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (('head = ["head"]', 'head = ["nope"]'), "subject.groups.head", "matches no parameter"),
        (('head = ["head"]', 'head = ["blocks.0.adapter"]'), "subject.groups.head", "overlaps group 'adapters'"),
        (
            ("batch_size = 8", "batch_size = 8\n[subject.args]\nfreeze_adapter = true"),
            "subject.groups.adapters",
            "frozen",
        ),
        (("batch_size = 8", "batch_size = 8\n[subject.args]\ntie = true"), "subject.groups.adapters", "tied"),
        (('at = "blocks.0"', 'at = "blocks.7"'), "subject.branch.at", "no module 'blocks.7'"),
        (("batch_size = 8", "batch_size = 8\n[subject.args]\ntwice = true"), "subject.branch.at", "ran 2 times"),
        (('build = "toy_model:branch"', 'build = "toy_model:wide_branch"'), "subject.branch.build", "must match x"),
        (('factory = "toy_model:build"', 'factory = "toy_modle:build"'), "subject.factory", "cannot import"),
        (('loss = "toy_model:loss"', 'loss = "toy_model:nope"'), "subject.loss", "no attribute"),
        (('adapters = ["re:', 'lo = ["re:'), "subject.groups", "reserved"),
    ],
)
def test_bad_subject_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: tuple[str, str], field: str, words: str
) -> None:
    spec = _toy(tmp_path, SPEC.replace(*edit))
    db = tmp_path / "r.db"
    for args in (["subject", "check", str(spec)], ["study", "run", str(spec), "--storage", f"sqlite:///{db}"]):
        code, out, err = _run(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {field}") and words in lines[0], lines
    if db.exists():  # nothing half-written: no study, no run
        with sqlite3.connect(db) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert "ablate_studies" not in tables or not conn.execute("SELECT count(*) FROM ablate_studies").one()


def test_a_model_vmap_cannot_run_is_told_it_cannot_be_packed(tmp_path: Path, capsys) -> None:
    spec = _toy(tmp_path, SPEC.replace('loss = "toy_model:loss"', 'loss = "toy_model:loss_item"') + "")
    text = spec.read_text().replace('device = "cpu"', 'device = "cpu"\npack = 2')
    spec.write_text(text)
    code, _, err = _run(capsys, "study", "run", str(spec), "--storage", f"sqlite:///{tmp_path / 'r.db'}", "-q")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: training.pack: this model cannot be packed")


def test_aaclip_subject_check_counts_without_weights(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "subject", "check", str(ROOT / "studies" / "aaclip_vitl14.toml"), "--json")
    report = json.loads(out)
    assert code == 0 and report["groups"]["layers"]["params"] == 6 * 1024 * 1024
    assert report["groups"]["all"]["params"] == 10_223_616  # AA-CLIP's image adapter, bias-free
    assert report["extra"]["text_adapter"]["params"] == 2_359_296  # its Stage 1 text adapter
    assert report["branch"]["at"] == "visual.transformer.resblocks.0" and report["branch"]["calls"] == 1


ENGINE_PACKAGES = ("ablate/engine", "ablate/eval")
FORBIDDEN = ("ablate.subjects", "ablate.store", "ablate.study", "ablate.cli", "ablate.report", "ablate.plot", "optuna",
             "sqlalchemy", "typer", "rich")  # fmt: skip


def test_the_engine_imports_no_subject_optuna_sql_or_cli() -> None:
    for package in ENGINE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                bad = [n for n in names if n.startswith(FORBIDDEN)]
                assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
