"""Stage 1 in a study: once per seed before its baseline, a ``stage1`` run row with its losses, the
text adapter's weights in ablate_blobs, the same text side for every arm of the seed, read back (not
retrained) when the study resumes; off, or a checkpoint given, no Stage 1 run at all."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from ablate.spec import parse_spec
from ablate.study import run_study
from ablate.subjects.aaclip.arm import load_text_adapter, new_text_adapter
from ablate.subjects.aaclip.stage1 import to_bytes
from tests.study_helpers import MINI

SPEC = (
    MINI.replace("trials = 4", "trials = 2").replace('device = "cpu"', 'device = "cpu"\npack = 2')
    + "[stage1]\nsteps = 2\nbatch_size = 4\n"
)


def _rows(db, sql):
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def test_stage1_runs_once_per_seed_and_every_arm_of_the_seed_gets_its_weights(tmp_path, monkeypatch, capsys):
    import ablate.subjects.aaclip.subject as runner  # the AA-CLIP subject builds every arm

    given: list[tuple[int, dict]] = []
    real_arm, real_pack = runner.ArmSetup, runner.PackSetup

    def arm_spy(cfg, like=None, text_adapter=None):
        given.append((cfg.seed, text_adapter))
        return real_arm(cfg, like=like, text_adapter=text_adapter)

    def pack_spy(cfgs, like=None, text_adapters=None):
        given.extend(zip([c.seed for c in cfgs], text_adapters))
        return real_pack(cfgs, like=like, text_adapters=text_adapters)

    monkeypatch.setattr(runner, "ArmSetup", arm_spy)
    monkeypatch.setattr(runner, "PackSetup", pack_spy)
    db = tmp_path / "s.db"
    out = run_study(parse_spec(SPEC), SPEC, f"sqlite:///{db}")
    assert out.n_trials == 2 and out.failed == 0
    runs = _rows(db, "select id, role, trial_number, seed, status, steps, loss_first from ablate_runs order by id")
    stage1 = [r for r in runs if r[1] == "stage1"]
    assert [(r[2], r[3], r[4], r[5]) for r in stage1] == [(None, 0, "complete", 2), (None, 1, "complete", 2)]
    assert runs[:2] == stage1  # before any baseline
    steps = _rows(db, f"select name, count(*) from ablate_step_metrics where run_id = {stage1[0][0]} group by name")
    assert dict(steps) == {"loss": 2, "segmentation_loss": 2, "orthogonal_loss": 2}
    blobs = _rows(db, "select run_id, name, nbytes, length(data), sha256 from ablate_blobs order by run_id")
    assert [(b[0], b[1]) for b in blobs] == [(stage1[0][0], "stage1"), (stage1[1][0], "stage1")]
    assert all(b[2] == b[3] > 0 and len(b[4]) == 64 for b in blobs)
    # every arm of a seed (baseline, control, trials) got that seed's stored weights, and the seeds differ
    model = parse_spec(SPEC).arm("none", None, 0).subject.model
    stored = {seed: load_text_adapter(model, _rows(db, f"select data from ablate_blobs where run_id = {rid}")[0][0])
              for rid, _, _, seed, *_ in stage1}  # fmt: skip
    arms = len([r for r in runs if r[1] != "stage1"])
    assert len(given) == arms
    for seed, weights in given:
        assert weights is not None and all(torch.equal(weights[k], stored[seed][k]) for k in stored[seed])
    assert any(not torch.equal(stored[0][k], stored[1][k]) for k in stored[0])
    # resuming reads the weights back: no new Stage 1 run, the same finished rows
    before = _rows(db, "select id, finished_at from ablate_runs where role = 'stage1'")
    given.clear()
    out = run_study(parse_spec(SPEC), SPEC, f"sqlite:///{db}", n_trials=3)
    assert out.n_trials == 3
    assert _rows(db, "select id, finished_at from ablate_runs where role = 'stage1'") == before
    assert given and all(torch.equal(w[k], stored[s][k]) for s, w in given for k in w)
    # `ablate query --runs` lists the Stage 1 rows beside the others
    from tests.study_helpers import run_cli

    capsys.readouterr()
    code, text, _ = run_cli(capsys, "query", "--storage", f"sqlite:///{db}", "--runs")
    assert code == 0 and "stage1 (per seed)" in text


@pytest.mark.parametrize("stage1", ["off", "checkpoint"])
def test_no_stage1_run_when_it_is_off_or_a_checkpoint_is_given(tmp_path, stage1):
    spec_text = SPEC.replace("trials = 2", "trials = 1")
    if stage1 == "off":
        spec_text += "enabled = false\n"
    else:
        model = parse_spec(spec_text).arm("none", None, 0).subject.model
        torch.manual_seed(0)
        (tmp_path / "ta.pt").write_bytes(to_bytes(new_text_adapter(model).state_dict()))
        spec_text += f'[model]\ntext_adapter = "{tmp_path / "ta.pt"}"\n'
    db = tmp_path / "s.db"
    out = run_study(parse_spec(spec_text), spec_text, f"sqlite:///{db}")
    assert out.n_trials == 1 and out.failed == 0
    assert _rows(db, "select count(*) from ablate_runs where role = 'stage1'") == [(0,)]
    assert _rows(db, "select count(*) from ablate_blobs") == [(0,)]
