"""Anomaly data sets on disk: the three layouts, class names into prompts, masks on the patch grid,
few-shot, augmentation, the spec and CLI that name them, and short trainings on folder data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ablate.arms import train_arm, train_pack
from ablate.engine.arm import ArmConfig
from ablate.engine.loop import RunConfig
from ablate.spec import parse_spec, with_overrides
from ablate.subjects.aaclip.arm import ArmSetup, DataConfig, PackSetup, aaclip_arm
from ablate.subjects.aaclip.data.folders import Source, detect_kind, list_samples
from ablate.subjects.aaclip.data.names import aaclip_names
from ablate.subjects.aaclip.data.sources import FolderConfig, build_folder_data, few_shot
from ablate.subjects.aaclip.prompts import class_prompts
from tests.data_fixtures import SQUARE, make_manifest, make_mvtec, make_visa


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("sets")
    return {
        "mvtec": make_mvtec(tmp / "mvtec"),
        "visa": make_visa(tmp / "visa"),
        "manifest": make_manifest(tmp / "medical"),
    }


def test_mvtec_layout(sets):
    root = sets["mvtec"]
    train = list_samples(Source("mvtec", str(root), "train"))
    test = list_samples(Source("mvtec", str(root), "test"))
    assert [s.class_name for s in train] == ["bottle"] * 3 + ["metal_nut"] * 3
    assert all(s.label == 0 and s.mask is None and s.split == "train" for s in train)
    bad = [s for s in test if s.label == 1]
    assert len(test) == 8 and len(bad) == 4
    assert all(Path(s.mask).name == Path(s.image).stem + "_mask.png" and "ground_truth" in s.mask for s in bad)
    assert all(s.mask is None for s in test if s.label == 0)
    assert len(list_samples(Source("mvtec", str(root), "all", ("metal_nut",)))) == 7
    assert detect_kind(str(root)) == "mvtec"


def test_visa_layout(sets):
    root = sets["visa"]
    test = list_samples(Source("visa", str(root), "test"))
    assert {s.class_name for s in test} == {"candle", "pipe_fryum"} and len(test) == 8
    assert all((s.mask is not None) == (s.label == 1) for s in test)
    assert len(list_samples(Source("visa", str(root), "train"))) == 6
    assert detect_kind(str(root)) == "visa"


def test_manifest_layout(sets):
    path = sets["manifest"]
    test = list_samples(Source("manifest", str(path), "test"))
    assert len(test) == 8 and sum(s.label for s in test) == 4
    assert all(Path(s.image).is_file() for s in test)  # relative to the manifest's folder
    assert len(list_samples(Source("manifest", str(path), "all"))) == 12
    assert detect_kind(str(path)) == "manifest"


@pytest.mark.parametrize("kind", ["mvtec", "visa", "manifest"])
def test_batches_carry_images_masks_labels_and_classes(sets, kind):
    data = build_folder_data(FolderConfig(train=Source(kind, str(sets[kind]))), 64, seed=0)
    ev = data.eval
    batch = ev.batch(list(range(len(ev))))
    assert batch.images.shape == (len(ev), 3, 64, 64) and batch.images.dtype == torch.float32
    assert batch.masks.shape == (len(ev), 64, 64)
    assert set(batch.masks.unique().tolist()) <= {0.0, 1.0}
    # A mask wherever the label says anomalous, none elsewhere.
    assert torch.equal(batch.masks.flatten(1).amax(1).long(), batch.labels)
    names = [data.classes[i] for i in batch.class_idx]
    # AA-CLIP's descriptive names for MVTec AD and VisA classes; other layouts: the folder name
    own = aaclip_names(kind)
    assert names == [own.get(s.class_name, s.class_name.replace("_", " ")) for s in ev.samples]
    # The white square is where the mask is: the image is brighter there than anywhere else.
    m = batch.masks.bool()
    bright = batch.images.mean(1)
    assert bool((bright[m].min() > bright[~m & batch.labels.bool()[:, None, None]].max()).item())
    # A full evaluation pass sees every image once.
    assert sum(len(b) for b in ev.batches(3)) == len(ev)


def test_masks_align_with_the_patch_grid(sets):
    data = build_folder_data(FolderConfig(train=Source("mvtec", str(sets["mvtec"]))), 64, seed=0)
    i = next(j for j, s in enumerate(data.eval.samples) if s.label == 1)
    mask = data.eval.batch([i]).masks[0]
    patch = 8  # the tiny backbone: 64 px, 8 px patches -> an 8 x 8 grid
    per_patch = mask.view(8, patch, 8, patch).mean((1, 3))
    top, left, side = (v * 2 for v in SQUARE)  # stored at 32 px, read at 64 px
    expect = torch.zeros(8, 8)
    expect[top // patch : (top + side) // patch, left // patch : (left + side) // patch] = 1.0
    assert torch.equal(per_patch, expect)


def test_class_names_reach_the_prompts_with_real_names(sets):
    cfg = FolderConfig(
        train=Source("visa", str(sets["visa"])),
        eval=Source("mvtec", str(sets["mvtec"])),
        real_names=(("bottle", "dark bottle"),),
    )
    arm = aaclip_arm(data=DataConfig(batch_size=2, folders=cfg), probe_batches=2, gain_batches=2, device="cpu")
    setup = ArmSetup(arm)
    # Training classes first, then the evaluation set's: one text embedding per class name (the
    # spec's real name, else AA-CLIP's for a VisA or MVTec AD class).
    assert setup.model.classes == [
        "candle",
        "pipe-shaped fryum",
        "dark bottle",
        "metal nut which has four notched edges",
    ]
    assert setup.model.text_embeds.shape[0] == 4
    assert class_prompts("dark bottle")[1][0] == "a damaged dark bottle."
    # Probe and gain batches come from the evaluation set (MVTec classes), training from VisA.
    held = torch.cat([b.class_idx for b in setup.probe_batches + setup.gain_batches])
    assert set(held.tolist()) <= {2, 3}
    assert set(setup.train_batch(0).class_idx.tolist()) <= {0, 1}


def test_few_shot_takes_k_per_class_with_a_seed(sets):
    samples = list_samples(Source("mvtec", str(sets["mvtec"]), "test"))
    a = few_shot(samples, 2, seed=0)
    assert [s.class_name for s in a] == ["bottle", "bottle", "metal_nut", "metal_nut"]
    assert a == few_shot(samples, 2, seed=0)
    assert any(few_shot(samples, 2, seed=s) != a for s in range(1, 6))
    assert few_shot(samples, 0, seed=0) == samples and few_shot(samples, 99, seed=0) == samples


def test_flips_move_image_and_mask_together(sets):
    cfg = FolderConfig(train=Source("mvtec", str(sets["mvtec"])))
    ds = build_folder_data(cfg, 64, seed=0, augment="flips").train
    i = next(j for j, s in enumerate(ds.samples) if s.label == 1)
    plain = ds.sample(i)[1]
    moved = [ds.sample(i, step) for step in range(8)]
    assert any(not torch.equal(m[1], plain) for m in moved)
    for img, mask, _, _ in moved:
        bright = img.mean(0)
        assert bright[mask.bool()].min() > bright[~mask.bool()].max()
        assert mask.sum() == plain.sum()
    assert torch.equal(ds.sample(i, 3)[0], ds.sample(i, 3)[0])  # seeded: reproducible


def _arm(folders: FolderConfig, steps: int = 3, seed: int = 0) -> ArmConfig:
    return aaclip_arm(
        data=DataConfig(batch_size=2, folders=folders),
        run=RunConfig(steps=steps, probe_every=-1),
        probe_batches=2,
        gain_batches=2,
        seed=seed,
        device="cpu",
    )


def test_short_training_on_folder_data_same_with_or_without_workers(sets):
    base = FolderConfig(train=Source("manifest", str(sets["manifest"])), few_shot=3, workers=0)  # augmented
    a = train_arm(_arm(base))
    b = train_arm(_arm(replace(base, workers=1)))
    assert len(a.metrics["loss"]) == 3 and all(torch.isfinite(torch.tensor(a.metrics["loss"])))
    assert a.metrics["loss"] == b.metrics["loss"]


def test_packed_arms_read_folder_data_like_single_arms(sets):
    folders = FolderConfig(train=Source("mvtec", str(sets["mvtec"])), workers=1)
    cfgs = [_arm(folders, seed=s) for s in (0, 1)]
    setup = PackSetup(cfgs)
    assert setup.train_batch(0).images.shape == (2, 2, 3, 64, 64)
    packed = train_pack(cfgs, built=setup)
    single = [train_arm(c) for c in cfgs]
    for p, s in zip(packed, single):
        assert p.metrics["loss"] == pytest.approx(s.metrics["loss"], rel=1e-4, abs=1e-5)


SPEC = """
name = "folders"
[data]
kind = "mvtec"
root = "{root}"
batch_size = 2
few_shot = 2
real_names = {{ bottle = "dark bottle" }}
classes = ["bottle"]
[eval_data]
kind = "manifest"
manifest = "{manifest}"
"""


def test_spec_keys_build_the_folder_config(sets):
    spec = parse_spec(SPEC.format(root=sets["mvtec"], manifest=sets["manifest"]))
    f = spec.arm("none", None, 0).subject.data.folders
    assert f.train == Source("mvtec", str(sets["mvtec"]), "test", ("bottle",), None, "data")
    assert f.eval_source == Source("manifest", str(sets["manifest"]), "test", None, None, "eval_data")
    assert f.few_shot == 2 and f.prompt_name("bottle") == "dark bottle"
    assert parse_spec('name = "s"').arm("none", None, 0).subject.data.folders is None  # synthetic stays the default


def test_cli_overrides_pick_the_layout_and_mark_the_spec_text(sets):
    spec, text = parse_spec('name = "s"'), 'name = "s"\n'
    new, new_text = with_overrides(spec, text, data=str(sets["visa"]), eval_data=str(sets["manifest"]))
    f = new.arm("none", None, 0).subject.data.folders
    assert f.train.kind == "visa" and f.eval_source.kind == "manifest"
    assert new_text != text and str(sets["visa"]) in new_text
    assert with_overrides(spec, text) == (spec, text)


def test_study_run_on_folder_data(sets, tmp_path, capsys):
    from ablate.cli import main
    from tests.study_helpers import MINI

    spec = tmp_path / "mini.toml"
    spec.write_text(MINI.replace("train_size = 16", "workers = 1"))
    db = tmp_path / "results.db"
    with pytest.raises(SystemExit) as info:
        main(["study", "run", str(spec), "--data", str(sets["mvtec"]), "--eval-data", str(sets["visa"]),
              "--storage", f"sqlite:///{db}", "--trials", "1", "--quiet", "--no-plots", "--json"])  # fmt: skip
    assert info.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_trials"] == 1
    import sqlite3

    with sqlite3.connect(db) as con:
        (text,) = con.execute("select spec_text from ablate_studies").fetchone()
        evaluated = con.execute(
            "select role, image_auroc, image_ap, pixel_auroc, pixel_ap from ablate_runs "
            "where status = 'complete' and role != 'stage1'"
        ).fetchall()
        classes = {r[0] for r in con.execute("select distinct class_name from ablate_class_metrics")}
    assert "--data" in text and str(sets["mvtec"]) in text
    # Data on disk is evaluated at the end of every run, by default, on the evaluation set (VisA here):
    # every metric stored per run, and per class under the evaluation set's class names.
    assert {r[0] for r in evaluated} == {"baseline", "control", "trial"}
    assert all(0.0 <= v <= 1.0 for r in evaluated for v in r[1:]), evaluated
    visa = ArmSetup(_arm(FolderConfig(train=Source("visa", str(sets["visa"]))))).eval_set
    own = aaclip_names("visa")
    assert classes == {own.get(s.class_name, s.class_name.replace("_", " ")) for s in visa.samples}


def test_evaluation_batches_cover_the_evaluation_set_once(sets):
    folders = FolderConfig(train=Source("visa", str(sets["visa"])), eval=Source("mvtec", str(sets["mvtec"])))
    setup = ArmSetup(_arm(folders))
    seen = list(setup.evaluation_batches(batch_size=3))
    assert [len(b.labels) for b in seen] == [3, 3, 2]
    labels = torch.cat([b.labels for b in seen])
    assert labels.tolist() == [s.label for s in setup.eval_set.samples]
    names = [setup.model.classes[i] for i in torch.cat([b.class_idx for b in seen])]
    own = aaclip_names("mvtec")  # AA-CLIP's names of the MVTec AD classes
    assert names == [own[s.class_name] for s in setup.eval_set.samples]
    with_workers = ArmSetup(_arm(replace(folders, workers=1)))
    again = list(with_workers.evaluation_batches(batch_size=3))
    assert all(torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) for a, b in zip(seen, again))
    pack = PackSetup([_arm(folders, seed=s) for s in (0, 1)])
    assert next(pack.evaluation_batches(3)).masks.shape == (2, 3, 64, 64)
    synthetic = ArmSetup(aaclip_arm(data=DataConfig(batch_size=2), probe_batches=2, gain_batches=2, device="cpu"))
    assert len(list(synthetic.evaluation_batches())) == 2


def _shots(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


SHOTS = [  # AA-CLIP's k-shot list format (its dataset/metadata/<set>/<k>-shot.jsonl), float labels as it writes some
    {"image_path": "metal_nut/test/scratch/001.png", "label": 1.0, "class_name": "metal_nut",
     "mask_path": "metal_nut/ground_truth/scratch/001_mask.png"},
    {"image_path": "bottle/train/good/002.png", "label": 0, "class_name": "bottle"},
    {"image_path": "bottle/test/scratch/000.png", "label": 1, "mask_path": "bottle/ground_truth/scratch/000_mask.png",
     "class_name": "bottle"},
]  # fmt: skip


def test_a_shots_file_in_aaclips_format_is_the_training_set(sets, tmp_path):
    root = sets["mvtec"]
    path = _shots(tmp_path / "3-shot.jsonl", SHOTS)
    text = f'name = "s"\n[data]\nkind = "mvtec"\nroot = "{root}"\nshots_file = "{path}"\nbatch_size = 2\n'
    spec = parse_spec(text)
    folders = spec.arm("none", None, 0).subject.data.folders
    assert folders.shots_file == str(path)
    data = build_folder_data(folders, 64, seed=0)
    got = [(Path(s.image).relative_to(root).as_posix(), s.class_name, s.label, s.mask) for s in data.train.samples]
    assert got == [  # the file's images, in its order, labels as ints, masks only for anomalous ones
        ("metal_nut/test/scratch/001.png", "metal_nut", 1, str(root / "metal_nut/ground_truth/scratch/001_mask.png")),
        ("bottle/train/good/002.png", "bottle", 0, None),
        ("bottle/test/scratch/000.png", "bottle", 1, str(root / "bottle/ground_truth/scratch/000_mask.png")),
    ]
    # the same for every seed (a fixed list); without the file, the seeded draw of few_shot
    assert build_folder_data(folders, 64, seed=5).train.samples == data.train.samples
    drawn = parse_spec(text.replace(f'shots_file = "{path}"', "few_shot = 1")).arm("none", None, 0).subject.data
    assert drawn.folders.shots_file is None and drawn.folders.few_shot == 1
    # it trains: one batch has the first two images of an epoch's order
    batch = ArmSetup(spec.arm("none", None, 0)).train_batch(0)
    assert batch.images.shape == (2, 3, 64, 64) and batch.masks.shape == (2, 64, 64)
    # data.classes keeps a subset of the file's images
    only = build_folder_data(replace(folders, train=replace(folders.train, classes=("bottle",))), 64, 0)
    assert [s.class_name for s in only.train.samples] == ["bottle", "bottle"]


def test_a_manifests_shots_file_is_relative_to_the_manifests_folder(sets, tmp_path):
    manifest = sets["manifest"]
    path = _shots(tmp_path / "2-shot.jsonl", [
        {"image_path": "img/brain_bad0.png", "label": 1, "mask_path": "mask/brain_bad0.png", "class_name": "brain"},
        {"image_path": "img/liver_ok1.png", "label": 0, "class_name": "liver"},
    ])  # fmt: skip
    data = build_folder_data(FolderConfig(train=Source("manifest", str(manifest)), shots_file=str(path)), 64, 0)
    assert [Path(s.image) for s in data.train.samples] == [manifest.parent / "img/brain_bad0.png",
                                                          manifest.parent / "img/liver_ok1.png"]  # fmt: skip


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"image": "bottle/test/scratch/000.png", "class": "bottle", "label": 1}], "unknown key 'class'"),
        ([{"image_path": "bottle/train/good/000.png", "label": 2, "class_name": "bottle"}], "'label' must be 0"),
        ([{"image_path": "bottle/test/scratch/000.png", "label": 1, "class_name": "bottle"}], "needs its 'mask_path'"),
        ([{"image_path": "bottle/none.png", "label": 0, "class_name": "bottle"}], "image not found"),
        ([{"image_path": "bottle/train/good/000.png", "label": 0}], "'class_name' must be a name"),
        ("not json\n", "not valid JSON"),
        ([], "names no training image"),
    ],
)
def test_a_bad_shots_file_is_one_line_naming_the_key(sets, tmp_path, records, message):
    from ablate.errors import AblateInputError
    from ablate.subjects.aaclip.arm import check_data

    path = tmp_path / "bad.jsonl"
    path.write_text(records) if isinstance(records, str) else _shots(path, records)
    spec = parse_spec(f'name = "s"\n[data]\nkind = "mvtec"\nroot = "{sets["mvtec"]}"\nshots_file = "{path}"\n')
    with pytest.raises(AblateInputError) as info:
        check_data(spec.arm("none", None, 0))
    assert info.value.field == "data.shots_file" and message in info.value.message
    assert "\n" not in info.value.message


@pytest.mark.parametrize(
    "extra, field",
    [
        ("few_shot = 2", "data.few_shot"),
        ('split = "test"', "data.split"),
    ],
)
def test_a_shots_file_with_few_shot_or_split_is_refused(sets, extra, field):
    from ablate.errors import AblateInputError

    with pytest.raises(AblateInputError) as info:
        parse_spec(f'name = "s"\n[data]\nkind = "mvtec"\nroot = "{sets["mvtec"]}"\nshots_file = "x.jsonl"\n{extra}\n')
    assert info.value.field == field
    with pytest.raises(AblateInputError) as info:
        parse_spec('name = "s"\n[data]\nshots_file = "x.jsonl"\n')  # synthetic data has no files
    assert info.value.field == "data.shots_file"


def test_mpdd_and_medical_sets_prompt_with_aaclips_names_chosen_by_the_data_sets_name(tmp_path, sets):
    from ablate.errors import AblateInputError
    from ablate.subjects.aaclip.arm import check_data

    mpdd = make_mvtec(tmp_path / "mpdd", classes=("connector", "tubes"))
    text = f'name = "s"\n[data]\nkind = "mvtec"\nroot = "{mpdd}"\n'
    named = build_folder_data(parse_spec(text + 'dataset = "mpdd"\n').arm("none", None, 0).subject.data.folders, 64, 0)
    assert named.classes == ("metal clamps with black adjustment knobs", "scattered metal objects")
    plain = build_folder_data(parse_spec(text).arm("none", None, 0).subject.data.folders, 64, 0)
    assert plain.classes == ("connector", "tubes")  # an MVTec AD layout is not MVTec AD's names
    medical = make_manifest(tmp_path / "brainmri", classes=("Brain",))
    text = f'name = "s"\n[data]\nkind = "manifest"\nmanifest = "{medical}"\ndataset = "brain"\n'
    spec = parse_spec(text + f'[eval_data]\nkind = "mvtec"\nroot = "{mpdd}"\ndataset = "mpdd"\n')
    data = build_folder_data(spec.arm("none", None, 0).subject.data.folders, 64, 0)
    assert data.classes[0] == "scan" and data.classes[1] == "metal clamps with black adjustment knobs"
    # a name that is not one of AA-CLIP's data sets, or one that names none of the classes: refused
    with pytest.raises(AblateInputError) as info:
        parse_spec(text.replace('"brain"', '"brian"'))
    assert info.value.field == "data.dataset" and "'brain'" in info.value.message
    wrong = parse_spec(f'name = "s"\n[data]\nkind = "mvtec"\nroot = "{sets["mvtec"]}"\ndataset = "visa"\n')
    with pytest.raises(AblateInputError) as info:
        check_data(wrong.arm("none", None, 0))
    assert info.value.field == "data.dataset" and "bottle" in info.value.message
