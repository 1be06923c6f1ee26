"""Dataset health: ``SkipBadItems`` (skip unreadable samples with a warning) and ``check_dataset``
(counts, class histogram and every problem found), behind ``semgan data check``."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch


class SkipBadItems(torch.utils.data.Dataset):
    """Wraps a dataset: an item that raises ValueError (missing, unreadable or mismatched file) is
    replaced by the next readable one, with a warning naming the problem. Never silent: every skip
    warns, and a dataset with no readable item raises."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        for offset in range(len(self.dataset)):
            candidate = (index + offset) % len(self.dataset)
            try:
                return self.dataset[(candidate, flip)]
            except ValueError as exc:
                warnings.warn(f"skipping sample {candidate}: {exc}")
        raise ValueError("no readable sample in the dataset")


@dataclass
class CheckReport:
    num_items: int = 0
    num_ok: int = 0
    class_pixels: list[int] = field(default_factory=list)       # pixels per class over the checked items
    class_images: list[int] = field(default_factory=list)       # items in which each class occurs
    problems: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)         # label map size "HxW" -> count

    def to_text(self, top: int = 10) -> str:
        lines = [f"items checked: {self.num_items}   readable: {self.num_ok}   problems: {len(self.problems)}"]
        total = max(sum(self.class_pixels), 1)
        present = [k for k, n in enumerate(self.class_pixels) if n]
        lines.append(f"classes present: {len(present)} of {len(self.class_pixels)}")
        absent = [k for k, n in enumerate(self.class_pixels) if not n]
        if absent:
            lines.append(f"classes never present: {absent}")
        lines.append("class   pixels%   images")
        for k in sorted(present, key=lambda k: -self.class_pixels[k]):
            lines.append(f"{k:5d}   {100 * self.class_pixels[k] / total:7.3f}   {self.class_images[k]:6d}")
        lines.append("sizes: " + ", ".join(f"{s} x{n}" for s, n in sorted(self.sizes.items())))
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def check_dataset(dataset, num_classes: int, limit: int | None = None) -> CheckReport:
    """Reads every item (or the first ``limit``); collects problems instead of stopping at the first."""
    report = CheckReport(class_pixels=[0] * num_classes, class_images=[0] * num_classes)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    pixels = torch.zeros(num_classes, dtype=torch.long)
    images = torch.zeros(num_classes, dtype=torch.long)
    for index in range(count):
        report.num_items += 1
        try:
            item = dataset[index]
        except ValueError as exc:
            report.problems.append(f"item {index}: {exc}")
            continue
        labels, image = item["label"], item["image"]
        if labels.shape != image.shape[-2:]:
            report.problems.append(f"item {index}: label size {tuple(labels.shape)} != image size "
                                   f"{tuple(image.shape[-2:])}")
            continue
        if not bool(torch.isfinite(image).all()):
            report.problems.append(f"item {index}: image holds NaN or infinity")
            continue
        counts = torch.bincount(labels.flatten(), minlength=num_classes)[:num_classes]
        pixels += counts
        images += (counts > 0).long()
        size = f"{labels.shape[0]}x{labels.shape[1]}"
        report.sizes[size] = report.sizes.get(size, 0) + 1
        report.num_ok += 1
    report.class_pixels, report.class_images = pixels.tolist(), images.tolist()
    return report
