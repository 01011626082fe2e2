"""`ablate report`: every number in the report equals the query's, the HTML is self-contained, and
bad input exits 2 with one line."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from pathlib import Path

import pytest

from ablate.cli import main
from tests.study_helpers import MINI, copy_db

NUM = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?"


def cli(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    cap = capsys.readouterr()
    return info.value.code, cap.out, cap.err


@pytest.fixture(scope="module")
def written(mini_study_db, tmp_path_factory):
    """The mini study's report, written once through the CLI, and the query's JSON for the same study."""
    tmp = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{copy_db(mini_study_db, tmp / 'results.db')}"
    out = tmp / "out"

    def run(*args):  # module scope has no capsys: read stdout through a buffer
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as info:
            main(list(args))
        assert info.value.code == 0, args
        return buf.getvalue()

    doc = json.loads(run("report", "mini", "--out", str(out), "--storage", url, "--json"))
    per_fix = json.loads(run("query", "--study", "mini", "--storage", url, "--group-by", "fix", "--format", "json"))
    trials = json.loads(run("query", "--study", "mini", "--storage", url, "--format", "json"))
    runs = json.loads(run("query", "--study", "mini", "--storage", url, "--runs", "--format", "json"))
    return {
        "url": url,
        "out": out,
        "doc": doc,
        "md": (out / "report.md").read_text(),
        "html": (out / "report.html").read_text(),
        "per_fix": per_fix,
        "trials": trials,
        "runs": runs,
    }


# ------------------------------------------------------------------------------------------ parsing


def section(md: str, heading: str) -> str:
    """The text from the heading that starts with ``heading`` to the next heading of any level."""
    start = md.index("\n" + heading)
    nxt = re.search(r"\n#{1,3} ", md[start + 1 :])
    return md[start : start + 1 + nxt.start()] if nxt else md[start:]


def table(text: str) -> list[dict[str, str]]:
    """The first Markdown table in ``text`` as dicts keyed by the header cells."""
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    split = [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines]
    header, rows = split[0], split[2:]
    return [dict(zip(header, r, strict=True)) for r in rows]


class Printed(float):
    """A number as the report printed it, with its number of decimals (the rounding it went through)."""

    decimals: int


def _printed(text: str) -> float:
    if text in ("n/a", "-"):
        return math.nan
    if "inf" in text:
        return float(text)
    value = Printed(float(text))
    value.decimals = len(text.split(".", 1)[1]) if "." in text else 0
    return value


def numbers(cell: str) -> list[float]:
    """The numbers of a cell: 'v', 'v [lo, hi]', 'v [lo, hi] (n = 2)' -> [v, lo, hi] (n dropped);
    'n/a' and a lone '-' read as NaN, 'inf' as infinity."""
    cell = re.sub(r"\(n = \d+\)", "", cell)
    if cell.strip() == "-":
        return [math.nan]
    return [_printed(x) for x in re.findall(rf"n/a|-?inf|{NUM}", cell)]


def same(printed: float, value: float | str | None) -> bool:
    """A printed number is the query's value (JSON: None for NaN, 'inf') rounded to the decimals it
    was printed with."""
    if value is None:
        return math.isnan(printed)
    value = float(value)
    if math.isinf(value):
        return printed == value
    decimals = getattr(printed, "decimals", 12)
    return abs(printed - value) <= 0.5 * 10.0**-decimals + 1e-12


def check_cell(cell: str, row: dict, column: str, interval: bool = True) -> None:
    got = numbers(cell)
    want = [row[column]] + ([row[f"{column}_lo"], row[f"{column}_hi"]] if interval else [])
    want = [w for w in want if w is not None] if interval and row.get(f"{column}_lo") is None else want
    assert len(got) == len(want), (cell, column, want)
    assert all(same(g, w) for g, w in zip(got, want)), (cell, column, want)


# -------------------------------------------------------------------------------------------- tests


def test_report_writes_markdown_html_json_and_figures(written):
    out, doc = written["out"], written["doc"]
    assert doc["study"] == "mini"
    for key in ("markdown", "html", "json"):
        assert Path(doc[key]).is_file()
    figures = [Path(p) for p in doc["figures"]]
    assert {p.name for p in figures} >= {"tradeoff.png", "loss.png"}
    assert all(p.parent == out and p.stat().st_size > 1000 for p in figures)
    md = written["md"]
    for heading in (
        "## 1. The question",
        "## 2. In brief",
        "## 3. Setting",
        "## 4. Evidence per fix",
        "## 5. The fixes ranked on the Pareto front",
        "## 6. Paired comparisons with the baseline across seeds",
        "## 7. Caveats",
        "## 8. Recommendation",
        "## 10. Excluded trials",
    ):
        assert heading in md
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)  # the figures sit beside the markdown
    assert linked and all((out / p).is_file() for p in linked)
    assert set(linked) == {p.name for p in figures}


def check_evidence(md: str, per_fix: list[dict]) -> None:
    """Every evidence table's row equals ``ablate query --group-by fix``'s row for that arm."""
    rows = {r["fix"]: r for r in per_fix}
    t41 = table(section(md, "### 4.1"))
    t42 = table(section(md, "### 4.2"))
    t43 = table(section(md, "### 4.3"))
    t45 = table(section(md, "### 4.5"))
    shown = [r["fix"] for r in per_fix if r.get("best_trial") is not None or r["fix"] in REFS]
    assert sorted(r["arm"] for r in t45) == sorted(shown)
    for r41, r42, r43, r45 in zip(t41, t42, t43, t45, strict=True):
        q = rows[r45["arm"]]
        assert r45["seeds"] == str(q["n_seeds"])
        assert r45["trial"] == ("-" if q["best_trial"] is None else str(q["best_trial"]))
        if q["scale"] is not None:
            assert same(_printed(r45["scale"]), q["scale"])
        check_cell(r41["R@0 layers [95%]"], q, "grad_ratio_init")
        for g in ("proj", "all"):
            check_cell(r41[f"R@0 {g}"], q, f"grad_ratio_init_{g}", interval=False)
            check_cell(r42[f"R train {g}"], q, f"train_grad_ratio_{g}", interval=False)
            check_cell(r43[f"R update {g}"], q, f"train_update_ratio_{g}", interval=False)
        check_cell(r41["share layers"], q, "grad_share_init_layers", interval=False)
        assert r41["verdict"] == (q["verdict"] or "n/a")
        check_cell(r42["R train layers [95%]"], q, "train_grad_ratio")
        check_cell(r42["dilution_train [95%]"], q, "dilution_train")
        check_cell(r43["R update layers [95%]"], q, "train_update_ratio")
        check_cell(r45["adapter gain [95%]"], q, "adapter_gain")
        check_cell(r45["gain / baseline"], q, "adapter_gain_rel", interval=False)
        check_cell(r45["gain - baseline [95%]"], q, "adapter_gain_diff")
        check_cell(r45["loss slope"], q, "loss_slope", interval=False)
        check_cell(r45["slope - baseline"], q, "loss_slope_rel", interval=False)


REFS = ("no-branch (baseline)", "frozen (control)")


def test_evidence_tables_equal_query_group_by_fix(written):
    md = written["md"]
    arms = [r["arm"] for r in table(section(md, "### 4.5"))]
    assert arms == [*REFS, "none", "fixed-scale", "tanh-gate"]
    check_evidence(md, written["per_fix"])
    assert "Not evaluated" in section(md, "### 4.6")  # no AUROC is stored: said, not invented


def test_forward_disruption_equals_the_runs(written):
    """Loss with - without the branch and the feature cosine at step 0, mean over the best trial's seeds."""
    t44 = {r["arm"]: r for r in table(section(written["md"], "### 4.4"))}
    best = {r["fix"]: r["best_trial"] for r in written["per_fix"]}
    for fix in ("none", "fixed-scale", "tanh-gate"):
        runs = [r for r in written["runs"] if r["role"] == "trial" and r["trial_number"] == best[fix]]
        delta = sum(r["loss0_with"] - r["loss0_without"] for r in runs) / len(runs)
        cos = sum(r["feature_cosine_init"] for r in runs) / len(runs)
        assert same(numbers(t44[fix]["loss with - without [95%]"])[0], delta)
        assert same(numbers(t44[fix]["feature cosine [95%]"])[0], cos)


