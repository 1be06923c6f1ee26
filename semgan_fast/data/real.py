"""Real dataset loaders in their usual directory layouts (Cityscapes, ADE20K, COCO-Stuff).

Every loader pairs files by name, resizes labels (and instance maps) with nearest and images with
bicubic to the model's resolution, and yields the same item dict as ``SyntheticScenes``. Missing,
unreadable or mismatched files raise ``ValueError`` naming the file.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import torch
from PIL import Image

from ..imageio import load_label_map


def _load_rgb(path: str, size: tuple[int, int]) -> torch.Tensor:
    """RGB image -> float32 [3, H, W] in [-1, 1] at size (H, W), bicubic."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
            arr = np.asarray(img, dtype=np.float32)
    except Exception as exc:
        raise ValueError(f"image {path!r} could not be read: {exc}") from exc
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


def _resize_nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(labels.shape) == size:
        return labels
    return torch.nn.functional.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].long()


class PairedLabelImageDataset(torch.utils.data.Dataset):
    """Base: a list of (image, label, instance-or-None) paths and a label remapping."""

    def __init__(self, triples: list[tuple[str, str, str | None]], num_classes: int, height: int, width: int):
        if not triples:
            raise ValueError("no (image, label) pairs found")
        self.triples, self.num_classes, self.size = triples, num_classes, (height, width)
        # Precomputed ground-truth edges (``semgan edges`` output: <edge_dir>/<image stem>.png), or None.
        self.edge_dir: str | None = None

    def __len__(self) -> int:
        return len(self.triples)

    def remap(self, labels: torch.Tensor) -> torch.Tensor:
        return labels

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        image_path, label_path, instance_path = self.triples[index]
        labels = self.remap(load_label_map(label_path))
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"label map {label_path!r} holds ids outside [0, {self.num_classes}) after remapping")
        labels = _resize_nearest(labels, self.size)
        instance = _resize_nearest(load_label_map(instance_path), self.size) if instance_path else labels.clone()
        image = _load_rgb(image_path, self.size)
        item = {"label": labels, "image": image, "instance": instance, "index": index}
        if self.edge_dir is not None:
            item["edge"] = self._load_edge(image_path)
        if flip:
            item.update({k: item[k].flip(-1) for k in ("label", "image", "instance", "edge") if k in item})
        return item

    def _load_edge(self, image_path: str) -> torch.Tensor:
        """Edge map [3, H, W] in [-1, 1] (grey 0..255 read as RGB, as the public ECGAN loader does)."""
        path = os.path.join(self.edge_dir, os.path.splitext(os.path.basename(image_path))[0] + ".png")
        if not os.path.isfile(path):
            raise ValueError(f"edge map {path!r} for image {image_path!r} does not exist")
        return _load_rgb(path, self.size)


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise ValueError(f"{what} directory {path!r} does not exist")


class Cityscapes(PairedLabelImageDataset):
    """``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``root/gtFine/<split>/<city>/
    *_gtFine_labelIds.png`` and ``*_gtFine_instanceIds.png``; 35 label channels, paired by the first
    three ``_`` tokens of the file name."""

    def __init__(self, root: str, split: str = "train", num_classes: int = 35, height: int = 256, width: int = 512):
        image_dir, label_dir = os.path.join(root, "leftImg8bit", split), os.path.join(root, "gtFine", split)
        _require_dir(image_dir, "Cityscapes image")
        _require_dir(label_dir, "Cityscapes label")
        labels = {"_".join(os.path.basename(p).split("_")[:3]): p
                  for p in glob.glob(os.path.join(label_dir, "*", "*_gtFine_labelIds.png"))}
        triples = []
        for image_path in sorted(glob.glob(os.path.join(image_dir, "*", "*_leftImg8bit.png"))):
            key = "_".join(os.path.basename(image_path).split("_")[:3])
            if key not in labels:
                raise ValueError(f"image {image_path!r} has no matching *_gtFine_labelIds.png under {label_dir!r}")
            instance = labels[key].replace("_labelIds.png", "_instanceIds.png")
            if not os.path.isfile(instance):
                raise ValueError(f"instance map {instance!r} is missing")
            triples.append((image_path, labels[key], instance))
        super().__init__(triples, num_classes, height, width)


class ADE20K(PairedLabelImageDataset):
    """ADEChallengeData2016: ``root/images/<training|validation>/*.jpg`` and ``root/annotations/...png``.
    Label 0 ("unknown") becomes channel 150, ids 1..150 become 0..149 (151 channels)."""

    def __init__(self, root: str, split: str = "training", num_classes: int = 151, height: int = 256, width: int = 256):
        image_dir, label_dir = os.path.join(root, "images", split), os.path.join(root, "annotations", split)
        _require_dir(image_dir, "ADE20K image")
        _require_dir(label_dir, "ADE20K annotation")
        triples = []
        for image_path in sorted(glob.glob(os.path.join(image_dir, "*.jpg"))):
            label_path = os.path.join(label_dir, os.path.splitext(os.path.basename(image_path))[0] + ".png")
            if not os.path.isfile(label_path):
                raise ValueError(f"image {image_path!r} has no annotation {label_path!r}")
            triples.append((image_path, label_path, None))
        super().__init__(triples, num_classes, height, width)

    def remap(self, labels):
        return torch.where(labels == 0, self.num_classes - 1, labels - 1)


class COCOStuff(PairedLabelImageDataset):
    """``root/<split>_img/*.jpg``, ``root/<split>_label/*.png``, ``root/<split>_inst/*.png`` (SPADE layout);
    ids 0..181, 255 ("unlabeled") becomes channel 182 (183 channels in all)."""

    def __init__(self, root: str, split: str = "train", num_classes: int = 183, height: int = 256, width: int = 256):
        image_dir, label_dir = os.path.join(root, f"{split}_img"), os.path.join(root, f"{split}_label")
        inst_dir = os.path.join(root, f"{split}_inst")
        _require_dir(image_dir, "COCO-Stuff image")
        _require_dir(label_dir, "COCO-Stuff label")
        triples = []
        for image_path in sorted(glob.glob(os.path.join(image_dir, "*.jpg"))):
            stem = os.path.splitext(os.path.basename(image_path))[0]
            label_path = os.path.join(label_dir, stem + ".png")
            if not os.path.isfile(label_path):
                raise ValueError(f"image {image_path!r} has no label map {label_path!r}")
            inst_path = os.path.join(inst_dir, stem + ".png")
            triples.append((image_path, label_path, inst_path if os.path.isfile(inst_path) else None))
        super().__init__(triples, num_classes, height, width)

    def remap(self, labels):
        return torch.where(labels == 255, self.num_classes - 1, labels)
