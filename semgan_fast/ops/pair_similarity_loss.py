"""``pair_similarity_loss``: ECGAN's similarity loss (Eq. 3).

With S the one-hot label map and P the predicted class probabilities, both reshaped to [M, N]
(M = H * W pixels, N classes), the similarity maps are A = S S^T (a_ij = [y_i = y_j]) and
A'' = P P^T, and per image

    L = -(1 / M^2) * sum_{i, j} ( a_ij log a''_ij + (1 - a_ij) log(1 - a''_ij) ),

averaged over the batch, with torch ``BCELoss`` conventions: logs clamped at -100, and its backward
formula ``(x - a) / max(x (1 - x), 1e-12)``. a'' is clamped to [0, 1] first (p_i . p_j <= 1 holds for
probability vectors up to rounding, and ``BCELoss`` rejects inputs above 1); the clamp passes gradients
only inside [0, 1], as ``torch.clamp`` does.

``ignore_index`` (optional): pixels with that label take part in no pair; the loss is the sum over the
remaining pairs of all images divided by their number (sum_b M_b^2), i.e. ``BCELoss`` with a 0/1 weight
and mean over the kept elements. Without ignored pixels this is exactly the batch mean of Eq. 3. No
valid pair gives 0.

``stride`` (optional, an estimate, not the exact loss): the loss is evaluated on the pixel sub-grid
[::stride, ::stride] (the nearest-downsampled maps), stride^4 times fewer pairs; gradients reach only
the sub-grid pixels.

Backends: "reference" (dense M x M maps: O(B M^2) memory, small sizes only), "cpu" (PyTorch chunks of
pixel rows, upper triangle in forward, recompute in backward, memory O(chunk * M)), "triton" (tiled,
symmetric forward, row-sweep backward; ``semgan_fast.kernels.pair_similarity_loss``). The fast backends
run inside the ``torch.library`` custom ops ``semgan::pair_similarity_loss`` and
``semgan::pair_similarity_loss_backward`` (backend name as the last argument).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_finite, check_float, check_label_range, check_labels, check_same_device
from ._dispatch import Backend, BackendTable
from ._library import FastImpl, accumulator_dtype, cpu_available, triton_available
from .pixel_contrast_loss import _matmul_precision

_CPU_CHUNK_ELEMENTS = 1 << 21
# torch's BCELoss backward divides by max(x (1 - x), EPSILON) with EPSILON = 1e-12 rounded to fp32 (measured:
# d/dx at x = 0, a = 1 is -1 / 9.99999996e-13 in float64 too).
_BCE_EPS = 9.999999960041972e-13


def pair_similarity_loss_reference(probs: Tensor, labels: Tensor, ignore_index: int | None = None) -> Tensor:
    """Dense formulation of Eq. 3: builds S, A = S S^T and A'' = P P^T ([B, M, M] each) and applies
    ``F.binary_cross_entropy``. Runs in probs' dtype; returns float32 (float64 for float64 probs)."""
    batch, n_cls, height, width = probs.shape
    y = labels.reshape(batch, height * width).long()
    valid = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != ignore_index
    one_hot = F.one_hot(torch.where(valid, y, 0), n_cls).to(probs.dtype)             # S^T: [B, M, N]
    target = one_hot @ one_hot.transpose(1, 2)                                         # A
    p = probs.reshape(batch, n_cls, height * width).transpose(1, 2)                    # P^T: [B, M, N]
    pred = (p @ p.transpose(1, 2)).clamp(0, 1)                                         # A''
    acc = accumulator_dtype(probs.dtype)
    if ignore_index is None:
        return F.binary_cross_entropy(pred, target).to(acc)
    pair_valid = (valid.unsqueeze(2) & valid.unsqueeze(1)).to(probs.dtype)
    total = F.binary_cross_entropy(pred, target, weight=pair_valid, reduction="sum").to(acc)
    return total / pair_valid.to(acc).sum().clamp_min(1)


# ---------------------------------------------------------------------------------------------------
# "cpu" backend: chunks of pixel rows (the Triton algorithm in PyTorch).
# ---------------------------------------------------------------------------------------------------

def _valid(labels: Tensor, ignore_index: int, has_ignore: bool) -> Tensor:
    return labels != ignore_index if has_ignore else torch.ones_like(labels, dtype=torch.bool)