def dominates(a: dict, b: dict) -> bool:
    ge = a["adapter_gain"] >= b["adapter_gain"] and a["dilution_train"] <= b["dilution_train"]
    gt = a["adapter_gain"] > b["adapter_gain"] or a["dilution_train"] < b["dilution_train"]
    return ge and gt


def test_ranking_is_the_pareto_front_of_the_ranked_trials(written):
    md = written["md"]
    ranked = [t for t in written["trials"] if t["ranked"]]
    front = [t for t in ranked if not any(dominates(o, t) for o in ranked)]
    front.sort(key=lambda t: -t["adapter_gain"])
    said = section(md, "## 5.")
    m = re.search(r"The front holds \d+ trials?: (.*)\.\n", said)
    assert re.findall(r"\(trial (\d+)\)", m.group(1)) == [str(t["trial_number"]) for t in front]
    rows = table(said)
    by_trial = {t["trial_number"]: t for t in ranked}
    assert len(rows) == len({t["fix"] for t in ranked})  # one row per fix
    assert rows[0]["Pareto rank"] == "1"
    for r in rows:
        t = by_trial[int(r["trial"])]
        assert r["fix"] == t["fix"]
        check_cell(r["adapter_gain (max) [95%]"], t, "adapter_gain")
        check_cell(r["dilution_train (min) [95%]"], t, "dilution_train")
    # the recommendation names the front's best trial on the first objective
    rec = section(md, "## 8.")
    assert f"(trial {front[0]['trial_number']})**" in rec


