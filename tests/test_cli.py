"""The command line as a user runs it: JSON contract, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest

from ablate.cli import main

FAST = ["--batches", "2", "--batch-size", "2", "--device", "cpu"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.mark.parametrize("fix", ["zero-init", "tanh-gate"])
def test_probe_json_exact_unit_ratio(capsys, fix):
    code, out, _ = run_cli(capsys, "probe", "--fix", fix, "--json", *FAST)
    assert code == 0
    doc = json.loads(out)
    for key in (
        "fix",
        "scale",
        "grad_norm_without",
        "grad_norm_with",
        "grad_ratio",
        "grad_ratio_ci",
        "grad_share",
        "norm_inflation",
        "verdict",
    ):
        assert key in doc
    assert doc["fix"] == fix and doc["grad_ratio"] == 1.0 and doc["grad_ratio_ci"] == [1.0, 1.0]


def test_probe_all_fixes_table(capsys):
    code, out, _ = run_cli(capsys, "probe", *FAST)
    assert code == 0
    for name in (
        "none",
        "fixed-scale",
        "learnable-alpha",
        "zero-init",
        "tanh-gate",
        "layerscale",
        "norm-match",
        "no-branch",
    ):
        assert name in out


def test_train_json_keys_and_values(capsys):
    code, out, _ = run_cli(
        capsys, "train", "--fix", "learnable-alpha", "--steps", "6", "--probe-every", "3", "--json", *FAST
    )
    assert code == 0
    doc = json.loads(out)
    for key in (
        "fix",
        "scale",
        "seed",
        "steps",
        "loss_first",
        "loss_last",
        "loss_slope",
        "grad_ratio_init",
        "wall_s",
        "steps_per_s",
    ):
        assert key in doc
    assert doc["steps"] == 6 and doc["scale"] == 0.1 and [p["step"] for p in doc["probes"]] == [0, 3, 6]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["probe", "--fix", "bogus"], "--fix: unknown fix 'bogus'; valid:"),
        (["probe", "--fix", "fixed-scale", "--scale", "0"], "--scale: must be a finite number > 0"),
        (["probe", "--fix", "fixed-scale", "--scale", "-2"], "--scale"),
        (["probe", "--fix", "none", "--pretrained", "/no/such/ckpt.pt"], "--pretrained: checkpoint file not found"),
        (["train", "--steps", "abc"], "'--steps'"),
        (["train", "--steps", "2.5"], "'--steps'"),
        (["train", "--steps", "0"], "--steps: must be >= 1"),
        (["probe", "--device", "tpu"], "--device"),
        (["probe", "--backbone", "vit-huge"], "--backbone: unknown backbone"),
        (["probe", "--fix", "zero-init+norm-match"], "invalid combination"),
    ],
)
def test_bad_input_exit_2_one_line(capsys, args, fragment):
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]
    assert "Traceback" not in err


def test_console_script_end_to_end():
    # The installed entry point, in a fresh process: no traceback, exit 2, one line.
    proc = subprocess.run([sys.executable, "-m", "ablate", "probe", "--fix", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run(
        [sys.executable, "-m", "ablate", "probe", "--fix", "zero-init", "--json", *FAST], capture_output=True, text=True
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["grad_ratio"] == 1.0
