"""The command line as a user runs it: JSON contract, exit codes, one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from tests.study_helpers import run_cli

FAST = ["--batches", "2", "--batch-size", "2", "--device", "cpu"]


@pytest.mark.parametrize("fix", ["zero-init", "tanh-gate"])
def test_probe_json_exact_unit_ratio(capsys, fix):
    code, out, _ = run_cli(capsys, "probe", "--fix", fix, "--json", *FAST)
    assert code == 0
    doc = json.loads(out)
    assert doc["fix"] == fix and doc["group"] == "layers" and doc["verdict"] == "OK"
    assert (doc["grad_ratio"], doc["grad_ratio_lo"], doc["grad_ratio_hi"]) == (1.0, 1.0, 1.0)
    for g in ("layers", "proj", "all"):
        assert doc[f"grad_ratio_{g}"] == 1.0
        assert doc[f"grad_norm_{g}_with"] == doc[f"grad_norm_{g}_without"] > 0
        assert doc["per_batch_ratios"][g] == [1.0, 1.0]
    # |all|^2 = |layers|^2 + |proj|^2 holds per batch; the JSON's norms are means over the batches, so
    # by Jensen the union's mean is at least the norm of the parts' means, and close to it
    parts = doc["grad_norm_layers_with"] ** 2 + doc["grad_norm_proj_with"] ** 2
    assert parts <= doc["grad_norm_all_with"] ** 2 * (1 + 1e-6)
    assert doc["grad_norm_all_with"] ** 2 == pytest.approx(parts, rel=1e-2)


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


def test_train_json_compares_with_its_baseline(capsys):
    code, out, _ = run_cli(
        capsys, "train", "--fix", "learnable-alpha", "--steps", "6", "--probe-every", "3", "--json", *FAST
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["steps"] == 6 and doc["scale"] == 0.1 and [p["step"] for p in doc["probes"]] == [0, 3, 6]
    base = doc["baseline"]
    assert base["fix"] == "no-branch" and base["seed"] == doc["seed"] == 0
    assert doc["loss_slope_rel"] == pytest.approx(doc["loss_slope"] - base["loss_slope"])
    assert doc["adapter_gain_rel"] == pytest.approx(doc["adapter_gain"] / base["adapter_gain"])
    assert doc["train_grad_ratio"] == doc["train_grad_ratio_layers"] and doc["train_grad_ratio"] > 0
    assert doc["train_grad_ratio_lo"] <= doc["train_grad_ratio"] <= doc["train_grad_ratio_hi"]


def test_train_frozen_control_learns_nothing_in_its_block_adapters(capsys):
    code, out, _ = run_cli(
        capsys,
        "train",
        "--fix",
        "no-branch",
        "--freeze-adapters",
        "--steps",
        "4",
        "--probe-every",
        "0",
        "--json",
        *FAST,
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["frozen"] == "layers" and doc["adapter_gain"] == 0.0 and doc["adapter_gain_rel"] == 0.0
    assert doc["train_update_ratio"] == pytest.approx(1e-6)  # never moved: the floor of the ratio
    assert doc["baseline"]["adapter_gain"] != 0.0


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
        (["probe", "--group", "heads"], "--group: 'heads' is not one of this subject's groups (layers, proj, all)"),
        (["probe", "--threads", "0"], "--threads: must be >= 1"),
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


def test_train_table_fits_80_columns_and_says_when_the_mfu_is_unknown(tmp_path):
    env = {**os.environ, "COLUMNS": "80"}
    env.pop("ABLATE_PEAK_TFLOPS", None)
    cmd = [sys.executable, "-m", "ablate", "train", "--fix", "none", "--steps", "4", "--probe-every", "2", *FAST]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    mfu = next(line for line in lines if line.strip().startswith("mfu"))
    assert mfu.split()[1] == "-" and "GFLOP/step; peak unknown" in mfu  # CPU: no peak rate in the table