def _cpu_forward(probs: Tensor, labels: Tensor, ignore_index: int, has_ignore: bool, precision: str = "ieee") -> Tensor:
    """Same contract as ``semgan_fast.kernels.pair_similarity_loss.forward`` (precision unused)."""
    batch, _n_cls, n_pix = probs.shape
    acc = accumulator_dtype(probs.dtype)
    p = probs.to(acc).transpose(1, 2)  # [B, M, N]
    valid = _valid(labels, ignore_index, has_ignore)
    total = torch.zeros((), dtype=acc, device=probs.device)
    rows = max(1, min(n_pix, _CPU_CHUNK_ELEMENTS // max(n_pix, 1)))
    for b in range(batch):
        for r0 in range(0, n_pix, rows):
            r1 = min(n_pix, r0 + rows)
            # Upper triangle: columns from r0 on; the square [r0, r1) block holds both orders of its pairs.
            x = (p[b, r0:r1] @ p[b, r0:].T).clamp(0, 1)
            same = labels[b, r0:r1].unsqueeze(1) == labels[b, r0:].unsqueeze(0)
            log_v = torch.log(torch.where(same, x, 1 - x)).clamp_min(-100)
            keep = valid[b, r0:r1].unsqueeze(1) & valid[b, r0:].unsqueeze(0)
            bce = torch.where(keep, -log_v, torch.zeros((), dtype=acc))
            total = total + bce[:, : r1 - r0].sum() + 2 * bce[:, r1 - r0:].sum()
    return total


def _cpu_backward(probs: Tensor, labels: Tensor, scale: Tensor, ignore_index: int, has_ignore: bool,
                  precision: str = "ieee") -> Tensor:
    """Same contract as ``semgan_fast.kernels.pair_similarity_loss.backward`` (precision unused)."""
    batch, _n_cls, n_pix = probs.shape
    acc = accumulator_dtype(probs.dtype)
    p = probs.to(acc).transpose(1, 2)
    valid = _valid(labels, ignore_index, has_ignore)
    dp = torch.zeros_like(p)
    rows = max(1, min(n_pix, _CPU_CHUNK_ELEMENTS // max(n_pix, 1)))
    for b in range(batch):
        for r0 in range(0, n_pix, rows):
            r1 = min(n_pix, r0 + rows)
            # Upper triangle again (G is symmetric): the block of columns j >= r0 gives row i's terms
            # G_ij p_j and, transposed, the terms of rows j >= r1 with the pixels of this chunk.
            x_raw = p[b, r0:r1] @ p[b, r0:].T
            x = x_raw.clamp(0, 1)
            a = (labels[b, r0:r1].unsqueeze(1) == labels[b, r0:].unsqueeze(0)).to(acc)
            g = (x - a) / (x * (1 - x)).clamp_min(_BCE_EPS)
            keep = valid[b, r0:r1].unsqueeze(1) & valid[b, r0:].unsqueeze(0) & (x_raw >= 0) & (x_raw <= 1)
            g = torch.where(keep, g, torch.zeros((), dtype=acc))
            dp[b, r0:r1] += g @ p[b, r0:]
            dp[b, r1:] += g[:, r1 - r0:].T @ p[b, r0:r1]
    return (dp * scale).transpose(1, 2).to(probs.dtype)


def _num_pairs(labels: Tensor, ignore_index: int, has_ignore: bool, acc: torch.dtype) -> Tensor:
    n = _valid(labels, ignore_index, has_ignore).sum(dim=1).to(acc)
    return (n * n).sum()


# torch.library registration (project pattern, see ``_library.py``): the resolved backend name is the
# last argument; the backward op recomputes everything from the inputs (nothing else is saved).
_IMPLS = {
    "cpu": FastImpl("semgan_fast.ops.pair_similarity_loss", "_cpu_forward", "_cpu_backward"),
    "triton": FastImpl("semgan_fast.kernels.pair_similarity_loss", "forward", "backward"),
}


@torch.library.custom_op("semgan::pair_similarity_loss", mutates_args=())
def _pair_similarity_loss_op(probs: Tensor, labels: Tensor, ignore_index: int, has_ignore: bool, precision: str,
                             backend: str) -> Tensor:
    """probs [B, N, M], labels [B, M] -> 0-dim loss (float64 for float64 probs, else float32)."""
    forward_fn, _ = _IMPLS[backend].load()
    y = labels.contiguous().to(torch.int32)
    total = forward_fn(probs.contiguous(), y, ignore_index, has_ignore, precision)
    return total / _num_pairs(y, ignore_index, has_ignore, total.dtype).clamp_min(1)


@_pair_similarity_loss_op.register_fake
def _(probs, labels, ignore_index, has_ignore, precision, backend):
    return probs.new_empty((), dtype=accumulator_dtype(probs.dtype))


@torch.library.custom_op("semgan::pair_similarity_loss_backward", mutates_args=())
def _pair_similarity_loss_backward_op(grad: Tensor, probs: Tensor, labels: Tensor, ignore_index: int,
                                      has_ignore: bool, precision: str, backend: str) -> Tensor:
    """d loss / d probs [B, N, M] in probs' dtype."""
    _, backward_fn = _IMPLS[backend].load()
    y = labels.contiguous().to(torch.int32)
    acc = accumulator_dtype(probs.dtype)
    scale = (2 * grad.to(acc) / _num_pairs(y, ignore_index, has_ignore, acc).clamp_min(1)).reshape(1)
    return backward_fn(probs.contiguous(), y, scale.contiguous(), ignore_index, has_ignore, precision)


@_pair_similarity_loss_backward_op.register_fake
def _(grad, probs, labels, ignore_index, has_ignore, precision, backend):
    return torch.empty_like(probs, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    probs, labels, ignore_index, has_ignore, precision, backend = inputs
    ctx.save_for_backward(probs, labels)
    ctx.ignore_index, ctx.has_ignore, ctx.precision, ctx.backend = ignore_index, has_ignore, precision, backend


def _backward(ctx, grad):
    probs, labels = ctx.saved_tensors
    dp = torch.ops.semgan.pair_similarity_loss_backward(grad, probs, labels, ctx.ignore_index, ctx.has_ignore,
                                                        ctx.precision, ctx.backend)
    return dp, None, None, None, None, None


_pair_similarity_loss_op.register_autograd(_backward, setup_context=_setup_context)


def _via_op(name: str):
    def run(probs, labels, ignore_index):
        batch, n_cls = probs.shape[:2]
        has_ignore = ignore_index is not None
        return torch.ops.semgan.pair_similarity_loss(probs.reshape(batch, n_cls, -1), labels.reshape(batch, -1),
                                                     int(ignore_index) if has_ignore else 0, has_ignore,
                                                     _matmul_precision(), name)
    run.__name__ = f"pair_similarity_loss_{name}"
    return run


PAIR_SIMILARITY_LOSS_BACKENDS = BackendTable("pair_similarity_loss")
PAIR_SIMILARITY_LOSS_BACKENDS.register(Backend("reference", pair_similarity_loss_reference))
# auto: "triton" for CUDA tensors, "cpu" for CPU tensors ("triton" serves CPU tensors only under the
# interpreter and when named).
PAIR_SIMILARITY_LOSS_BACKENDS.register(Backend("cpu", _via_op("cpu"), cpu_available), auto_rank=0)
PAIR_SIMILARITY_LOSS_BACKENDS.register(Backend("triton", _via_op("triton"), triton_available), auto_rank=1)


def pair_similarity_loss(probs: Tensor, labels: Tensor, ignore_index: int | None = None, stride: int = 1,
                         backend: str = "auto", check_values: bool = False) -> Tensor:
    """ECGAN similarity loss (Eq. 3): BCE between S S^T and P P^T over all pixel pairs of each image.

    Args:
        probs: predicted class probabilities [B, N, H, W] (e.g. softmax of the label generator's logits),
            float16/bfloat16/float32/float64.
        labels: ground-truth classes [B, H, W], integer, values in [0, N) (or ``ignore_index``).
        ignore_index: label whose pixels are excluded from all pairs (None: no pixel is ignored).
        stride: 1 (exact loss) or s > 1 for the cheaper estimate on the [::s, ::s] sub-grid (see module doc).
        backend: "auto" (CUDA: "triton"; CPU: "cpu"), "reference", "cpu", "triton".
        check_values: also verify the label range and finiteness of probs (synchronises with the device).

    Returns:
        scalar loss, float32 (float64 for float64 probs). The fast backends accumulate in fp32 (fp64) and
        use O(B * N * H * W) memory; the M x M maps are never stored. The Triton backend's K-wide
        products follow ``torch.get_float32_matmul_precision()`` ("highest", the default: exact fp32).
    """
    check_float("probs", probs, 4)
    check_labels("labels", labels, 3)
    check_same_device("probs", probs, labels=labels)
    batch, n_cls, height, width = probs.shape
    if tuple(labels.shape) != (batch, height, width):
        raise ValueError(f"labels must have shape [B, H, W] = {[batch, height, width]} matching probs, "
                         f"got {list(labels.shape)}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if ignore_index is not None and not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if check_values:
        check_finite("probs", probs)
        kept = labels if ignore_index is None else labels[labels != ignore_index]
        check_label_range("labels", kept, n_cls)
    if stride > 1:
        probs, labels = probs[:, :, ::stride, ::stride], labels[:, ::stride, ::stride]
    impl = PAIR_SIMILARITY_LOSS_BACKENDS.resolve(backend, probs.device)
    return impl(probs, labels, ignore_index)
