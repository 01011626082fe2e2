"""One ranking: `ablate query --group-by fix` (its table and its JSON) and `ablate report` (its
table of fixes, its runner-up, report.json) name the same first and second fix, all from
ablate/ranking.py.

The planted study is the case that split them: the second-best fix on the first objective is
dominated (Pareto rank 2), while a fix with a low gain and no dilution is on the front. Ordered by
Pareto rank the front's fix came second in the report's table, while its summary called the
dominated one the runner-up, and the CLI ranked that one second."""

from __future__ import annotations

import json
import re

from tests.study_helpers import plant_study, run_cli, sqlite_url


def _values(gain: float, ratio: float) -> dict[int, dict[str, float]]:
    jitter = (-0.01, 0.0, 0.01)  # three seeds, so every interval has width
    return {s: {"adapter_gain": gain + j, "train_grad_ratio": ratio * (1 + j)} for s, j in enumerate(jitter)}


ARMS = [
    {"role": "baseline", "trial": None, "fix": "no-branch", "values": _values(0.30, 1.0)},
    {"role": "control", "trial": None, "fix": "no-branch", "values": _values(0.0, 0.5)},
    # best on adapter_gain, on the front
    {"role": "trial", "trial": 0, "fix": "fixed-scale", "scale": 0.1, "values": _values(0.28, 0.5)},
    # second on adapter_gain, but dominated by fixed-scale (less gain, more dilution): Pareto rank 2
    {"role": "trial", "trial": 1, "fix": "norm-match", "scale": 0.1, "values": _values(0.25, 0.4)},
    # little gain, no dilution: on the front
    {"role": "trial", "trial": 2, "fix": "tanh-gate", "scale": 0.0, "values": _values(0.10, 1.0)},
]


def test_the_cli_its_json_and_the_report_name_the_same_first_and_second(tmp_path, capsys):
    url = sqlite_url(tmp_path / "results.db")
    plant_study(url, "planted", ARMS)

    code, out, err = run_cli(capsys, "query", "--group-by", "fix", "--storage", url, "--wide")
    assert code == 0, err
    table = {m.group(1): m.group(2) for m in re.finditer(r"^\s*([12])\s+(\S+)", out, re.M)}
    assert table == {"1": "fixed-scale", "2": "norm-match"}
    assert "recommended: fixed-scale s=0.1 (trial 0)" in out

    code, out, err = run_cli(capsys, "query", "--group-by", "fix", "--format", "json", "--storage", url)
    rows = {r["rank"]: r for r in json.loads(out) if r["rank"] is not None}
    assert (rows[1]["fix"], rows[2]["fix"], rows[3]["fix"]) == ("fixed-scale", "norm-match", "tanh-gate")
    assert rows[1]["recommended"] and not rows[2]["recommended"]

    code, _, err = run_cli(capsys, "report", "planted", "--storage", url, "--out", str(tmp_path / "report"))
    assert code == 0, err
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [t["fix"] for t in doc["fix_ranking"]] == ["fixed-scale", "norm-match", "tanh-gate"]
    assert [t["pareto_rank"] for t in doc["fix_ranking"]] == [1, 2, 1]  # the place is not the Pareto rank
    assert doc["recommendation"]["trial"]["fix"] == "fixed-scale"
    assert doc["recommendation"]["runner_up"]["fix"] == "norm-match"
    md = (tmp_path / "report" / "report.md").read_text()
    places = re.findall(r"^\| ([123]) \| (\S+) \|", md.split("## 5.")[1], re.M)
    assert places == [("1", "fixed-scale"), ("2", "norm-match"), ("3", "tanh-gate")]
    assert "Against the runner-up `norm-match` at scale 0.1 (trial 1)" in md
