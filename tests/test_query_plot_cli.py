"""`ablate query` and `ablate plot` on a real study database."""

from __future__ import annotations

import csv
import io
import json

import pytest

from ablate.plot import extract_tradeoff
from ablate.store import open_storage, query
from tests.study_helpers import copy_db
from tests.study_helpers import run_cli as cli


@pytest.fixture
def db_url(mini_study_db, tmp_path):
    return f"sqlite:///{copy_db(mini_study_db, tmp_path / 'results.db')}"


def test_query_trials_json_matches_dataframe(capsys, db_url):
    code, out, _ = cli(capsys, "query", "--storage", db_url, "--json")
    assert code == 0
    rows = json.loads(out)
    frame = query.trials_frame(open_storage(db_url), "mini")
    assert [r["trial_number"] for r in rows] == list(frame.trial_number)
    assert rows[0]["loss_slope"] == pytest.approx(frame.loss_slope.iloc[0])
    assert {
        "fix",
        "scale",
        "loss_slope",
        "grad_ratio_init",
        "grad_ratio_init_lo",
        "grad_ratio_init_hi",
        "status",
    } <= set(rows[0])


def test_query_group_by_fix_csv(capsys, db_url):
    code, out, _ = cli(capsys, "query", "--storage", db_url, "--group-by", "fix", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    refs = ["no-branch (baseline)", "frozen (control)"]
    assert [r["fix"] for r in rows[:2]] == refs
    fixes = rows[2:]  # by rank: best adapter_gain first
    assert sorted(r["fix"] for r in fixes) == ["fixed-scale", "none", "tanh-gate"]
    assert [int(r["rank"]) for r in fixes] == [1, 2, 3]
    gains = [float(r["adapter_gain"]) for r in fixes]
    assert gains == sorted(gains, reverse=True)
    assert [r["recommended"] for r in rows] == ["False", "False", "True", "False", "False"]
    assert all(int(r["n_seeds"]) == 2 for r in rows)
    base, control = rows[0], rows[1]
    assert float(base["train_grad_ratio"]) == 1.0 and float(base["adapter_gain_rel"]) == 1.0
    assert float(control["adapter_gain"]) == 0.0 and float(control["train_update_ratio"]) == pytest.approx(1e-6)
    assert {r["ci_scope"] for r in rows} == {"seeds"}


FORMS = ([], ["--group-by", "fix"], ["--runs"], ["--studies"], ["--sql", "select * from ablate_runs"])


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("args", FORMS, ids=["trials", "per-fix", "runs", "studies", "sql"])
def test_query_tables_fit_the_width_whole_cells_and_say_what_is_left_out(capsys, monkeypatch, db_url, args, width):
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, err = cli(capsys, "query", "--storage", db_url, *args)
    assert code == 0, err
    lines = out.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= width, out
    assert "…" not in out  # no cut cells
    if args in ([], ["--group-by", "fix"]):
        assert "95% interval over seeds" in out and "gain = adapter_gain" in out
        assert "nan" not in out  # a missing scale is '-', as everywhere
    code, wide, _ = cli(capsys, "query", "--storage", db_url, "--wide", *args)
    head = wide.splitlines()[2].split()
    if "not shown:" in out:
        hidden = out.split("not shown:")[1].split("(--wide")[0].split(" and ")[0]
        assert all(h.strip() in wide for h in hidden.replace("\n", " ").split(","))
        assert "not shown" not in wide and len(head) > len(lines[2].split())


def test_query_runs_lists_the_references_first(capsys, db_url):
    code, out, _ = cli(capsys, "query", "--storage", db_url, "--runs", "--wide")
    rows = [line.split() for line in out.splitlines()[4:] if line.strip() and line.split()[0].isdigit()]
    assert [r[1] for r in rows] == ["-"] * 6 + ["0", "0", "1", "1", "2", "2", "3", "3"]
    # Stage 1 (the text adapter of each seed) first, then the references named as in every other view
    labels = [" ".join(r[3:5]) for r in rows[:6]]
    assert labels == ["stage1 (per"] * 2 + ["no-branch (baseline)"] * 2 + ["frozen (control)"] * 2
    assert "<NA>" not in out and "nan" not in out


def test_per_fix_table_ranks_the_fixes_and_names_the_recommended_one(capsys, db_url, tmp_path):
    """The table answers: a rank column, a verdict against the baseline, and the trial ablate report
    recommends named under the table (the same trial as the report's recommendation)."""
    from ablate.report import gather
    from ablate.views import fixes_view

    code, out, _ = cli(capsys, "query", "--storage", db_url, "--group-by", "fix")
    assert code == 0
    frame = query.group_by_fix(open_storage(db_url), "mini")
    view = fixes_view(frame, ["adapter_gain", "dilution_train"])
    assert view["#"] == ["-", "-", "1", "2", "3"]
    verdicts = dict(zip(frame["fix"], view["vs base"]))
    for row in frame.to_dict(orient="records"):  # the verdict is the paired interval's side of 0
        lo, hi = row["vs_baseline_diff_lo"], row["vs_baseline_diff_hi"]
        if row["fix"] == "no-branch (baseline)":
            assert verdicts[row["fix"]] == "-"
        elif lo <= 0 <= hi:
            assert verdicts[row["fix"]] == "≈ base"
        else:
            assert verdicts[row["fix"]] == ("better" if lo > 0 else "worse")
    rec = gather(open_storage(db_url), "mini").recommendation.trial
    line = next(x for x in out.splitlines() if x.startswith("recommended:"))
    assert line.startswith(f"recommended: {rec.fix}") and f"(trial {rec.trial_number})" in line
    assert view["fix"][2].split()[0] == rec.fix


def test_query_studies_and_sql(capsys, db_url):
    code, out, _ = cli(capsys, "query", "--storage", db_url, "--studies", "--json")
    assert code == 0 and [s["name"] for s in json.loads(out)] == ["mini"]
    code, out, _ = cli(
        capsys,
        "query",
        "--storage",
        db_url,
        "--sql",
        "select count(*) as n from ablate_runs where role = 'trial'",
        "--json",
    )
    assert code == 0 and json.loads(out) == [{"n": 8}]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--sql", "delete from ablate_runs"], "--sql"),
        (["--sql", "select 1; drop table ablate_runs"], "--sql: only one SQL statement is allowed"),
        (["--sql", "select pg_read_file('/etc/passwd')"], "--sql: the function pg_read_file() is not allowed"),
        (["--sql", "select * from sqlite_master"], "--sql: the table sqlite_master is not a study table"),
        (["--sql", "select * from ablate_runs; -- x\n delete from ablate_runs"], "--sql: only one SQL statement"),
        (["--study", "nope"], "--study: no study named 'nope'"),
        (["--format", "xml"], "--format"),
        (["--group-by", "seed"], "--group-by"),
    ],
)
def test_query_bad_input(capsys, db_url, args, fragment):
    code, out, err = cli(capsys, "query", "--storage", db_url, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and fragment in err
    assert query.runs_frame(open_storage(db_url), "mini").shape[0] == 14  # nothing deleted


def test_query_missing_database(capsys, tmp_path):
    code, _, err = cli(capsys, "query", "--storage", f"sqlite:///{tmp_path}/none.db")
    assert code == 2 and "--storage" in err
    assert not (tmp_path / "none.db").exists()


def test_plot_writes_every_kind(capsys, db_url, tmp_path):
    out_dir = tmp_path / "figs"
    code, out, _ = cli(capsys, "plot", "--storage", db_url, "--out", str(out_dir), "--json")
    assert code == 0
    files = json.loads(out)["plots"]
    names = {p.rsplit("/", 1)[-1] for p in files}
    for kind in ("tradeoff", "loss", "ratio-scale", "gates", "grad-norms"):
        assert {f"{kind}.png", f"{kind}.svg"} <= names
    assert all((out_dir / n).stat().st_size > 1000 for n in names)


def test_tradeoff_data_from_the_database(db_url):
    engine = open_storage(db_url)
    trials = query.trials_frame(engine, "mini")
    per_fix = query.group_by_fix(engine, "mini")
    refs = per_fix[per_fix.fix.isin(list(query.REFERENCE_LABELS.values()))]
    data = extract_tradeoff(trials, refs, "dilution_train", "adapter_gain", "minimize", "maximize", threshold=0.8)
    assert len(data.points) == 4 and not data.unranked
    runs = query.runs_frame(engine, "mini")
    none = next(p for p in data.points if p.fix == "none")
    t0 = runs[(runs.role == "trial") & (runs.trial_number == none.trial_number)]
    assert none.y == pytest.approx(t0.adapter_gain.mean())
    assert [r.label for r in data.references] == list(query.REFERENCE_LABELS.values())
    control = data.references[1]
    assert control.y == 0.0 and data.references[0].x == 0.0
    assert data.front  # a non-empty Pareto front


def test_plot_unknown_kind(capsys, db_url, tmp_path):
    code, _, err = cli(capsys, "plot", "--storage", db_url, "--out", str(tmp_path), "--kind", "pie")
    assert code == 2 and "pie" in err and len(err.strip().splitlines()) == 1


def test_read_commands_import_neither_torch_nor_open_clip(db_url, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ablate.cli import main\n"
        f"for args in (['--studies'], [], ['--group-by', 'fix'], ['--runs']):\n"
        "  for form in (['--json'], []):\n"
        "    try:\n"
        f"        main(['query', '--storage', {db_url!r}, *form, *args])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, args\n"
        "print('heavy:', [m for m in ('torch', 'open_clip', 'sqlglot') if m in sys.modules])\n"
        "try:\n"
        f"    main(['query', '--storage', {db_url!r}, '--json', '--sql', 'SELECT count(*) FROM trials'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "try:\n"
        f"    main(['plot', '--storage', {db_url!r}, '--out', {str(tmp_path / 'p')!r}, '--kind', 'loss'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "print('heavy:', [m for m in ('torch', 'open_clip') if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # sqlglot is imported only for --sql; nothing imports torch.
    heavy = [line for line in proc.stdout.splitlines() if line.startswith("heavy:")]
    assert heavy == ["heavy: []", "heavy: []"] and '"count(*)": 4' in proc.stdout, proc.stdout


def test_every_figure_of_a_real_study_reads_cleanly(db_url):
    """On a real database: no text over text, no legend over a plot area, in every kind."""
    from ablate.plot import RENDERERS, extract_kind, source
    from ablate.plot.layout import legends_over_axes, overlapping_texts

    inputs = source.load(open_storage(db_url), "mini")
    for kind, render in RENDERERS.items():
        if kind == "eval":
            continue  # the mini study is not evaluated (tests/test_eval.py draws an evaluated one)
        data = extract_kind(
            kind, inputs.runs, inputs.steps, trials=inputs.trials, references=inputs.references, threshold=0.8
        )
        fig = render(data)
        assert overlapping_texts(fig) == [], kind
        assert legends_over_axes(fig) == [], kind
