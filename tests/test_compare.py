"""`ablate compare A B` (and `plot --compare`) on studies whose differences are planted: a fix that
gains 0.05 in B on every seed, a fix and the references unchanged, B in another storage; paired by
seed where the seeds match (scipy's paired t-interval), Welch's where they do not (scipy's)."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from scipy import stats as sps

from tests.study_helpers import plant_study, run_cli, sqlite_url

NOISE = (-0.05, 0.0, 0.05)  # seed to seed, shared by A and B (same seeds: same initial weights)
SHIFT = (0.048, 0.051, 0.051)  # what B's fixed-scale gains over A's, per seed: mean 0.05


def _arms(gain_shift=(0.0, 0.0, 0.0), ratio_factor=1.0, seeds=(0, 1, 2), noise=NOISE) -> list[dict]:
    def values(gain, ratio, shift=(0.0, 0.0, 0.0), factor=1.0):
        return {s: {"adapter_gain": gain + n + d, "train_grad_ratio": ratio * factor * (1 + n)}
                for s, n, d in zip(seeds, noise, shift)}  # fmt: skip

    return [
        {"role": "baseline", "fix": "no-branch", "values": values(0.30, 1.0)},
        {"role": "control", "fix": "no-branch", "values": values(0.0, 0.5)},
        {"role": "trial", "trial": 0, "fix": "fixed-scale", "scale": 0.1,
         "values": values(0.20, 0.8, gain_shift, ratio_factor)},
        {"role": "trial", "trial": 1, "fix": "tanh-gate", "scale": 0.0, "values": values(0.10, 0.9)},
    ]  # fmt: skip


@pytest.fixture
def two_storages(tmp_path):
    a, b = sqlite_url(tmp_path / "a.db"), sqlite_url(tmp_path / "b.db")
    plant_study(a, "before", _arms(), meta={"git_revision": "1111111", "ablate_version": "0.2.0"})
    plant_study(b, "after", _arms(SHIFT, 0.5), spec_extra="trials = 9\n",
                meta={"git_revision": "2222222", "ablate_version": "0.2.0"})  # fmt: skip
    # the same change, on other seeds, in A's storage: no pairs, Welch's interval
    plant_study(a, "elsewhere", _arms(SHIFT, 0.5, seeds=(3, 4, 5), noise=(0.02, -0.06, 0.01)), seeds=(3, 4, 5))
    return a, b


def _by_fix(doc: dict) -> dict[str, dict]:
    return {r["fix"]: r for r in doc["fixes"]}


def test_a_planted_difference_is_found_paired_by_seed(two_storages, capsys):
    a, b = two_storages
    code, out, err = run_cli(capsys, "compare", "before", "after", "--storage", a, "--storage-b", b, "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    rows = _by_fix(doc)
    assert list(rows) == ["no-branch (baseline)", "frozen (control)", "fixed-scale", "tanh-gate"]
    fixed = rows["fixed-scale"]
    assert fixed["method"] == "paired" and fixed["a_n_seeds"] == fixed["b_n_seeds"] == 3
    assert fixed["adapter_gain_diff"] == pytest.approx(0.05, abs=1e-9)
    ref = sps.ttest_rel([0.20 + n + d for n, d in zip(NOISE, SHIFT)], [0.20 + n for n in NOISE]).confidence_interval(
        0.95
    )
    assert (fixed["adapter_gain_diff_lo"], fixed["adapter_gain_diff_hi"]) == (
        pytest.approx(ref.low, rel=1e-6), pytest.approx(ref.high, rel=1e-6))  # fmt: skip
    assert fixed["adapter_gain_diff_lo"] > 0 and fixed["adapter_gain_verdict"] == "B better"
    # its gradient halved in B: more dilution (lower is better), told apart too
    assert fixed["dilution_train_diff"] == pytest.approx(math.log(2), rel=1e-6)
    assert fixed["dilution_train_verdict"] == "B worse"
    # what did not change: exactly 0, the same
    for fix in ("no-branch (baseline)", "frozen (control)", "tanh-gate"):
        assert rows[fix]["adapter_gain_diff"] == 0 and rows[fix]["adapter_gain_verdict"] == "≈ same", fix
    # each side is the number its own per-fix table prints
    assert fixed["adapter_gain_a"] == pytest.approx(0.20) and fixed["adapter_gain_b"] == pytest.approx(0.25)
    assert doc["spec_changes"] == [
        {"key": "name", "a": "before", "b": "after"}, {"key": "study.trials", "a": None, "b": 9}]  # fmt: skip
    assert doc["version_changes"] == [{"field": "git_revision", "a": "1111111", "b": "2222222"}]
    assert doc["a"]["study"] == "before" and doc["b"]["storage"] == b


def test_without_matching_seeds_the_interval_is_welchs(two_storages, capsys):
    a, _ = two_storages
    code, out, err = run_cli(capsys, "compare", "before", "elsewhere", "--storage", a, "--format", "json")
    assert code == 0, err
    fixed = _by_fix(json.loads(out))["fixed-scale"]
    b_values = [0.20 + n + d for n, d in zip((0.02, -0.06, 0.01), SHIFT)]
    a_values = [0.20 + n for n in NOISE]
    ref = sps.ttest_ind(b_values, a_values, equal_var=False).confidence_interval(0.95)
    assert fixed["method"] == "welch"
    assert fixed["adapter_gain_diff"] == pytest.approx(sum(b_values) / 3 - sum(a_values) / 3)
    assert (fixed["adapter_gain_diff_lo"], fixed["adapter_gain_diff_hi"]) == (
        pytest.approx(ref.low, rel=1e-6), pytest.approx(ref.high, rel=1e-6))  # fmt: skip
    # seed-to-seed noise is no longer cancelled: the same 0.05 cannot be told apart
    assert fixed["adapter_gain_verdict"] == "≈ same"


def test_compare_table_csv_and_figure(two_storages, capsys, tmp_path):
    a, b = two_storages
    code, out, err = run_cli(capsys, "compare", "before", "after", "--storage", a, "--storage-b", b, "--wide")
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("fixed-scale"))
    assert "B better" in line and "paired (3)" in line
    assert 'spec keys that differ: name "before" -> "after"; study.trials (not set) -> 9' in out
    assert "code versions that differ: git_revision 1111111 -> 2222222" in out
    code, out, err = run_cli(capsys, "compare", "before", "after", "--storage", a, "--storage-b", b, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["fix"] for r in rows][2:] == ["fixed-scale", "tanh-gate"] and rows[2]["method"] == "paired"
    code, _, err = run_cli(capsys, "compare", "before", "after", "--storage", a, "--format", "csv", "--json")
    assert code == 2 and err.startswith("error: --json: ")
    code, _, err = run_cli(capsys, "compare", "before", "aftr", "--storage", a, "--storage-b", b)
    assert code == 2 and "(did you mean 'after'?)" in err
    out_dir = tmp_path / "figures"
    code, out, err = run_cli(capsys, "plot", "--study", "before", "--compare", "after", "--storage", a,
                             "--storage-b", b, "--out", str(out_dir))  # fmt: skip
    assert code == 0, err
    assert (out_dir / "compare-before-vs-after.png").stat().st_size > 0
    assert (out_dir / "compare-before-vs-after.svg").stat().st_size > 0


def test_compare_and_db_export_import_neither_torch_nor_open_clip(two_storages, tmp_path):
    import subprocess
    import sys

    a, b = two_storages
    code = (
        "import sys\n"
        "from ablate.cli import main\n"
        f"for args in (['compare', 'before', 'after', '--storage', {a!r}, '--storage-b', {b!r}, '--json'],\n"
        f"             ['plot', '--study', 'before', '--compare', 'after', '--storage', {a!r}, '--storage-b', {b!r},\n"
        f"              '--out', {str(tmp_path / 'p')!r}],\n"
        f"             ['db', 'export', {str(tmp_path / 'x.db')!r}, '--storage', {a!r}, '--study', 'before']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, args\n"
        "print('heavy:', [m for m in ('torch', 'open_clip') if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("heavy:")] == ["heavy: []"]
