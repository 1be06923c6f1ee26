"""A sampler whose whole order is a function of (seed, position), so training resumes exactly."""
from __future__ import annotations

import torch


class ResumableSampler(torch.utils.data.Sampler):
    """Yields ``(index, flip)`` pairs: per-epoch random permutations and random horizontal flips.

    The i-th item drawn overall depends only on (seed, i), so starting at ``start`` reproduces the
    exact continuation of an uninterrupted run. Infinite: the trainer decides when to stop.

    Distributed: with ``world_size`` ranks and a per-rank batch of ``batch_size``, the global batch of
    step s is positions [s*B*W, (s+1)*B*W) of the global order and rank r takes its r-th slice of B
    items; the union over ranks equals a single-process run with batch B*W. ``start`` counts global
    positions and must be a multiple of B*W.
    """

    def __init__(self, num_samples: int, seed: int = 0, flip: bool = True, start: int = 0,
                 rank: int = 0, world_size: int = 1, batch_size: int = 1):
        if world_size > 1 and start % (batch_size * world_size):
            raise ValueError(f"start={start} must be a multiple of batch_size*world_size={batch_size * world_size}")
        self.num_samples, self.seed, self.flip, self.start = num_samples, seed, flip, start
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size

    def item(self, position: int) -> tuple[int, bool]:
        epoch, offset = divmod(position, self.num_samples)
        g = torch.Generator().manual_seed(self.seed * 1_000_033 + epoch)
        perm = torch.randperm(self.num_samples, generator=g)
        flips = torch.rand(self.num_samples, generator=g) < 0.5
        return int(perm[offset]), bool(flips[offset]) and self.flip

    def __iter__(self):
        if self.world_size > 1:
            yield from self._iter_rank()
            return
        position = self.start
        while True:
            epoch, offset = divmod(position, self.num_samples)
            g = torch.Generator().manual_seed(self.seed * 1_000_033 + epoch)
            perm = torch.randperm(self.num_samples, generator=g).tolist()
            flips = (torch.rand(self.num_samples, generator=g) < 0.5).tolist()
            for i in range(offset, self.num_samples):
                yield perm[i], flips[i] and self.flip
            position = (epoch + 1) * self.num_samples

    def _iter_rank(self):
        step_span = self.batch_size * self.world_size
        position = self.start
        while True:
            first = position + self.rank * self.batch_size
            for i in range(first, first + self.batch_size):
                yield self.item(i)
            position += step_span


# Per-item tensors stacked into batches: "edge" (ECGAN's Canny edges), "source" (cross-view source view).
STACKED_KEYS = ("label", "image", "instance", "edge", "source")


def collate(items: list[dict]) -> dict:
    """Stack dataset items into a batch: label, image and, when present, instance, edge and source
    [B, ...] tensors; "index" stays a list."""
    batch = {key: torch.stack([it[key] for it in items]) for key in STACKED_KEYS if key in items[0]}
    batch["index"] = [it["index"] for it in items]
    return batch
