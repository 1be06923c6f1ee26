"""Procedural label->image dataset, the embedded default for `semgan train`.

Each sample is generated from (seed, index) alone, so the dataset is deterministic and needs no
files. A label map of K classes holds three kinds of structure, mirroring street scenes:

- large regions: horizontal bands with wavy boundaries (sky / buildings / road-like),
- mid-size objects: filled ellipses and rectangles (cars, people),
- thin or small objects: one- or two-pixel-wide vertical poles and small discs (poles, signs).

The image colours every pixel by its class: a fixed per-class base colour plus a per-class oriented
sinusoidal texture and a little noise, so the mapping label -> image is learnable but not trivial.
The instance map gives every object its own id (regions share one id per class), from which the
instance-edge channel is computed. With ``with_edges=True`` items also hold "edge": the Canny edges
of the (flipped) image (``semgan_fast.edges.canny``, ECGAN's ground-truth edges).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClassRoles:
    """Partition of class ids into large-region, mid-object and thin/small-object classes."""
    large: tuple[int, ...]
    mid: tuple[int, ...]
    thin: tuple[int, ...]

    @staticmethod
    def for_classes(num_classes: int) -> "ClassRoles":
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for the synthetic dataset, got {num_classes}")
        n_large = max(2, num_classes // 3) if num_classes >= 3 else 1
        n_large = min(n_large, num_classes - 1)
        rest = list(range(n_large, num_classes))
        n_mid = max(1, (len(rest) + 1) // 2)
        mid, thin = rest[:n_mid], rest[n_mid:]
        return ClassRoles(tuple(range(n_large)), tuple(mid), tuple(thin) or tuple(mid))


def _class_appearance(num_classes: int, seed: int):
    """Per-class base colour [K,3] in [-0.8,0.8], texture angle [K], frequency [K], amplitude [K]."""
    g = torch.Generator().manual_seed(10_007 * seed + 17)
    colour = torch.rand(num_classes, 3, generator=g) * 1.6 - 0.8
    angle = torch.rand(num_classes, generator=g) * math.pi
    freq = 0.15 + torch.rand(num_classes, generator=g) * 0.6
    amp = 0.05 + torch.rand(num_classes, generator=g) * 0.2
    return colour, angle, freq, amp


class SyntheticScenes(torch.utils.data.Dataset):
    """Deterministic procedural scenes (``index_offset``: item i is scene i + index_offset, see ``__init__``).

    Items (``__getitem__(index)`` or ``__getitem__((index, flip))``) are dicts:
        label:    int64 [H, W], class ids in [0, num_classes)
        image:    float32 [3, H, W] in [-1, 1]
        instance: int64 [H, W], instance ids (objects unique, regions one id per class)
        index:    int
        edge:     float32 [1, H, W] in {0, 1}, Canny edges of the image (only with ``with_edges=True``)
    """

    def __init__(self, num_classes: int = 8, height: int = 64, width: int = 128, num_samples: int = 64,
                 seed: int = 0, with_edges: bool = False, index_offset: int = 0):
        if height < 8 or width < 8:
            raise ValueError(f"height and width must be >= 8, got {height}x{width}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_classes, self.height, self.width = num_classes, height, width
        if index_offset < 0:
            raise ValueError(f"index_offset must be >= 0, got {index_offset}")
        self.num_samples, self.seed = num_samples, seed
        # Item i is scene i + index_offset of the seed's stream: the validation split of a data set of N
        # samples is the next N scenes (offset N), same classes and appearance, disjoint layouts.
        self.index_offset = index_offset
        self.with_edges = with_edges
        self.roles = ClassRoles.for_classes(num_classes)
        self.appearance = _class_appearance(num_classes, seed)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        label, instance = self.layout(index + self.index_offset)
        image = self.render(label, index + self.index_offset)
        if flip:
            label, instance, image = label.flip(-1), instance.flip(-1), image.flip(-1)
        item = {"label": label, "image": image, "instance": instance, "index": index}
        if self.with_edges:
            from ..edges import canny

            item["edge"] = canny(image.unsqueeze(0))[0].to(torch.float32)
        return item

    def _rng(self, index: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(((self.seed * 1_000_003 + index) * 7 + stream) & 0x7FFF_FFFF_FFFF)

    def layout(self, index: int):
        """Label map and instance map [H, W] int64 for one sample."""
        h, w, roles = self.height, self.width, self.roles
        g = self._rng(index, 0)
        ys = torch.arange(h, dtype=torch.float32).view(h, 1)
        xs = torch.arange(w, dtype=torch.float32).view(1, w)
        # Large regions: bands stacked top to bottom, boundaries wavy.
        order = torch.randperm(len(roles.large), generator=g).tolist()
        large = [roles.large[i] for i in order]
        cuts = torch.sort(torch.rand(len(large) - 1, generator=g) * 0.6 + 0.2).values * h
        label = torch.full((h, w), large[0], dtype=torch.int64)
        for j, cut in enumerate(cuts.tolist()):
            amp, freq, phase = (torch.rand(3, generator=g) * torch.tensor([0.08 * h, 0.1, 2 * math.pi])).tolist()
            boundary = cut + amp * torch.sin(freq * xs + phase)
            label = torch.where(ys >= boundary, torch.tensor(large[j + 1]), label)
        instance = label * 1000
        next_id = 1
        # Mid-size objects: ellipses and rectangles.
        for _ in range(int(torch.randint(2, 6, (1,), generator=g))):
            cls = roles.mid[int(torch.randint(len(roles.mid), (1,), generator=g))]
            cy, cx = float(torch.rand(1, generator=g)) * h, float(torch.rand(1, generator=g)) * w
            ry = (0.08 + 0.15 * float(torch.rand(1, generator=g))) * h
            rx = (0.08 + 0.15 * float(torch.rand(1, generator=g))) * w * h / w
            if bool(torch.rand(1, generator=g) < 0.5):
                mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
            else:
                mask = ((ys - cy).abs() <= ry) & ((xs - cx).abs() <= rx)
            label, instance = torch.where(mask, cls, label), torch.where(mask, next_id, instance)
            next_id += 1
        # Thin and small objects: poles (1-2 px wide) and small discs.
        for _ in range(int(torch.randint(2, 7, (1,), generator=g))):
            cls = roles.thin[int(torch.randint(len(roles.thin), (1,), generator=g))]
            if bool(torch.rand(1, generator=g) < 0.5):
                x0 = int(torch.randint(w, (1,), generator=g))
                width_px = int(torch.randint(1, 3, (1,), generator=g))
                top = int(torch.randint(h // 2, (1,), generator=g))
                length = int(h * (0.3 + 0.3 * float(torch.rand(1, generator=g))))
                mask = (xs >= x0) & (xs < x0 + width_px) & (ys >= top) & (ys < top + length)
            else:
                cy, cx = float(torch.rand(1, generator=g)) * h, float(torch.rand(1, generator=g)) * w
                radius = 1.0 + 2.0 * float(torch.rand(1, generator=g))
                mask = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2
            label, instance = torch.where(mask, cls, label), torch.where(mask, next_id, instance)
            next_id += 1
        return label, instance

    def render(self, label: torch.Tensor, index: int) -> torch.Tensor:
        """Image [3, H, W] float32 in [-1, 1] for a label map."""
        colour, angle, freq, amp = self.appearance
        h, w = label.shape
        ys = torch.arange(h, dtype=torch.float32).view(h, 1)
        xs = torch.arange(w, dtype=torch.float32).view(1, w)
        a, f, m = angle[label], freq[label], amp[label]
        texture = m * torch.sin(f * (xs * torch.cos(a) + ys * torch.sin(a)))
        noise = 0.03 * torch.randn(3, h, w, generator=self._rng(index, 1))
        image = colour[label].permute(2, 0, 1) + texture.unsqueeze(0) + noise
        return image.clamp(-1.0, 1.0)
