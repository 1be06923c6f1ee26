"""``sample_anchors``: ContrastiveSeg's hard/easy anchor sampling (``_hard_anchor_sampling``), on the device.

Semantics (ContrastiveSeg ``PixelContrastLoss``, issue #19 naming):

1. Per image, the classes (label != ``ignore_label``, inside [0, K)) with **more than** ``max_views``
   pixels; T = their number summed over the batch ("total_classes").
2. ``n_view = min(max_samples // T, max_views)``.
3. Per (image, class): hard pixels = label c and prediction != c, easy = label c and prediction == c.
   If both kinds have >= n_view / 2 pixels: n_view // 2 hard + the rest easy; otherwise all of the
   scarce kind and the rest from the other. Random, without replacement.
4. Anchors ordered by image, then class, then hard before easy (ContrastiveSeg's X_ flattened).

Output layout (static shapes, no host synchronisation): ``max_samples`` slots. Slot s holds view
s % n_view of the (s // n_view)-th eligible (image, class) pair when s // n_view < T, and is an unused
slot otherwise (``valid`` False, label -1, zero embedding, index -1). ``pixel_contrast_loss`` treats
label -1 as "unused", so ``pixel_contrast_loss(out.embeddings, out.labels)`` is ContrastiveSeg's loss
on these anchors. ``n_view`` and T stay 0-dim device tensors.

Backends: "reference" (ContrastiveSeg-style Python loops over images and classes with ``unique``,
``nonzero``, ``randperm``: host synchronisations in every iteration), "vectorized" (one sort of all
pixels by (image, class, kind, random key), segment boundaries by ``searchsorted``, slot -> pixel by
arithmetic: no ``.item()``, no ``nonzero``, no Python loop over images or classes; any device). The two
draw different random subsets; both are deterministic under a ``torch.Generator`` (on the tensors'
device). Gradients flow from the anchor embeddings to ``embeddings``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_float, check_label_range, check_labels, check_same_device
from ._dispatch import Backend, BackendTable


class AnchorSample(NamedTuple):
    """Output of ``sample_anchors`` (S = max_samples slots)."""
    embeddings: Tensor   # [S, D], embeddings' dtype; zero rows in unused slots
    labels: Tensor       # [S] int64 class of each anchor, -1 in unused slots
    valid: Tensor        # [S] bool
    index: Tensor        # [S] int64 flat pixel index b * h * w + y * w + x, -1 in unused slots
    hard: Tensor         # [S] bool: prediction != label (False in unused slots)
    n_view: Tensor       # 0-dim int64: anchors per (image, class)
    num_groups: Tensor   # 0-dim int64: T, the number of eligible (image, class) pairs


def _downsample_to(name: str, t: Tensor | None, height: int, width: int) -> Tensor | None:
    """Nearest-downsample a label map by an integer factor ([::s, ::s], what F.interpolate(mode="nearest")
    does for integer factors)."""
    if t is None or tuple(t.shape[1:]) == (height, width):
        return t
    sh, sw = t.shape[1] // height, t.shape[2] // width
    if sh < 1 or sw < 1 or sh * height != t.shape[1] or sw * width != t.shape[2]:
        raise ValueError(f"{name} must have the embeddings' spatial size {[height, width]} or an integer multiple "
                         f"of it, got {list(t.shape[1:])}")
    return t[:, ::sh, ::sw]


def _empty_sample(embeddings: Tensor, max_samples: int) -> AnchorSample:
    dev = embeddings.device
    return AnchorSample(embeddings.new_zeros((max_samples, embeddings.shape[1])),
                        torch.full((max_samples,), -1, dtype=torch.long, device=dev),
                        torch.zeros((max_samples,), dtype=torch.bool, device=dev),
                        torch.full((max_samples,), -1, dtype=torch.long, device=dev),
                        torch.zeros((max_samples,), dtype=torch.bool, device=dev),
                        torch.zeros((), dtype=torch.long, device=dev), torch.zeros((), dtype=torch.long, device=dev))


def sample_anchors_reference(embeddings: Tensor, labels: Tensor, predictions: Tensor | None, num_classes: int,
                             max_samples: int = 1024, max_views: int = 100, ignore_label: int = -1,
                             generator: torch.Generator | None = None) -> AnchorSample:
    """ContrastiveSeg-style loop sampler (the baseline). Same output layout as ``sample_anchors``."""
    batch, dim, height, width = embeddings.shape
    n_pix = height * width
    feats = embeddings.reshape(batch, dim, n_pix)
    y = labels.reshape(batch, n_pix)
    pred = y if predictions is None else predictions.reshape(batch, n_pix)
    dev = embeddings.device
    classes = []
    for b in range(batch):
        this = [int(c) for c in torch.unique(y[b]).tolist()
                if c != ignore_label and 0 <= c < num_classes]
        classes.append([c for c in this if int((y[b] == c).nonzero().shape[0]) > max_views])
    total = sum(len(c) for c in classes)
    out = _empty_sample(embeddings, max_samples)
    if total == 0:
        return out
    n_view = min(max_samples // total, max_views)
    out = out._replace(n_view=torch.tensor(n_view, device=dev), num_groups=torch.tensor(total, device=dev))
    if n_view == 0:
        return out
    rows, labs, idx, hard_flags = [], [], [], []
    for b in range(batch):
        for c in classes[b]:
            hard_idx = ((y[b] == c) & (pred[b] != c)).nonzero().squeeze(1)
            easy_idx = ((y[b] == c) & (pred[b] == c)).nonzero().squeeze(1)
            n_hard, n_easy = hard_idx.shape[0], easy_idx.shape[0]
            if n_hard >= n_view / 2 and n_easy >= n_view / 2:
                keep_hard = n_view // 2
                keep_easy = n_view - keep_hard
            elif n_hard >= n_view / 2:
                keep_easy = n_easy
                keep_hard = n_view - keep_easy
            else:
                keep_hard = n_hard
                keep_easy = n_view - keep_hard
            hard_sel = hard_idx[torch.randperm(n_hard, generator=generator, device=dev)[:keep_hard]]
            easy_sel = easy_idx[torch.randperm(n_easy, generator=generator, device=dev)[:keep_easy]]
            sel = torch.cat([hard_sel, easy_sel])
            rows.append(feats[b, :, sel].T)
            labs.append(torch.full((n_view,), c, dtype=torch.long, device=dev))
            idx.append(sel + b * n_pix)
            hard_flags.append(torch.arange(n_view, device=dev) < keep_hard)
    n = total * n_view
    emb = torch.cat([torch.cat(rows), embeddings.new_zeros((max_samples - n, dim))])
    pad_long = torch.full((max_samples - n,), -1, dtype=torch.long, device=dev)
    pad_bool = torch.zeros((max_samples - n,), dtype=torch.bool, device=dev)
    return out._replace(embeddings=emb, labels=torch.cat([*labs, pad_long]), index=torch.cat([*idx, pad_long]),
                        valid=torch.cat([torch.ones(n, dtype=torch.bool, device=dev), pad_bool]),
                        hard=torch.cat([*hard_flags, pad_bool]))


def group_sort(groups: Tensor, num_groups: int, generator: torch.Generator | None = None):
    """Random order within groups, on the device, without host synchronisation.

    Args:
        groups: [N] int64 group id of every element, in [0, num_groups].
        num_groups: G; ids >= G are allowed (sorted last, not counted).
    Returns:
        order [N] (element indices, grouped by id ascending, uniformly shuffled inside each group),
        starts [G] (position of each group's first element in ``order``), counts [G].
    """
    rnd = torch.randint(0, 1 << 31, groups.shape, generator=generator, device=groups.device, dtype=torch.long)
    _keys, order = torch.sort((groups << 31) | rnd, stable=True)
    sorted_groups = groups[order]
    bounds = torch.searchsorted(sorted_groups, torch.arange(num_groups + 1, device=groups.device, dtype=torch.long))
    return order, bounds[:-1], bounds[1:] - bounds[:-1]


def _sample_anchors_vectorized(embeddings: Tensor, labels: Tensor, predictions: Tensor | None, num_classes: int,
                               max_samples: int = 1024, max_views: int = 100, ignore_label: int = -1,
                               generator: torch.Generator | None = None) -> AnchorSample:
    batch, dim, height, width = embeddings.shape
    n_pix = height * width
    n_buckets = batch * num_classes
    dev = embeddings.device
    y = labels.reshape(batch, n_pix).long()
    ok = (y != ignore_label) & (y >= 0) & (y < num_classes)
    bucket = torch.where(ok, torch.arange(batch, device=dev).unsqueeze(1) * num_classes + y, n_buckets)
    easy = torch.ones_like(ok) if predictions is None else predictions.reshape(batch, n_pix).long() == y
    # Group 2 * bucket holds the bucket's hard pixels, 2 * bucket + 1 its easy ones; ignored pixels go last.
    order, starts, counts = group_sort((2 * bucket + easy.long()).reshape(-1), 2 * n_buckets, generator)
    n_hard, n_easy = counts[0::2], counts[1::2]
    eligible = (n_hard + n_easy) > max_views
    num_groups = eligible.sum()
    n_view = torch.div(max_samples, num_groups.clamp_min(1), rounding_mode="floor").clamp_max(max_views)
    n_view = n_view * (num_groups > 0)  # no eligible pair: n_view = 0, as the loop sampler reports
    # ContrastiveSeg's split rule, with "x >= n_view / 2" written as 2x >= n_view.
    hard_ok, easy_ok = 2 * n_hard >= n_view, 2 * n_easy >= n_view
    keep_hard = torch.where(hard_ok & easy_ok, n_view // 2, torch.where(hard_ok, n_view - n_easy, n_hard))
    slots = torch.arange(max_samples, device=dev)
    nv = n_view.clamp_min(1)
    rank, view = slots // nv, slots % nv
    valid = (rank < num_groups) & (n_view > 0)
    # rank -> bucket: the first bucket whose running count of eligible buckets reaches rank + 1.
    bucket_of = torch.searchsorted(eligible.long().cumsum(0), rank + 1).clamp_max(n_buckets - 1)
    keep = keep_hard[bucket_of]
    is_hard = view < keep
    pos = torch.where(is_hard, starts[2 * bucket_of] + view, starts[2 * bucket_of + 1] + view - keep)
    pix = order[torch.where(valid, pos, 0).clamp(0, order.shape[0] - 1)]
    feats = embeddings.reshape(batch, dim, n_pix)[pix // n_pix, :, pix % n_pix]
    neg_one = torch.full_like(slots, -1)
    return AnchorSample(embeddings=torch.where(valid.unsqueeze(1), feats, torch.zeros_like(feats)),
                        labels=torch.where(valid, bucket_of % num_classes, neg_one),
                        valid=valid, index=torch.where(valid, pix, neg_one), hard=valid & is_hard,
                        n_view=n_view, num_groups=num_groups)


SAMPLE_ANCHORS_BACKENDS = BackendTable("sample_anchors")
SAMPLE_ANCHORS_BACKENDS.register(Backend("reference", sample_anchors_reference))
SAMPLE_ANCHORS_BACKENDS.register(Backend("vectorized", _sample_anchors_vectorized), auto_rank=0)


def sample_anchors(embeddings: Tensor, labels: Tensor, predictions: Tensor | None, num_classes: int,
                   max_samples: int = 1024, max_views: int = 100, ignore_label: int = -1,
                   generator: torch.Generator | None = None, backend: str = "auto",
                   check_values: bool = False) -> AnchorSample:
    """Hard/easy anchor sampling of ContrastiveSeg, vectorised (see the module docstring).

    Args:
        embeddings: pixel embeddings [B, D, h, w], floating point (ContrastiveSeg: the L2-normalised
            projection head output).
        labels: ground truth [B, h, w] or [B, s*h, s*w] (nearest-downsampled to h x w), integer. Values
            outside [0, num_classes) are treated like ``ignore_label``.
        predictions: predicted classes, same shape rules as labels, or None (every pixel counts as easy:
            plain random sampling per class).
        num_classes: K (sizes the per-(image, class) tables).
        max_samples: number of output slots (ContrastiveSeg: 1024). max_views: views per class cap (100).
        ignore_label: label excluded from sampling.
        generator: torch.Generator on the embeddings' device, for reproducible draws.
        backend: "auto" ("vectorized"), "vectorized", "reference".
        check_values: verify the label range (synchronises with the device).

    Returns:
        ``AnchorSample`` with ``max_samples`` slots.
    """
    check_float("embeddings", embeddings, 4)
    check_labels("labels", labels, 3)
    if predictions is not None:
        check_labels("predictions", predictions, 3)
    check_same_device("embeddings", embeddings, labels=labels, predictions=predictions)
    batch, _dim, height, width = embeddings.shape
    if labels.shape[0] != batch:
        raise ValueError(f"labels.shape[0] must equal the batch size {batch}, got shape {list(labels.shape)}")
    labels = _downsample_to("labels", labels, height, width)
    predictions = _downsample_to("predictions", predictions, height, width)
    if predictions is not None and predictions.shape != labels.shape:
        raise ValueError(f"predictions must have the shape of labels {list(labels.shape)}, "
                         f"got {list(predictions.shape)}")
    for name, value in (("num_classes", num_classes), ("max_samples", max_samples), ("max_views", max_views)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if generator is not None and generator.device.type != embeddings.device.type:
        raise ValueError(f"generator is on {generator.device} but embeddings are on {embeddings.device}")
    if check_values:
        kept = labels[labels != ignore_label]
        check_label_range("labels", kept, num_classes)
    impl = SAMPLE_ANCHORS_BACKENDS.resolve(backend, embeddings.device)
    return impl(embeddings, labels, predictions, num_classes, max_samples, max_views, ignore_label, generator)