def test_paired_comparisons_equal_the_query(written):
    """gain - baseline and R train over seeds equal the trial table's paired columns; the loss slope
    difference equals the runs' per-seed slope minus the same seed's baseline slope."""
    rows = table(section(written["md"], "## 6."))
    trials = {t["trial_number"]: t for t in written["trials"]}
    base = {r["seed"]: r for r in written["runs"] if r["role"] == "baseline"}
    assert rows
    for r in rows:
        t = trials[int(r["trial"])]
        assert r["seeds"] == "0, 1" and "(n = 2)" in r["adapter gain - baseline"]
        check_cell(r["adapter gain - baseline"], t, "adapter_gain_diff")
        check_cell(r["R train layers (vs baseline)"], t, "train_grad_ratio")
        check_cell(r["R update layers (vs baseline)"], t, "train_update_ratio")
        runs = [x for x in written["runs"] if x["role"] == "trial" and x["trial_number"] == t["trial_number"]]
        diffs = [x["loss_slope"] - base[x["seed"]]["loss_slope"] for x in runs]
        assert same(numbers(r["loss slope - baseline"])[0], sum(diffs) / len(diffs))
        assert same(numbers(r["loss slope - baseline"])[0], t["loss_slope_rel"])


def test_setting_and_caveats_come_from_the_stored_study(written):
    md = written["md"]
    setting = {r["what"]: r["value"] for r in table(section(md, "## 3."))}
    assert setting["backbone"].startswith("`tiny`") and setting["weights"] == "random init"
    assert "6 Adam steps" in setting["training"] and "seeds 0, 1" in setting["study"]
    hw = [k for k in setting if k.startswith("hardware (")]  # recorded by this ablate's study runner
    assert hw and "CPU cores" in setting[hw[0]]
    assert setting["devices of the runs"] == "cpu"
    caveats = section(md, "## 7.")
    assert "2 seeds" in caveats and "Toy model" in caveats and "Random init" in caveats
    assert "each run has 6 steps" in caveats
    control = next(r for r in written["per_fix"] if r["fix"] == "frozen (control)")
    m = re.search(r"the frozen control - the baseline on `adapter_gain`, paired by seed: ([^;]*);", caveats)
    check_cell(m.group(1), control, "adapter_gain_diff")  # the query's paired gain difference of the control


