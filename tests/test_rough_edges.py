"""The rough edges a researcher's second day ran into (issue 34's "Why"), each through the CLI: the
new behaviour, so none comes back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.study_helpers import MINI, db_dump, refused_line, run_cli, sqlite_url, write_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def copied(cli_study, tmp_path) -> tuple[Path, str]:
    """A copy of the CLI study's file (the file alone: it holds everything) and its URL."""
    db = tmp_path / "results.db"
    shutil.copyfile(cli_study[0] / "results.db", db)
    return db, sqlite_url(db)


def test_the_first_output_ends_with_the_figure_folder_not_every_path(cli_study):
    _, url, code, out, err = cli_study
    assert code == 0, err
    lines = out.strip().splitlines()
    assert not [line for line in lines if line.startswith("plot: ")]
    # two trials (none, fixed-scale): no learnable gate, so no gates figure
    assert lines[-2] == "figures: plots/mini/ (tradeoff, loss, ratio-scale, grad-norms; PNG and SVG)"
    assert (
        lines[-1]
        == f"next, the study written up (Markdown, HTML) into reports/mini: ablate report mini --storage {url}"
    )
    assert len(list((cli_study[0] / "plots" / "mini").glob("*.png"))) == 4


def test_trials_below_the_finished_count_says_that_nothing_ran_and_why(cli_study, copied, capsys):
    db, url = copied
    spec = write_spec(db.parent, MINI.replace("trials = 4", "trials = 2"))
    before = db_dump(db)
    code, out, err = run_cli(capsys, "study", "run", str(spec), "--trials", "1", "--storage", url, "--no-plots")
    assert code == 0, err  # the same command twice is a resume that finds the work done, not an error
    lines = err.strip().splitlines()
    assert lines[0].endswith("study mini: 2 trials finished before this run, 1 asked for: no new trial to run")
    assert lines[-1] == (
        "study mini: no new trial ran: it already holds 2 finished trials and --trials 1 asks for 1 in all; "
        "give --trials 3 or more to run more"
    )
    assert "7/3" not in err and "2/1" not in err and out.lstrip().startswith("per fix")
    assert db_dump(db) == before  # and nothing was written


def test_a_changed_spec_under_the_same_name_names_the_keys_that_changed(copied, capsys):
    db, url = copied
    changed = MINI.replace("trials = 4", "trials = 2").replace("steps = 6", "steps = 5").replace("[0, 1]", "[0, 1, 2]")
    spec = write_spec(db.parent, changed, "changed.toml")
    line = refused_line(capsys, db, ["study", "run", str(spec), "--storage", url, "--no-plots"])
    assert line == (
        "error: --name: study 'mini' already exists with a different spec: training.steps 6 -> 5; "
        "study.seeds [0, 1] -> [0, 1, 2]; use another --name (or the spec it was started with)"
    )
    # a spec that differs only in a comment says so, instead of naming hashes
    spec = write_spec(db.parent, "# mine\n" + MINI.replace("trials = 4", "trials = 2"), "comment.toml")
    line = refused_line(capsys, db, ["study", "run", str(spec), "--storage", url, "--no-plots"])
    assert "no key differs, the texts only in comments or layout" in line and "hash" not in line


def test_report_writes_to_reports_study_by_default(copied, capsys, monkeypatch, tmp_path):
    _, url = copied
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "report", "mini", "--storage", url)
    assert code == 0, err
    assert (tmp_path / "reports" / "mini" / "report.html").is_file()
    assert "report: reports/mini/report.md" in out


def test_format_and_json_together_exit_2(copied, capsys):
    db, url = copied
    line = refused_line(capsys, db, ["query", "--format", "csv", "--json", "--storage", url])
    assert line == "error: --json: give --format csv or --json, not both (--json is --format json)"


AT = "cannot parse the SQL at line 1, "


