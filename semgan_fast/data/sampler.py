"""A sampler whose whole order is a function of (seed, position), so training resumes exactly."""
from __future__ import annotations

import torch


class ResumableSampler(torch.utils.data.Sampler):
    """Yields ``(index, flip)`` pairs: per-epoch random permutations and random horizontal flips.

    The i-th item drawn overall depends only on (seed, i), so starting at ``start`` reproduces the
    exact continuation of an uninterrupted run. Infinite: the trainer decides when to stop.
    """

    def __init__(self, num_samples: int, seed: int = 0, flip: bool = True, start: int = 0):
        self.num_samples, self.seed, self.flip, self.start = num_samples, seed, flip, start

    def item(self, position: int) -> tuple[int, bool]:
        epoch, offset = divmod(position, self.num_samples)
        g = torch.Generator().manual_seed(self.seed * 1_000_033 + epoch)
        perm = torch.randperm(self.num_samples, generator=g)
        flips = torch.rand(self.num_samples, generator=g) < 0.5
        return int(perm[offset]), bool(flips[offset]) and self.flip

    def __iter__(self):
        position = self.start
        while True:
            epoch, offset = divmod(position, self.num_samples)
            g = torch.Generator().manual_seed(self.seed * 1_000_033 + epoch)
            perm = torch.randperm(self.num_samples, generator=g).tolist()
            flips = (torch.rand(self.num_samples, generator=g) < 0.5).tolist()
            for i in range(offset, self.num_samples):
                yield perm[i], flips[i] and self.flip
            position = (epoch + 1) * self.num_samples


def collate(items: list[dict]) -> dict:
    """Stack a list of dataset items into a batch dict of tensors (and a list of indices)."""
    batch = {key: torch.stack([it[key] for it in items]) for key in ("label", "image", "instance") if key in items[0]}
    batch["index"] = [it["index"] for it in items]
    return batch