def test_numbers_follow_the_cli_rule_and_prose_has_no_python_literals(written):
    """One number format for the CLI, the Markdown and the HTML (ablate/textfmt.py): fixed point, no
    exponent; each table column shares one number of decimals; spec values as TOML writes them."""
    md, page = written["md"], written["html"]
    text = md.split("## 11.")[0]  # the stored spec (section 11) is quoted as the user wrote it
    prose = re.sub(r"`[^`]*`", "", text)  # code spans: hashes and names, not numbers ('0e5' in a hash)
    assert not re.search(r"\d[eE][-+]?\d", prose), re.search(r".{40}\d[eE][-+]?\d.{20}", prose)
    assert not re.search(r"\b(True|False|None)\b", text), re.search(r".{40}\b(True|False|None)\b", text)
    assert "frozen control true" in text and "text-context norm: false" in text
    for heading in ("### 4.2", "### 4.5", "## 5."):
        rows = table(section(md, heading))
        for col in [c for c in rows[0] if c not in ("place", "trial", "scale", "seeds", "Pareto rank")]:
            cells = [numbers(r[col]) for r in rows if re.fullmatch(rf"{NUM}( \[.*\])?", r[col])]
            decimals = {getattr(x, "decimals", None) for c in cells for x in c if not math.isnan(x)}
            assert len(decimals) <= 1, (heading, col, decimals)
    # the CLI's per-fix table prints the same cells as the report's evidence (4.5, adapter gain)
    t45 = {r["arm"]: r["adapter gain [95%]"] for r in table(section(md, "### 4.5"))}
    assert t45["frozen (control)"] == "0.000 [0.000, 0.000]" or t45["frozen (control)"].startswith("0.0")
    assert "<td>" + t45["no-branch (baseline)"] + "</td>" in page


def test_html_is_self_contained(written):
    page = written["html"]
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(srcs) == len(written["doc"]["figures"])
    assert re.findall(r"url\(", page) == []
    assert "**" not in page and "<strong><code>" in page  # markup converted, bold around code included
    # the same numbers as the markdown: one evidence row spot-checked
    row = table(section(written["md"], "### 4.5"))[2]
    assert f"<td>{row['adapter gain [95%]']}</td>" in page


def test_excluded_trials_never_rank(mini_study_db, tmp_path, capsys):
    """A trial with a failed seed is listed as excluded and appears in no ranking or comparison."""
    db = copy_db(mini_study_db, tmp_path / "results.db")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE ablate_runs SET status = 'failed' WHERE role = 'trial' AND trial_number = 0 AND seed = 1")
    code, _, err = cli(capsys, "report", "mini", "--out", str(tmp_path / "out"), "--storage", f"sqlite:///{db}")
    assert code == 0, err
    md = (tmp_path / "out" / "report.md").read_text()
    excluded = table(section(md, "## 10."))
    assert [(r["trial"], r["fix"], r["complete seeds"]) for r in excluded] == [("0", "none", "1/2")]
    for heading in ("## 5.", "## 6."):
        assert "0" not in [r["trial"] for r in table(section(md, heading))]
    assert "(trial 0)" not in section(md, "## 8.") and "(trial 0)" not in section(md, "## 2.")


def test_one_seed_says_no_interval(tmp_path, capsys):
    from ablate.spec import parse_spec
    from ablate.study import run_study

    text = MINI.replace("seeds = [0, 1]", "seeds = [0]").replace("trials = 4", "trials = 2")
    text = text.replace('fixes = ["none", "fixed-scale", "tanh-gate"]', 'fixes = ["none", "tanh-gate"]')
    url = f"sqlite:///{tmp_path / 'one.db'}"
    run_study(parse_spec(text), text, url)
    code, _, err = cli(capsys, "report", "mini", "--out", str(tmp_path / "out"), "--storage", url)
    assert code == 0, err
    md = (tmp_path / "out" / "report.md").read_text()
    for r in table(section(md, "## 6.")):
        assert r["adapter gain - baseline"].endswith("(one seed: no interval)")
    assert "One seed:" in section(md, "## 7.")
    assert "without an interval this check cannot be judged" in section(md, "## 7.")
    assert "WITHIN ONE SEED" in section(md, "## 4.")


def test_unknown_study_exits_2_naming_study(written, tmp_path, capsys):
    code, out, err = cli(capsys, "report", "nope", "--out", str(tmp_path / "o"), "--storage", written["url"])
    assert code == 2 and out == ""
    assert err.startswith("error: STUDY: ") and "nope" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_out_naming_a_file_exits_2(written, tmp_path, capsys):
    f = tmp_path / "taken.txt"
    f.write_text("x")
    code, _, err = cli(capsys, "report", "mini", "--out", str(f), "--storage", written["url"])
    assert code == 2 and err.startswith("error: --out: ") and "Traceback" not in err
    assert f.read_text() == "x"


def test_missing_database_exits_2(tmp_path, capsys):
    code, _, err = cli(capsys, "report", "mini", "--out", str(tmp_path / "o"), "--storage",
                       f"sqlite:///{tmp_path / 'none.db'}")  # fmt: skip
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err


