"""Real-dataset loaders on tiny fake trees in their usual layouts."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from semgan_fast.config import DataConfig, LGGANConfig
from semgan_fast.data import build_dataset
from semgan_fast.data.real import ADE20K, Cityscapes, COCOStuff


def _png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_cityscapes_pairs_resizes_and_flips(tmp_path):
    root = str(tmp_path)
    label = np.zeros((16, 32), np.uint8)
    label[:, 16:] = 26
    for i, city in enumerate(["aachen", "bonn"]):
        stem = f"{city}_000000_00001{i}"
        _png(f"{root}/leftImg8bit/train/{city}/{stem}_leftImg8bit.png", _rgb(16, 32, i))
        _png(f"{root}/gtFine/train/{city}/{stem}_gtFine_labelIds.png", label)
        _png(f"{root}/gtFine/train/{city}/{stem}_gtFine_instanceIds.png", (label.astype(np.int32) * 1000).astype(np.uint16))
    ds = build_dataset(DataConfig(dataset="cityscapes", root=root), LGGANConfig(num_classes=35, height=8, width=16))
    assert isinstance(ds, Cityscapes) and len(ds) == 2
    item = ds[0]
    assert item["label"].shape == (8, 16) and item["image"].shape == (3, 8, 16)
    assert set(item["label"].unique().tolist()) == {0, 26}
    flipped = ds[(0, True)]
    assert torch.equal(flipped["label"], item["label"].flip(-1)) and torch.equal(flipped["image"], item["image"].flip(-1))


def test_cityscapes_missing_label_names_the_file(tmp_path):
    root = str(tmp_path)
    _png(f"{root}/leftImg8bit/train/x/x_0_1_leftImg8bit.png", _rgb(4, 4, 0))
    os.makedirs(f"{root}/gtFine/train/x")
    with pytest.raises(ValueError, match="x_0_1_leftImg8bit.png.*no matching"):
        Cityscapes(root, height=4, width=4)
    with pytest.raises(ValueError, match="does not exist"):
        Cityscapes(str(tmp_path / "nowhere"))


def test_ade20k_remaps_unknown_to_last_channel(tmp_path):
    root = str(tmp_path)
    img = Image.fromarray(_rgb(8, 8, 1))
    os.makedirs(f"{root}/images/training")
    img.save(f"{root}/images/training/a.jpg")
    label = np.array([[0, 1], [150, 2]], np.uint8).repeat(4, 0).repeat(4, 1)
    _png(f"{root}/annotations/training/a.png", label)
    item = ADE20K(root, height=8, width=8)[0]
    assert item["label"][0, 0] == 150 and item["label"][0, 4] == 0 and item["label"][4, 0] == 149


def test_coco_stuff_unlabeled_and_out_of_range(tmp_path):
    root = str(tmp_path)
    os.makedirs(f"{root}/train_img")
    Image.fromarray(_rgb(4, 4, 2)).save(f"{root}/train_img/b.jpg")
    _png(f"{root}/train_label/b.png", np.array([[255, 3], [181, 0]], np.uint8).repeat(2, 0).repeat(2, 1))
    item = COCOStuff(root, height=4, width=4)[0]
    assert item["label"][0, 0] == 182 and item["label"][2, 0] == 181
    _png(f"{root}/train_label/b.png", np.full((4, 4), 200, np.uint8))
    with pytest.raises(ValueError, match="b.png.*outside"):
        COCOStuff(root, height=4, width=4)[0]


def test_real_dataset_needs_root():
    with pytest.raises(ValueError, match="--data-root"):
        build_dataset(DataConfig(dataset="ade20k"), LGGANConfig())


def _cityscapes_tree(root, n=3, corrupt=None):
    label = np.zeros((8, 16), np.uint8)
    label[:, 8:] = 7
    for i in range(n):
        stem = f"c_000000_00000{i}"
        _png(f"{root}/leftImg8bit/train/c/{stem}_leftImg8bit.png", _rgb(8, 16, i))
        _png(f"{root}/gtFine/train/c/{stem}_gtFine_labelIds.png", label)
        _png(f"{root}/gtFine/train/c/{stem}_gtFine_instanceIds.png", label.astype(np.uint16))
    if corrupt is not None:
        with open(f"{root}/leftImg8bit/train/c/c_000000_00000{corrupt}_leftImg8bit.png", "wb") as f:
            f.write(b"truncated")


def test_data_check_reports_counts_histogram_and_problems(tmp_path, capsys):
    from semgan_fast.cli import main

    _cityscapes_tree(str(tmp_path), n=3, corrupt=1)
    assert main(["data", "check", str(tmp_path), "--preset", "cityscapes"]) == 1
    out = capsys.readouterr().out
    assert "items checked: 3   readable: 2   problems: 1" in out
    assert "c_000000_000001_leftImg8bit.png" in out and "could not be read" in out
    assert "classes present: 2 of 35" in out
    _cityscapes_tree(str(tmp_path), n=3)
    assert main(["data", "check", str(tmp_path), "--preset", "cityscapes"]) == 0


def test_skip_bad_items_warns_and_substitutes(tmp_path):
    from semgan_fast.data.check import SkipBadItems

    _cityscapes_tree(str(tmp_path), n=3, corrupt=1)
    cfg = DataConfig(dataset="cityscapes", root=str(tmp_path), skip_bad=True)
    ds = build_dataset(cfg, LGGANConfig(num_classes=35, height=8, width=16))
    assert isinstance(ds, SkipBadItems)
    with pytest.warns(UserWarning, match="skipping sample 1"):
        item = ds[1]
    assert item["index"] == 2
    with pytest.raises(ValueError, match="could not be read"):
        build_dataset(DataConfig(dataset="cityscapes", root=str(tmp_path)), LGGANConfig(height=8, width=16))[1]


def test_precomputed_edges_are_loaded_and_flipped(tmp_path):
    root, edges = tmp_path / "data", tmp_path / "edges"
    _cityscapes_tree(str(root), n=1)
    edge = np.zeros((8, 16), np.uint8)
    edge[:, 3] = 255
    _png(str(edges / "c_000000_000000_leftImg8bit.png"), edge)
    cfg = DataConfig(dataset="cityscapes", root=str(root), edge_root=str(edges))
    ds = build_dataset(cfg, LGGANConfig(num_classes=35, height=8, width=16))
    item, flipped = ds[0], ds[(0, True)]
    assert item["edge"].shape == (3, 8, 16)
    assert float(item["edge"][0, 0, 3]) == 1.0 and float(item["edge"][0, 0, 0]) == -1.0
    assert torch.equal(flipped["edge"], item["edge"].flip(-1))
    os.remove(edges / "c_000000_000000_leftImg8bit.png")
    with pytest.raises(ValueError, match="edge map .* does not exist"):
        ds[0]
