"""Synthetic dataset, resumable sampler and label/image PNG I/O."""
import itertools

import pytest
import torch

from semgan_fast.data import ResumableSampler, SyntheticScenes, collate
from semgan_fast.data.synthetic import ClassRoles
from semgan_fast.imageio import label_palette, load_label_map, save_label_map


@pytest.mark.parametrize("num_classes", [2, 3, 8, 35])
def test_synthetic_is_deterministic_and_in_range(num_classes):
    a = SyntheticScenes(num_classes, 32, 48, num_samples=5, seed=3)
    b = SyntheticScenes(num_classes, 32, 48, num_samples=5, seed=3)
    for i in range(5):
        x, y = a[i], b[i]
        assert torch.equal(x["label"], y["label"]) and torch.equal(x["image"], y["image"])
        assert x["label"].dtype == torch.int64 and x["label"].shape == (32, 48)
        assert 0 <= int(x["label"].min()) and int(x["label"].max()) < num_classes
        assert x["image"].shape == (3, 32, 48) and float(x["image"].abs().max()) <= 1.0
    assert not torch.equal(a[0]["label"], SyntheticScenes(num_classes, 32, 48, 5, seed=4)[0]["label"])


def test_synthetic_has_all_three_kinds_of_structure():
    ds = SyntheticScenes(8, 64, 128, num_samples=16, seed=0)
    roles = ClassRoles.for_classes(8)
    seen = torch.zeros(8, dtype=torch.long)
    for i in range(16):
        seen += torch.bincount(ds[i]["label"].flatten(), minlength=8)
    total = seen.sum()
    assert all(seen[c] > 0 for c in roles.large + roles.mid + roles.thin)
    # Large regions dominate; thin/small objects are a small fraction of pixels.
    assert seen[list(roles.large)].sum() > 0.5 * total
    assert seen[list(roles.thin)].sum() < 0.1 * total


def test_synthetic_image_depends_on_class():
    ds = SyntheticScenes(8, 64, 128, num_samples=8, seed=0)
    means = {}
    for i in range(8):
        item = ds[i]
        for c in item["label"].unique().tolist():
            means.setdefault(c, []).append(item["image"][:, item["label"] == c].mean(1))
    centroids = torch.stack([torch.stack(v).mean(0) for v in means.values()])
    assert torch.cdist(centroids, centroids).add(torch.eye(len(centroids)) * 10).min() > 0.05


def test_flip_is_consistent():
    ds = SyntheticScenes(5, 16, 24, num_samples=2)
    a, b = ds[1], ds[(1, True)]
    assert torch.equal(a["label"].flip(-1), b["label"]) and torch.equal(a["image"].flip(-1), b["image"])
    assert torch.equal(a["instance"].flip(-1), b["instance"])


def test_sampler_resumes_exactly_and_covers_epochs():
    full = list(itertools.islice(iter(ResumableSampler(10, seed=1)), 35))
    tail = list(itertools.islice(iter(ResumableSampler(10, seed=1, start=13)), 22))
    assert full[13:] == tail
    assert sorted(i for i, _ in full[:10]) == list(range(10))
    assert any(f for _, f in full) and not any(f for _, f in itertools.islice(iter(ResumableSampler(10, 1, flip=False)), 30))


def test_collate_stacks():
    ds = SyntheticScenes(4, 16, 16, num_samples=3)
    batch = collate([ds[0], ds[1]])
    assert batch["label"].shape == (2, 16, 16) and batch["image"].shape == (2, 3, 16, 16) and batch["index"] == [0, 1]


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticScenes(1)
    with pytest.raises(ValueError, match="height and width"):
        SyntheticScenes(4, 4, 4)


def test_label_png_round_trip_and_errors(tmp_path):
    labels = torch.randint(0, 200, (9, 13))
    path = str(tmp_path / "l.png")
    save_label_map(labels, path)
    assert torch.equal(load_label_map(path), labels)
    with pytest.raises(ValueError, match="outside"):
        load_label_map(path, num_classes=10)
    with pytest.raises(ValueError, match="does not exist"):
        load_label_map(str(tmp_path / "missing.png"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="could not be read"):
        load_label_map(str(tmp_path / "bad.png"))
    assert len({tuple(c) for c in label_palette(64).tolist()}) == 64
