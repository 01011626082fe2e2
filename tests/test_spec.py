"""Spec validation: every bad spec is one line naming the field, exit 2, and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ablate.errors import AblateInputError
from ablate.spec import load_spec, parse_spec
from tests.study_helpers import MINI, write_spec

ROOT = Path(__file__).resolve().parents[1]

BAD = [
    ("unknown key", MINI.replace("[training]", "[training]\nstepz = 3"), "training.stepz", "unknown key"),
    ("unknown section", MINI + "\n[optimizer]\nlr = 1\n", "optimizer", "unknown key"),
    ("wrong type", MINI.replace("steps = 6", 'steps = "six"'), "training.steps", "valid integer"),
    ("float steps", MINI.replace("steps = 6", "steps = 6.5"), "training.steps", "valid integer"),
    (
        "empty fix list",
        MINI.replace('fixes = ["none", "fixed-scale", "tanh-gate"]', "fixes = []"),
        "search.fixes",
        "at least one fix",
    ),
    ("unknown fix", MINI.replace('"none", "fixed', '"nope", "fixed'), "search.fixes", "unknown fix 'nope'"),
    (
        "inverted scale range",
        MINI.replace("[search]", "[search]\nscale = { min = 1.0, max = 0.01 }"),
        "search.scale",
        "must be below max",
    ),
    (
        "unknown objective",
        MINI.replace("[study]", '[study]\nobjectives = ["accuracy"]'),
        "study.objectives",
        "unknown objective 'accuracy'",
    ),
    ("no seeds", MINI.replace("seeds = [0, 1]", "seeds = []"), "study.seeds", "at least one seed"),
    ("bad backbone", MINI + '\n[model]\nbackbone = "vit-xxl"\n', "model.backbone", "unknown backbone"),
    ("inject past the last block", MINI + "\n[model]\ninject_at = 99\n", "model.inject_at", "must be in [0, 7]"),
    ("infinite lr", MINI.replace("steps = 6", "steps = 6\nlr = inf"), "training.lr", "finite"),
    (
        "infinite scale bound",
        MINI.replace("[search]", "[search]\nscale = { min = 0.01, max = inf }"),
        "search.scale.max",
        "finite",
    ),
    (
        "negative sampler seed",
        MINI.replace("[study]", "[study]\nsampler_seed = -1"),
        "study.sampler_seed",
        "must be >= 0, got -1",
    ),
    ("absurd step count", MINI.replace("steps = 6", "steps = 1000000000000"), "training.steps", "1000000"),
    (
        "pruning multi-objective",
        MINI.replace("[study]", "[study]\npruning = true"),
        "study.pruning",
        "single-objective",
    ),
]


@pytest.mark.parametrize("label, text, field, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_spec_names_the_field(label, text, field, fragment):
    with pytest.raises(AblateInputError) as info:
        parse_spec(text)
    assert info.value.field == field, str(info.value)
    assert fragment in info.value.message


MACHINE = [
    (
        "missing checkpoint",
        MINI + '\n[model]\npretrained = "/no/such/ViT-L-14-336.pt"\n',
        "model.pretrained",
        "not found",
    ),
    ("uncached tag", MINI + '\n[model]\npretrained = "openai"\n', "model.pretrained", "local checkpoint"),
    ("garbage checkpoint", MINI + '\n[model]\npretrained = "{tmp}/garbage.pt"\n', "model.pretrained", "not a PyTorch"),
    ("not TOML", MINI + "\n[[[", "spec", "not valid TOML"),
    ("unknown top-level key", "foo = 1\n" + MINI, "foo", "unknown key"),
]


@pytest.mark.parametrize("label, text, field, fragment", BAD[:6] + MACHINE, ids=[b[0] for b in BAD[:6] + MACHINE])
def test_bad_spec_cli_exit_2_nothing_written(tmp_path, label, text, field, fragment):
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint")
    spec = write_spec(tmp_path, text.replace("{tmp}", str(tmp_path)))
    db = tmp_path / "results.db"
    proc = subprocess.run(
        [sys.executable, "-m", "ablate", "study", "run", str(spec), "--storage", f"sqlite:///{db}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith(f"error: {field}: ") and fragment in lines[0], lines[0]  # a spec key, never --key
    assert proc.stdout == ""
    assert not db.exists()
    assert not (tmp_path / "plots").exists()


def test_shipped_specs_are_valid():
    quick, _ = load_spec(ROOT / "studies" / "quick.toml")
    assert quick.model.backbone == "tiny" and quick.training.device == "cpu"
    assert len(quick.search.fixes) == 7
    real, _ = load_spec(ROOT / "studies" / "aaclip_vitl14.toml")
    assert real.model.backbone == "vit-l-14-336@518" and real.data.batch_size == 2
    assert real.study.seeds == [0, 1, 2]


def test_missing_spec_file(tmp_path):
    with pytest.raises(AblateInputError, match="no such file"):
        load_spec(tmp_path / "nope.toml")


def test_tanh_gate_default_range_holds_its_default():
    spec = parse_spec(MINI)
    rng = spec.search.range_for("tanh-gate")
    assert (rng.min, rng.max, rng.log) == (0.0, 1.0, False)
    assert spec.search.range_for("fixed-scale").log


def test_arm_config_carries_the_spec():
    spec = parse_spec(MINI)
    arm = spec.arm("fixed-scale", 0.2, seed=1)
    assert (arm.fix, arm.scale, arm.seed) == ("fixed-scale", 0.2, 1)
    assert (arm.run.steps, arm.run.probe_every, arm.probe_batches, arm.subject.data.batch_size) == (6, 3, 2, 2)


def test_a_binary_spec_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b'name = "x"\n\xff\xfe\x00 binary')
    with pytest.raises(AblateInputError) as info:
        load_spec(path)
    assert info.value.field == "SPEC" and "not UTF-8 text" in info.value.message


@pytest.mark.parametrize(
    "label, extra, field",
    [
        ("in-memory storage", ["--storage", "sqlite://"], "--storage"),
        ("plots into a file", ["--plots", "{tmp}/taken.png"], "--plots"),
    ],
)
def test_bad_study_arguments_are_refused_before_any_work(tmp_path, label, extra, field):
    (tmp_path / "taken.png").write_bytes(b"x")
    spec = write_spec(tmp_path, MINI)
    db = tmp_path / "results.db"
    args = ["--storage", f"sqlite:///{db}", *[a.replace("{tmp}", str(tmp_path)) for a in extra]]
    proc = subprocess.run(
        [sys.executable, "-m", "ablate", "study", "run", str(spec), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {field}: ") and len(proc.stderr.strip().splitlines()) == 1
    assert not db.exists()


def test_plot_into_a_file_exits_2(mini_study_db, tmp_path):
    (tmp_path / "taken").write_bytes(b"x")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ablate",
            "plot",
            "--storage",
            f"sqlite:///{mini_study_db}",
            "--out",
            str(tmp_path / "taken"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: --out: "), proc.stderr
