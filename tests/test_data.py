import torch

from ablate.subjects.aaclip.data.synthetic import TEXTURE_CLASSES, SyntheticAnomalyDataset
from ablate.subjects.aaclip.prompts import class_prompts


def test_same_seed_same_images_and_masks():
    a, b = SyntheticAnomalyDataset(64, seed=3), SyntheticAnomalyDataset(64, seed=3)
    for i in range(6):
        ia, ma, la, ca, _ = a.sample(i)
        ib, mb, lb, cb, _ = b.sample(i)
        assert torch.equal(ia, ib) and torch.equal(ma, mb) and (la, ca) == (lb, cb)
    assert not torch.equal(a.sample(0)[0], SyntheticAnomalyDataset(64, seed=4).sample(0)[0])


def test_about_half_defective_with_exact_masks():
    ds = SyntheticAnomalyDataset(64, seed=0)
    labels, kinds = [], set()
    for i in range(200):
        img, mask, label, cls, kind = ds.sample(i)
        assert img.shape == (3, 64, 64) and mask.shape == (64, 64)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        # A label is 1 exactly when the mask marks pixels, and the mask never covers everything.
        assert bool(mask.any()) == bool(label)
        assert mask.mean() < 0.5
        assert ds.classes[cls] in TEXTURE_CLASSES
        labels.append(label)
        kinds.add(kind)
    assert 0.35 < sum(labels) / len(labels) < 0.65
    assert kinds == {"", "scratch", "spot", "crack", "blotch"}


def test_defect_pixels_differ_from_texture():
    ds = SyntheticAnomalyDataset(64, seed=0)
    clean = SyntheticAnomalyDataset(64, seed=0, anomaly_fraction=0.0)
    for i in range(40):
        img, mask, label, *_ = ds.sample(i)
        if label:
            ref = clean.sample(i)[0]
            m = mask.bool()
            assert torch.equal(img[:, ~m], ref[:, ~m])  # untouched outside the mask
            assert not torch.equal(img[:, m], ref[:, m])
            return
    raise AssertionError("no defective sample in 40")


def test_prompts_are_sixteen_per_class():
    normal, abnormal = class_prompts("wood")
    assert len(normal) == 6 and len(abnormal) == 10
    assert "a photo of a damaged wood." in abnormal and "wood." in normal