def test_report_imports_neither_torch_nor_open_clip(written, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ablate.cli import main\n"
        "try:\n"
        f"    main(['report', 'mini', '--out', {str(tmp_path / 'o')!r}, '--storage', {written['url']!r}, '--json'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('heavy:', [m for m in ('torch', 'open_clip', 'optuna') if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "heavy: []"


def test_spec_defaults_match_the_spec_models():
    """The report fills unwritten spec fields from a copy of the defaults (ablate.spec imports torch)."""
    from ablate import spec
    from ablate.report.model import SPEC_DEFAULTS
    from ablate.subjects.aaclip.wording import SECTION_DEFAULTS as AACLIP
    from ablate.subjects.module.wording import SECTION_DEFAULTS as MODULE

    models = {
        "model": spec.ModelSection,
        "data": spec.DataSection,
        "training": spec.TrainingSection,
        "probe": spec.ProbeSection,
        "study": spec.StudySection,
        "subject": lambda: spec.SubjectSection(
            factory="m:f", batches="m:b", loss="m:l", groups={"g": ["x"]}, branch={"at": "x", "build": "m:c"}
        ),
    }
    for section_name, defaults in {**SPEC_DEFAULTS, **AACLIP, **MODULE}.items():
        made = models[section_name]()
        for key, value in defaults.items():
            assert getattr(made, key) == value, (section_name, key)


def test_pareto_ranks_peel_the_front_by_definition():
    """Each rank is the set of points no other remaining point dominates (checked pairwise from the
    definition), ties, duplicates and one objective included, for both directions; rank 1 is the
    plot's front."""
    import random

    from ablate.pareto import pareto_front, pareto_ranks

    def dominates(a, b, dirs):
        better = [(x <= y) if d == "minimize" else (x >= y) for x, y, d in zip(a, b, dirs)]
        return all(better) and a != b

    rng = random.Random(0)
    for trial in range(300):
        n = rng.randint(1, 30)
        pts = [(float(rng.randint(0, 6)), float(rng.randint(0, 6))) for _ in range(n)]
        dirs = [rng.choice(["maximize", "minimize"]), rng.choice(["maximize", "minimize"])]
        ranks = pareto_ranks(pts, dirs)
        left = list(range(n))
        rank = 0
        while left:
            rank += 1
            want = sorted(i for i in left if not any(dominates(pts[j], pts[i], dirs) for j in left))
            assert sorted(i for i in left if ranks[i] == rank) == want, (trial, pts, dirs)
            left = [i for i in left if ranks[i] != rank]
        front = pareto_front(pts, maximize_x=dirs[0] == "maximize", minimize_y=dirs[1] == "minimize")
        assert sorted(front) == sorted(i for i in range(n) if ranks[i] == 1)
    assert pareto_ranks([(1.0,), (3.0,), (3.0,), (2.0,)], ["maximize"]) == [3, 1, 1, 2]
    assert pareto_ranks([(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 1.0, 1.0)], ["maximize"] * 3) == [2, 2, 1]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_larger_study_with_failures_and_non_finite_values(backend, tmp_path, request, capsys):
    """A 40-trial study written by the read benchmark's builder (failed and pruned trials, a NaN
    slope, an infinite ratio, no hardware note): the evidence equals the query's, the excluded
    trials are exactly the unranked ones, on SQLite and PostgreSQL."""
    from ablate.store import dispose_engines, open_storage, query
    from bench.read_db import build

    url = f"sqlite:///{tmp_path / 'bench.db'}" if backend == "sqlite" else request.getfixturevalue("fresh_pg_url")
    build(url, trials=40, seeds=2, steps=10, probes=2, optuna=True, fail=0.05)
    try:
        code, _, err = cli(capsys, "report", "bench", "--out", str(tmp_path / "out"), "--storage", url)
        assert code == 0, err
        md = (tmp_path / "out" / "report.md").read_text()
        engine = open_storage(url, create=False)
        check_evidence(md, query.json_records(query.group_by_fix(engine, "bench")))
        trials = query.trials_frame(engine, "bench")
    finally:
        dispose_engines()
    unranked = trials[~trials["ranked"]]
    assert len(unranked) > 0
    excluded = table(section(md, "## 10."))
    assert sorted(int(r["trial"]) for r in excluded) == sorted(unranked["trial_number"])
    ranked_numbers = set(trials.loc[trials["ranked"], "trial_number"])
    assert all(int(r["trial"]) in ranked_numbers for r in table(section(md, "## 5.")))
    assert all(int(r["trial"]) in ranked_numbers for r in table(section(md, "## 6.")))
    assert "no hardware description stored" in section(md, "## 3.")


def test_hardware_note_names_the_gpu(monkeypatch):
    """What a CUDA worker records (no GPU here: torch's device query is stubbed); plain JSON values."""
    from types import SimpleNamespace

    import torch

    from ablate.engine.device import describe_hardware

    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda d: SimpleNamespace(name="NVIDIA H200", total_memory=141 * 2**30)
    )
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    info = describe_hardware(torch.device("cuda"))
    assert info["gpu"] == "NVIDIA H200" and info["gpu_memory_gib"] == 141.0 and info["cuda"] == "12.4"
    assert info["device"] == "cuda" and info["cpu_count"] >= 1
    assert json.loads(json.dumps(info)) == info
    assert "gpu" not in describe_hardware(torch.device("cpu"))


