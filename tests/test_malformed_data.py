"""Bad data on disk and bad weights, each refused before training and before anything is written:
exit 2, one line naming the spec key or CLI option and the path at fault, the database unchanged
(the pattern of test_malformed.py, against a copy of the finished mini study)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data_fixtures import make_manifest, make_mvtec, make_visa
from tests.study_helpers import MINI, copy_db, refused_line

S = MINI.replace('name = "mini"', 'name = "other"')


def data(lines: str) -> str:
    return S.replace("[data]", "[data]\n" + lines)


ONE_SHOT = 'kind = "mvtec"\nroot = "{tmp}/good"\nfew_shot = 1\nclasses = ["bottle"]'

# (id, spec text, extra argv, the field named, a fragment of the path the message must name).
# "{tmp}" is the folder of broken data sets the fixture writes.
CASES = [
    ("missing root (spec)", data('kind = "mvtec"\nroot = "{tmp}/nowhere"'), [], "data.root", "nowhere"),
    ("missing root (--data)", S, ["--data", "{tmp}/nowhere", "--data-kind", "mvtec"], "--data", "nowhere"),
    ("missing manifest (--data)", S, ["--data", "{tmp}/none.jsonl", "--data-kind", "manifest"], "--data", "none"),
    ("missing evaluation root", S, ["--data", "{tmp}/good", "--eval-data", "{tmp}/gone"], "--eval-data", "gone"),
    (
        "missing evaluation root (spec)",
        data('kind = "mvtec"\nroot = "{tmp}/good"') + '\n[eval_data]\nkind = "mvtec"\nroot = "{tmp}/gone"\n',
        [],
        "eval_data.root",
        "gone",
    ),  # fmt: skip
    ("root is not a data set", S, ["--data", "{tmp}/plain", "--data-kind", "mvtec"], "--data", "plain"),
    ("class with no images", S, ["--data", "{tmp}/empty_class"], "--data", "cable"),
    (
        "class asked for is absent",
        data('kind = "mvtec"\nroot = "{tmp}/good"\nclasses = ["zipper"]'),
        [],
        "data.classes",
        "zipper",
    ),  # fmt: skip
    ("anomalous image without mask", S, ["--data", "{tmp}/no_mask"], "--data", "scratch/001.png"),
    ("anomalous line with a null mask", S, ["--data", "{tmp}/null_mask/manifest.jsonl"], "--data", "liver_bad0"),
    ("mask size differs", S, ["--data", "{tmp}/mask_size"], "--data", "000_mask.png"),
    ("image unreadable", S, ["--data", "{tmp}/garbage"], "--data", "test/good/001.png"),
    ("image truncated (png)", S, ["--data", "{tmp}/cut_png"], "--data", "test/good/000.png"),
    ("image truncated (jpeg)", S, ["--data", "{tmp}/cut_jpeg"], "--data", "test001.JPG"),
    ("mask unreadable", S, ["--data", "{tmp}/bad_mask"], "--data", "001_mask.png"),
    ("image file missing", S, ["--data", "{tmp}/lost/manifest.jsonl"], "--data", "brain_ok1.png"),
    (
        "manifest line not JSON",
        data('kind = "manifest"\nmanifest = "{tmp}/not_json.jsonl"'),
        [],
        "data.manifest",
        "not_json.jsonl line 3",
    ),  # fmt: skip
    ("manifest line not JSON (--data)", S, ["--data", "{tmp}/not_json.jsonl"], "--data", "line 3"),
    ("manifest label not 0/1", S, ["--data", "{tmp}/label_two.jsonl"], "--data", "line 1"),
    ("manifest unknown key", S, ["--data", "{tmp}/extra_key.jsonl"], "--data", "line 1"),
    ("visa without its split csv", S, ["--data", "{tmp}/good", "--data-kind", "visa"], "--data", "1cls.csv"),
    ("visa csv with a bad label", S, ["--data", "{tmp}/visa_bad_label"], "--data", "line 2"),
    ("data kind unknown", S, ["--data", "{tmp}/good", "--data-kind", "folder"], "--data-kind", ""),
    ("data kind without data", S, ["--data-kind", "mvtec"], "--data", ""),
    ("kind mvtec without root", data('kind = "mvtec"'), [], "data.root", ""),
    ("kind manifest without manifest", data('kind = "manifest"'), [], "data.manifest", ""),
    ("root on synthetic data", data('root = "{tmp}/good"'), [], "data.root", ""),
    ("few_shot on synthetic data", data("few_shot = 2"), [], "data.few_shot", ""),
    ("few_shot negative", data('kind = "mvtec"\nroot = "{tmp}/good"\nfew_shot = -1'), [], "data.few_shot", ""),
    ("workers negative", data("workers = -1"), [], "data.workers", ""),
    (
        "real name empty",
        data('kind = "mvtec"\nroot = "{tmp}/good"\nreal_names = { bottle = " " }'),
        [],
        "data.real_names",
        "",
    ),  # fmt: skip
    (
        "real name of an absent class",
        data('kind = "mvtec"\nroot = "{tmp}/good"\nreal_names = { zipper = "z" }'),
        [],
        "data.real_names",
        "zipper",
    ),  # fmt: skip
    ("split unknown", data('kind = "mvtec"\nroot = "{tmp}/good"\nsplit = "val"'), [], "data.split", ""),
    (
        "eval data on synthetic training data",
        S + '\n[eval_data]\nkind = "mvtec"\nroot = "{tmp}/good"\n',
        [],
        "eval_data",
        "",
    ),  # fmt: skip
    ("fewer training images than a batch", data(ONE_SHOT), [], "data.few_shot", "batch_size"),
    (
        "weights missing (--pretrained)",
        S,
        ["--pretrained", "/no/such/ViT-L-14-336.pt"],
        "--pretrained",
        "ViT-L-14-336.pt",
    ),  # fmt: skip
    ("weights not a checkpoint (--pretrained)", S, ["--pretrained", "{tmp}/garbage.pt"], "--pretrained", "garbage.pt"),
    ("weights tag not cached (--pretrained)", S, ["--pretrained", "openai"], "--pretrained", "openai"),
    (
        "weights missing with good data",
        S,
        ["--data", "{tmp}/good", "--pretrained", "{tmp}/no.pt"],
        "--pretrained",
        "no.pt",
    ),  # fmt: skip
]


def _cut(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


@pytest.fixture(scope="module")
def workdir(mini_study_db, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("malformed_data")
    copy_db(mini_study_db, tmp / "results.db")
    (tmp / "garbage.pt").write_bytes(b"this is not a checkpoint")
    (tmp / "plain").mkdir()
    make_mvtec(tmp / "good")
    make_mvtec(tmp / "empty_class")
    (tmp / "empty_class" / "cable" / "train" / "good").mkdir(parents=True)
    make_mvtec(tmp / "no_mask")
    (tmp / "no_mask" / "bottle" / "ground_truth" / "scratch" / "001_mask.png").unlink()
    make_mvtec(tmp / "mask_size")
    from PIL import Image

    Image.new("L", (16, 16), 255).save(tmp / "mask_size" / "metal_nut" / "ground_truth" / "scratch" / "000_mask.png")
    make_mvtec(tmp / "garbage")
    (tmp / "garbage" / "bottle" / "test" / "good" / "001.png").write_bytes(b"\x89PNG not really")
    make_mvtec(tmp / "cut_png")
    _cut(tmp / "cut_png" / "bottle" / "test" / "good" / "000.png")
    make_visa(tmp / "cut_jpeg")
    _cut(tmp / "cut_jpeg" / "candle" / "Data" / "Images" / "Normal" / "test001.JPG")
    make_mvtec(tmp / "bad_mask")
    (tmp / "bad_mask" / "bottle" / "ground_truth" / "scratch" / "001_mask.png").write_bytes(b"")
    make_manifest(tmp / "null_mask")
    lines = (tmp / "null_mask" / "manifest.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    for r in recs:
        if r["image"].endswith("liver_bad0.png"):
            r["mask"] = None
    (tmp / "null_mask" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    make_manifest(tmp / "lost")
    (tmp / "lost" / "img" / "brain_ok1.png").unlink()
    good_line = json.dumps({"image": "good/bottle/train/good/000.png", "class": "bottle", "label": 0, "mask": None})
    (tmp / "not_json.jsonl").write_text(good_line + "\n\n{'image': 'x.png'}\n")
    (tmp / "label_two.jsonl").write_text(good_line.replace('"label": 0', '"label": 2') + "\n")
    (tmp / "extra_key.jsonl").write_text(good_line.replace('"label": 0', '"label": 0, "labels": 1') + "\n")
    make_visa(tmp / "visa_bad_label")
    csv_path = tmp / "visa_bad_label" / "split_csv" / "1cls.csv"
    csv_path.write_text(csv_path.read_text().replace(",normal,", ",good,", 1))
    return tmp


def test_the_table_covers_the_brief():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("label, spec_text, argv, field, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_data_is_refused_before_anything_is_written(capsys, workdir, label, spec_text, argv, field, fragment):
    db = workdir / "results.db"

    def filled(s: str) -> str:
        return s.replace("{tmp}", str(workdir))

    spec = workdir / "case.toml"
    spec.write_text(filled(spec_text))
    args = ["study", "run", str(spec), "--storage", f"sqlite:///{db}", "--quiet", *(filled(a) for a in argv)]
    line = refused_line(capsys, db, args)
    assert line.startswith(f"error: {field}:"), line
    assert fragment in line, line
    assert not (workdir / "plots").exists()
