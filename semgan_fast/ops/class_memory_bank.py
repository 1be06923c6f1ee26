"""``ClassMemoryBank``: per-class ring buffers of pixel and segment-mean embeddings (ContrastiveSeg's
memory variant, ``loss_contrast_mem.py`` + ``trainer_contrastive.py`` enqueue), usable as the contrast
set of ``pixel_contrast_loss``.

Per push (one batch of embeddings [B, D, h, w] and labels):
- pixel queue: for every (image, class) present, up to ``pixels_per_image`` random pixels **of that
  class** (ContrastiveSeg draws from all pixels of the image, a bug);
- segment queue: for every (image, class) present, the mean embedding of the class's pixels;
- entries are L2-normalised (``normalize=True``, as ContrastiveSeg) and written class by class at
  ``ptr[c], ptr[c] + 1, ...`` modulo ``size``; ``ptr[c]`` advances by the number of entries written
  (ContrastiveSeg advances the pixel pointer by 1 instead of K, issue #55) and writes that pass the end
  wrap to the start (ContrastiveSeg overwrites the queue tail instead, issue #31). If one push brings
  more than ``size`` entries for a class, only its last ``size`` are kept (no slot is written twice).
  Entries of a class are ordered by image, then randomly.

Everything runs on the device with static shapes and no host synchronisation: one sort of the pixels
by (image, class, random key) picks the pixels; masked-out writes go to a scratch row (the last row
of the flat buffers) so ``index_copy_`` needs no data-dependent shapes.

Unfilled slots are reported with label -1 by ``contrast_set`` (ContrastiveSeg instead starts from
random unit vectors that count as real entries); ``pixel_contrast_loss`` ignores them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_float, check_labels, check_same_device
from .sample_anchors import _downsample_to, group_sort

KINDS = ("pixel", "segment", "both")


def ring_write(queue: Tensor, ptr: Tensor, filled: Tensor, values: Tensor, cls: Tensor, offset: Tensor,
               per_class: Tensor, valid: Tensor) -> None:
    """Write entries into per-class ring buffers, in place.

    Args:
        queue: flat storage [C * S + 1, D]; row C * S is scratch for masked-out entries.
        ptr, filled: [C] int64 next write position and number of filled slots per class (updated).
        values: [E, D] entries. cls: [E] class of each entry. offset: [E] position of the entry among
            this push's entries of its class (0 .. per_class[c] - 1 for valid entries).
        per_class: [C] number of valid entries per class in this push. valid: [E] bool.
    """
    num_classes = ptr.shape[0]
    size = (queue.shape[0] - 1) // num_classes
    cls = cls.clamp(0, num_classes - 1)
    # Only the last `size` entries of a class survive, so no two kept entries share a slot.
    keep = valid & (offset >= per_class[cls] - size)
    slot = torch.remainder(ptr[cls] + offset, size)
    dest = torch.where(keep, cls * size + slot, torch.full_like(slot, num_classes * size))
    queue.index_copy_(0, dest, values.to(queue.dtype))
    ptr.copy_(torch.remainder(ptr + per_class, size))
    filled.copy_((filled + per_class).clamp_max(size))


class ClassMemoryBank(nn.Module):
    """Per-class FIFO memory of pixel and segment embeddings.

    Args:
        num_classes: C. dim: embedding width D. size: slots per class and queue (ContrastiveSeg: 5000).
        pixels_per_image: pixels pushed per (image, class) (ContrastiveSeg: 10).
        ignore_label: label never pushed (labels outside [0, C) are skipped too).
        normalize: L2-normalise entries before writing.
        dtype, device: of the queues (bf16 halves the memory: 2 x C x size x D elements).

    Buffers (saved in ``state_dict``): ``pixel_store``/``segment_store`` [C * size + 1, D] (last row is
    scratch), ``pixel_ptr``/``segment_ptr``/``pixel_filled``/``segment_filled`` [C] int64.
    """

    def __init__(self, num_classes: int, dim: int, size: int = 5000, pixels_per_image: int = 10,
                 ignore_label: int = -1, normalize: bool = True, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("dim", dim), ("size", size),
                            ("pixels_per_image", pixels_per_image)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_classes, self.dim, self.size = num_classes, dim, size
        self.pixels_per_image, self.ignore_label, self.normalize = pixels_per_image, ignore_label, normalize
        for kind in ("pixel", "segment"):
            self.register_buffer(f"{kind}_store", torch.zeros(num_classes * size + 1, dim, dtype=dtype, device=device))
            self.register_buffer(f"{kind}_ptr", torch.zeros(num_classes, dtype=torch.long, device=device))
            self.register_buffer(f"{kind}_filled", torch.zeros(num_classes, dtype=torch.long, device=device))

    @property
    def pixel_queue(self) -> Tensor:
        """[C, size, D] view of the pixel entries."""
        return self.pixel_store[:-1].view(self.num_classes, self.size, self.dim)

    @property
    def segment_queue(self) -> Tensor:
        """[C, size, D] view of the segment-mean entries."""
        return self.segment_store[:-1].view(self.num_classes, self.size, self.dim)

    def reset(self) -> None:
        for kind in ("pixel", "segment"):
            getattr(self, f"{kind}_store").zero_()
            getattr(self, f"{kind}_ptr").zero_()
            getattr(self, f"{kind}_filled").zero_()

    @torch.no_grad()
    def push(self, embeddings: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> None:
        """Enqueue one batch (detached).

        Args:
            embeddings: [B, D, h, w] floating point.
            labels: [B, h, w] or an integer multiple of it (nearest-downsampled), integer.
            generator: torch.Generator on the embeddings' device (which pixels are drawn).
        """
        check_float("embeddings", embeddings, 4)
        check_labels("labels", labels, 3)
        check_same_device("embeddings", embeddings, labels=labels)
        batch, dim, height, width = embeddings.shape
        if dim != self.dim:
            raise ValueError(f"embeddings.shape[1] must equal the bank's dim {self.dim}, got {dim}")
        if embeddings.device != self.pixel_store.device:
            raise ValueError(f"embeddings are on {embeddings.device} but the bank is on {self.pixel_store.device}")
        if labels.shape[0] != batch:
            raise ValueError(f"labels.shape[0] must equal the batch size {batch}, got shape {list(labels.shape)}")
        labels = _downsample_to("labels", labels, height, width)
        n_cls, n_pix, k = self.num_classes, height * width, self.pixels_per_image
        dev = embeddings.device
        feats = embeddings.detach().reshape(batch, dim, n_pix)
        y = labels.reshape(batch, n_pix).long()
        ok = (y != self.ignore_label) & (y >= 0) & (y < n_cls)
        bucket = torch.where(ok, torch.arange(batch, device=dev).unsqueeze(1) * n_cls + y, batch * n_cls)
        order, starts, counts = group_sort(bucket.reshape(-1), batch * n_cls, generator)

        # Pixel entries: slot e = (bucket g, draw r) for r < min(count_g, K).
        e = torch.arange(batch * n_cls * k, device=dev)
        g, r = e // k, e % k
        valid = r < counts[g]
        pix = order[torch.where(valid, starts[g] + r, 0).clamp_max(order.shape[0] - 1)]
        values = feats[pix // n_pix, :, pix % n_pix]
        kept = counts.clamp_max(k).view(batch, n_cls)
        base = (kept.cumsum(0) - kept).reshape(-1)      # entries of earlier images, per class
        self._write("pixel", values, g % n_cls, base[g] + r, kept.sum(0), valid)

        # Segment entries: one mean per (image, class) present. One-hot bmm: deterministic, no atomics.
        # (F.one_hot checks the label range on the host; a comparison does not.)
        one_hot = ((y.unsqueeze(2) == torch.arange(n_cls, device=dev)) & ok.unsqueeze(2)).to(feats.dtype)  # [B, P, C]
        sums = torch.bmm(feats, one_hot).transpose(1, 2).reshape(batch * n_cls, dim)             # [B*C, D]
        means = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
        present = (counts > 0).view(batch, n_cls).long()
        seg_base = (present.cumsum(0) - present).reshape(-1)
        ids = torch.arange(batch * n_cls, device=dev)
        self._write("segment", means, ids % n_cls, seg_base, present.sum(0), present.reshape(-1).bool())

    def _write(self, kind: str, values: Tensor, cls: Tensor, offset: Tensor, per_class: Tensor, valid: Tensor):
        if self.normalize:
            values = F.normalize(values.float() if values.dtype in (torch.float16, torch.bfloat16) else values, dim=1)
        ring_write(getattr(self, f"{kind}_store"), getattr(self, f"{kind}_ptr"), getattr(self, f"{kind}_filled"),
                   values, cls, offset, per_class, valid)

    def contrast_set(self, kind: str = "pixel") -> tuple[Tensor, Tensor]:
        """The memory as a contrast set for ``pixel_contrast_loss``.

        Args:
            kind: "pixel", "segment", or "both" (pixel entries then segment entries; a copy).
        Returns:
            features [C * size, D] (x2 for "both"; views of the queues otherwise) and labels [C * size]
            int64: the slot's class, -1 for slots never written.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "both":
            fp, lp = self.contrast_set("pixel")
            fs, ls = self.contrast_set("segment")
            return torch.cat([fp, fs]), torch.cat([lp, ls])
        store, filled = getattr(self, f"{kind}_store"), getattr(self, f"{kind}_filled")
        slot = torch.arange(self.size, device=store.device)
        cls = torch.arange(self.num_classes, device=store.device).unsqueeze(1)
        labels = torch.where(slot.unsqueeze(0) < filled.unsqueeze(1), cls, -1).reshape(-1)
        return store[:-1], labels