@pytest.mark.parametrize(
    "sql, line",
    [
        ("SELECT 2 * FROM ablate_runs", AT + "column 12 ('FROM'): '*' needs a value on its right"),
        ("SELECT * FROM ablate_runs WHERE", AT + "column 27 ('WHERE'): WHERE needs a condition after it"),
        ("SELECT (1 FROM ablate_runs", AT + "column 11 ('FROM'): a ')' is missing here"),
        ("SELECT * FROM ablate_runs ORDER BY", AT + "column 27 ('ORDER BY'): ORDER BY needs a column or expression"),
        ("SELECT * FORM ablate_runs", AT + "column 15 ('ablate_runs'): this word or symbol is not expected here"),
        ("SELECT 'abc FROM ablate_runs", "cannot parse the SQL: an unclosed quote or comment"),
    ],
)
def test_a_sql_parse_error_says_where_and_what_in_plain_words(copied, capsys, sql, line):
    db, url = copied
    got = refused_line(capsys, db, ["query", "--sql", sql, "--storage", url])
    assert got.startswith("error: --sql: " + line), got
    assert "class" not in got and "sqlglot" not in got and "Required keyword" not in got


def test_every_unknown_fix_is_named_at_once_with_the_close_one(tmp_path, capsys):
    spec = write_spec(tmp_path, MINI.replace('"none", "fixed-scale", "tanh-gate"', '"tanh_gate", "layer-scale"'))
    code, out, err = run_cli(capsys, "study", "run", str(spec), "--storage", sqlite_url(tmp_path / "r.db"))
    assert code == 2 and out == "" and not (tmp_path / "r.db").exists()
    assert err.startswith(
        "error: search.fixes: unknown fixes 'tanh_gate' (did you mean 'tanh-gate'?), "
        "'layer-scale' (did you mean 'layerscale'?); valid: none, fixed-scale,"
    )
    code, _, err = run_cli(capsys, "probe", "--fix", "tanh_gate", "--fix", "zero-init", "--fix", "layer-scale")
    assert code == 2 and err.startswith(
        "error: --fix: unknown fixes 'tanh_gate' (did you mean 'tanh-gate'?), 'layer-scale'"
    )


@pytest.mark.parametrize(
    "typo, line",
    [
        ('factory = "lm:biuld"', "error: subject.factory: 'lm' has no attribute 'biuld' (did you mean 'build'?)"),
        ('factory = "lmm:build"', "error: subject.factory: cannot import 'lmm': No module named 'lmm'"),
        ('loss = "lm:los"', "error: subject.loss: 'lm' has no attribute 'los' (did you mean 'loss'?)"),
    ],
)
def test_module_and_function_names_get_a_did_you_mean(tmp_path, capsys, typo, line):
    folder = tmp_path / "tiny_lm"
    shutil.copytree(ROOT / "examples" / "tiny_lm", folder)
    spec = folder / "study.toml"
    key = typo.split(" = ")[0]
    text = "\n".join(
        typo if ln.split("#")[0].strip().startswith(f"{key} =") else ln for ln in spec.read_text().splitlines()
    )
    spec.write_text(text)
    code, out, err = run_cli(capsys, "subject", "check", str(spec))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(line), err
    if "lmm" in typo:
        assert err.rstrip().endswith("(did you mean 'lm'?)")


def test_a_study_name_gets_a_did_you_mean(copied, capsys):
    db, url = copied
    for command in (["query", "--study", "mnii"], ["plot", "--study", "mnii"]):
        line = refused_line(capsys, db, [*command, "--storage", url])
        assert line.startswith("error: --study: no study named 'mnii' in ") and "(did you mean 'mini'?)" in line
    code, _, err = run_cli(capsys, "report", "mnii", "--storage", url)
    assert code == 2 and "(did you mean 'mini'?)" in err


def test_launch_slurm_local_wait_ends_with_the_summary_and_no_traceback(copied, tmp_path):
    pytest.importorskip("submitit")
    db, url = copied
    spec = write_spec(tmp_path, MINI.replace("trials = 4", "trials = 2"))
    proc = subprocess.run(
        [sys.executable, "-m", "ablate", "launch", "slurm", str(spec), "--workers", "1", "--storage", url,
         "--allow-sqlite", "--cluster", "local", "--wait", "--folder", str(tmp_path / "jobs")],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "COLUMNS": "100"}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("submitted job ") and any(line.strip() == "per fix" for line in lines)
    assert any(line.startswith("recommended: ") for line in lines)
    assert lines[-1].startswith("next, the study written up (Markdown, HTML) into reports/mini: ")
    assert "report mini --storage" in lines[-1]