def test_recommendation_against_every_other_fix_is_paired_by_seed(written):
    """recommended - other fix's best trial on adapter_gain, seed by seed, mean and t-interval over seeds,
    recomputed here from ``ablate query --runs``."""
    import statistics

    from ablate.stats import t_ppf

    rec = section(written["md"], "## 8.")
    rec_trial = int(re.search(r"\(trial (\d+)\)\*\*", rec).group(1))
    gain = {(r["trial_number"], r["seed"]): r["adapter_gain"] for r in written["runs"] if r["role"] == "trial"}
    found = re.findall(rf"`([a-z-]+)`[^;(]*\(trial (\d+)\) ({NUM}) \[({NUM}), ({NUM})\] \(n = (\d+)\)", rec)
    others = {f for f, *_ in found if int(_[0]) != rec_trial}
    assert others == {"none", "fixed-scale"}  # every other fix with a ranked trial
    for _fix, trial, est, lo, hi, n in found:
        diffs = [gain[(rec_trial, s)] - gain[(int(trial), s)] for s in (0, 1)]
        mean = statistics.mean(diffs)
        half = t_ppf(0.975, 1) * statistics.stdev(diffs) / math.sqrt(2)
        assert int(n) == 2
        assert same(_printed(est), mean) and same(_printed(lo), mean - half) and same(_printed(hi), mean + half)


def test_study_without_a_ranked_trial_says_so(mini_study_db, tmp_path, capsys):
    db = copy_db(mini_study_db, tmp_path / "results.db")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE ablate_runs SET status = 'failed' WHERE role = 'trial'")
    code, _, err = cli(capsys, "report", "mini", "--out", str(tmp_path / "out"), "--storage", f"sqlite:///{db}")
    assert code == 0, err
    md = (tmp_path / "out" / "report.md").read_text()
    assert "nothing to compare or recommend" in section(md, "## 2.")
    assert [r["arm"] for r in table(section(md, "### 4.5"))] == list(REFS)
    assert len(table(section(md, "## 10."))) == 4
    assert "No recommendation: no trial is ranked." in section(md, "## 8.")


def test_auroc_is_shown_when_the_store_has_one(written, tmp_path, monkeypatch):
    """No AUROC column exists yet (another issue adds one): a stand-in run column named as one is
    shown per arm as its mean over seeds, and the 'not evaluated' lines go."""
    from ablate.report import model, write_report
    from ablate.store import open_storage

    monkeypatch.setattr(model, "AUROC_COLUMNS", ("loss_first",))
    write_report(open_storage(written["url"], create=False), "mini", tmp_path, "db")
    md = (tmp_path / "report.md").read_text()
    rows = {r["arm"]: r for r in table(section(md, "### 4.6"))}
    best = {r["fix"]: r["best_trial"] for r in written["per_fix"]}
    for fix in ("none", "fixed-scale", "tanh-gate"):
        runs = [r for r in written["runs"] if r["role"] == "trial" and r["trial_number"] == best[fix]]
        assert same(numbers(rows[fix]["loss_first [95%]"])[0], sum(r["loss_first"] for r in runs) / len(runs))
    assert "not evaluated" not in md.lower()
