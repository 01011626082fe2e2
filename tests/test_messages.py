"""What the commands say: exit codes and one-line errors by the README's rule, and a study run to
a file (a log, CI) that prints one plain line per finished run instead of spinner frames."""

from __future__ import annotations

import pytest

from tests.study_helpers import MINI, copy_db, write_spec
from tests.study_helpers import run_cli as cli


@pytest.fixture
def db_url(mini_study_db, tmp_path):
    return f"sqlite:///{copy_db(mini_study_db, tmp_path / 'results.db')}"


@pytest.mark.parametrize(
    "args, line",
    [
        (["plot", "--study", "nosuch"], "error: --study: no study named 'nosuch'"),
        (["query", "--study", "nosuch"], "error: --study: no study named 'nosuch'"),
        (["plot", "--kind", "bogus"], "error: --kind: unknown plot kind(s) bogus"),
        (["query", "--format", "xml"], "error: --format: must be table, csv or json"),
    ],
)
def test_read_commands_bad_input_exit_2_with_one_line(capsys, db_url, tmp_path, args, line):
    code, out, err = cli(capsys, *args, "--storage", db_url)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(line)


def test_scale_bounds_say_what_each_fix_takes(capsys):
    code, _, err = cli(capsys, "train", "--fix", "tanh-gate", "--scale", "-1", "--json")
    assert code == 2 and err == "error: --scale: must be a finite number >= 0, got -1.0\n"
    code, _, err = cli(capsys, "train", "--fix", "fixed-scale", "--scale", "0", "--json")
    assert code == 2 and err == "error: --scale: must be a finite number > 0, got 0.0\n"
    code, out, _ = cli(capsys, "train", "--help")
    assert "tanh-gate's alpha init may be 0" in " ".join(out.split())


def test_study_to_a_file_prints_one_plain_line_per_run(capsys, tmp_path):
    spec = write_spec(tmp_path, MINI.replace("trials = 4", "trials = 2"))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    code, out, err = cli(capsys, "study", "run", str(spec), "--storage", url, "--no-plots")
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0].endswith("study mini: 0/2 trials finished before this run")
    runs = [line for line in lines if ": complete in " in line]
    # 2 baselines + 2 controls + 2 trials x 2 seeds, each on its own line with what it measured
    assert len(runs) == 8 and all(" seed " in line and "gain " in line for line in runs)
    assert sum(" trial 0 none seed " in line for line in runs) == 2
    assert [line.split("] ", 1)[1] for line in lines if "] trial " in line and "(" in line][-1].startswith(
        "trial 1 complete (2/2)"
    )
    assert lines[-1] == "study mini: 2 finished trials (2 run now, 0 failed)"
    assert not any(ch in err for ch in "━─┏\r")  # no bar, table or carriage-return frames
    assert out.lstrip().startswith("per fix")  # stdout: the table, then what to run next
    assert "\nrecommended: " in out
    assert out.splitlines()[-1] == (
        f"next, the study written up (Markdown, HTML) into reports/mini: ablate report mini --storage {url}"
    )

    # the same name with another spec: one line, on its own
    other = write_spec(tmp_path, MINI.replace("steps = 6", "steps = 5"), "other.toml")
    code, out, err = cli(capsys, "study", "run", str(other), "--storage", url, "--no-plots", "--name", "mini")
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: --name: ")


def test_probe_and_train_to_a_file_print_a_plain_line_per_arm(capsys):
    code, out, err = cli(capsys, "train", "--fix", "none", "--steps", "2", "--batches", "2", "--device", "cpu")
    assert code == 0 and "Training run: none" in out
    lines = err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["no-branch (baseline)", "train none"]
    assert all(" steps in " in line and "loss slope" in line for line in lines)
    code, out, err = cli(capsys, "probe", "--fix", "zero-init", "--batches", "2", "--device", "cpu")
    assert code == 0 and err == "probe zero-init: R 1\n"
    assert max(len(line) for line in out.splitlines()) <= 80  # piped, no COLUMNS: 80 columns
    code, out, err = cli(capsys, "probe", "--fix", "zero-init", "--batches", "2", "--device", "cpu", "--quiet")
    assert code == 0 and err == ""


@pytest.mark.parametrize("columns", ["80", "200"])
def test_help_lists_every_command_with_its_whole_summary(capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "…" not in out and "..." not in out.split("Commands:")[1]
    listed = out.split("Commands:")[1]
    commands = ("study", "query", "plot", "report", "probe", "train", "subject", "launch", "db")
    for command in commands:
        assert f"\n  {command} " in listed
    # in the order a study uses them
    assert sorted(commands, key=lambda c: listed.index(f"\n  {c} ")) == list(commands)
    # the summaries end as sentences do, not cut
    assert "report.json." in " ".join(listed.split()) and "evaluation." in " ".join(listed.split())
    for group, subcommands in (("study", ["run"]), ("subject", ["check"]), ("launch", ["slurm", "ray"]),
                               ("db", ["upgrade"])):  # fmt: skip
        code, out, _ = cli(capsys, group, "--help")
        listed = out.split("Commands:")[1]
        assert code == 0 and "…" not in out and "..." not in listed, group
        assert all(f"\n  {c} " in listed for c in subcommands) and listed.rstrip().endswith("."), group


@pytest.mark.parametrize(
    "args, line",
    [
        (["train", "--stpes", "3"], "error: --stpes: no such option (did you mean --steps?)"),
        (["query", "--grup-by", "fix"], "error: --grup-by: no such option (did you mean --group-by?)"),
        (["query", "--zzz"], "error: --zzz: no such option"),
    ],
)
def test_an_unknown_option_names_the_close_one(capsys, args, line):
    code, out, err = cli(capsys, *args)
    assert code == 2 and out == "" and err == line + "\n"


@pytest.mark.parametrize(
    "text, line",
    [
        ("[training]\nstpes = 3", "training.stpes: unknown key (did you mean 'steps'?)"),
        ("[traning]\nsteps = 3", "traning: unknown key (did you mean 'training'?)"),
        ('[study]\nobjective = ["adapter_gain"]', "study.objective: unknown key (did you mean 'objectives'?)"),
        (
            '[search]\nfixes = ["fixed-scale"]\n[search.scale_per_fix.fixed-scale]\nmn = 0.1',
            "search.scale_per_fix.fixed-scale.mn: unknown key (did you mean 'min'?)",
        ),
        ("zzz = 1", "zzz: unknown key"),
    ],
)
def test_an_unknown_spec_key_names_the_close_one(text, line):
    from ablate.errors import AblateInputError
    from ablate.spec import parse_spec

    with pytest.raises(AblateInputError) as info:
        parse_spec(text)
    assert f"{info.value.field}: {info.value.message}" == line
