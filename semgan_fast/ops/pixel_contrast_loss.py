"""``pixel_contrast_loss``: supervised pixel contrastive loss (ECGAN Eq. 5, ContrastiveSeg ``PixelContrastLoss``).

For anchor i with label y_i, positives P_i (contrast entries with the same label; the anchor itself is
excluded when the anchors are their own contrast set) and negatives N_i (contrast entries with another
label), with s_ij = f_i . c_j / tau:

    L_i = (tau / tau_b) * (1 / |P_i|) * sum_{p in P_i} -log( e^{s_ip} / (e^{s_ip} + sum_{n in N_i} e^{s_in}) )
    loss = mean of L_i over the anchors that have at least one positive.

Differences from ContrastiveSeg, all on edge cases: anchors without positives are excluded from the
mean instead of producing NaN (no counted anchor -> loss 0); entries with a negative label are unused
slots (neither anchors nor contrast), which is how the fixed-size output of ``sample_anchors`` and the
unfilled slots of ``ClassMemoryBank`` are passed in; with an explicit contrast set (memory bank) no
entry is excluded as "self" (ContrastiveSeg's memory variant drops the diagonal of a non-square
matrix, an arbitrary pair).

Backends: "reference" (the plain formulation, A x M logits and several same-size temporaries),
"cpu" (chunked PyTorch over anchor blocks, memory linear in M for fixed chunk, custom backward that
recomputes; CPU tensors), "triton" (fused streaming kernels in ``semgan_fast.kernels.pixel_contrast_loss``:
two forward passes saving three floats per anchor, row/column backward kernels that recompute the
logits; CUDA, or CPU under TRITON_INTERPRET=1). Both fast backends run inside the ``torch.library``
custom ops ``semgan::pixel_contrast_loss`` and ``semgan::pixel_contrast_loss_backward`` (backend name
as the last argument), so they work under torch.compile / torch.export and pass opcheck.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_finite, check_float, check_same_device, check_same_dtype, check_tensor, INT_DTYPES
from ._dispatch import Backend, BackendTable
from ._library import FastImpl, accumulator_dtype, cpu_available, triton_available

# Anchor rows per chunk of the "cpu" backend: one chunk of logits holds about this many elements (at
# least _CPU_MIN_ROWS rows, so that huge contrast sets still get matrix-matrix products).
_CPU_CHUNK_ELEMENTS = 1 << 21
_CPU_MIN_ROWS = 32


def pixel_contrast_loss_reference(anchors: Tensor, labels: Tensor, contrast: Tensor | None = None,
                                  contrast_labels: Tensor | None = None, temperature: float = 0.1,
                                  base_temperature: float = 0.07) -> Tensor:
    """Plain formulation (ContrastiveSeg ``_contrastive``): dense A x M logits minus the detached row max,
    masks for positives and negatives, per-positive log-probabilities. Runs in the inputs' dtype;
    returns a float32 scalar (float64 for float64 inputs). See ``pixel_contrast_loss``."""
    self_contrast = contrast is None
    if self_contrast:
        contrast, contrast_labels = anchors, labels
    y_a = labels.reshape(-1, 1)
    y_c = contrast_labels.reshape(1, -1)
    valid_c = y_c >= 0
    pos_mask = (y_a == y_c) & valid_c
    neg_mask = (y_a != y_c) & valid_c
    if self_contrast:
        pos_mask = pos_mask & ~torch.eye(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    logits = anchors @ contrast.T / temperature
    logits_max = logits.masked_fill(~valid_c, float("-inf")).amax(dim=1, keepdim=True)
    logits_max = torch.where(torch.isfinite(logits_max), logits_max, torch.zeros_like(logits_max))
    logits = logits - logits_max.detach()
    exp_logits = torch.exp(logits)
    neg_logits = torch.where(neg_mask, exp_logits, torch.zeros_like(exp_logits)).sum(dim=1, keepdim=True)
    log_prob = logits - torch.log(exp_logits + neg_logits)
    n_pos = pos_mask.sum(dim=1)
    mean_log_prob_pos = torch.where(pos_mask, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / n_pos.clamp_min(1)
    loss_i = -(temperature / base_temperature) * mean_log_prob_pos
    counted = (n_pos > 0) & (labels.reshape(-1) >= 0)
    acc = accumulator_dtype(anchors.dtype)
    total = torch.where(counted, loss_i, torch.zeros_like(loss_i)).to(acc).sum()
    return total / counted.sum().clamp_min(1).to(acc)


# ---------------------------------------------------------------------------------------------------
# "cpu" backend: the streaming algorithm of the Triton kernels written with PyTorch chunks.
# ---------------------------------------------------------------------------------------------------

def _chunk_masks(y_a: Tensor, y_c: Tensor, r0: int, exclude_self: bool):
    valid = (y_a >= 0).unsqueeze(1) & (y_c >= 0).unsqueeze(0)
    same = y_a.unsqueeze(1) == y_c.unsqueeze(0)
    pos = same & valid
    if exclude_self:
        rows = torch.arange(y_a.shape[0], device=y_a.device)
        pos[rows, rows + r0] = False
    neg = ~same & valid
    return pos, neg


def _cpu_forward(anchors: Tensor, labels: Tensor, contrast: Tensor, contrast_labels: Tensor, exclude_self: bool,
                 temperature: float, precision: str):
    """Same contract as ``semgan_fast.kernels.pixel_contrast_loss.forward`` (precision unused)."""
    acc = accumulator_dtype(anchors.dtype)
    a, c = anchors.to(acc), contrast.to(acc)
    y_a, y_c = labels.long(), contrast_labels.long()
    n_a, n_c = a.shape[0], c.shape[0]
    ln = torch.full((n_a,), float("-inf"), dtype=acc, device=a.device)
    cnt = torch.zeros((n_a,), dtype=torch.int32, device=a.device)
    t = torch.zeros((n_a,), dtype=acc, device=a.device)
    w = torch.zeros((n_a,), dtype=acc, device=a.device)
    if n_a == 0 or n_c == 0:
        return ln, cnt, t, w
    rows = min(n_a, max(_CPU_MIN_ROWS, _CPU_CHUNK_ELEMENTS // n_c))
    for r0 in range(0, n_a, rows):
        r1 = min(n_a, r0 + rows)
        s = (a[r0:r1] @ c.T) / temperature
        pos, neg = _chunk_masks(y_a[r0:r1], y_c, r0, exclude_self)
        ln_chunk = torch.logsumexp(s.masked_fill(~neg, float("-inf")), dim=1)
        z = ln_chunk.unsqueeze(1) - s
        zero = torch.zeros((), dtype=acc, device=a.device)
        ln[r0:r1] = ln_chunk
        cnt[r0:r1] = pos.sum(dim=1).to(torch.int32)
        t[r0:r1] = torch.where(pos, torch.logaddexp(z, zero), zero).sum(dim=1)
        w[r0:r1] = torch.where(pos, torch.sigmoid(z), zero).sum(dim=1)
    return ln, cnt, t, w


def _cpu_backward(anchors: Tensor, labels: Tensor, contrast: Tensor, contrast_labels: Tensor, ln: Tensor, w: Tensor,
                  k: Tensor, exclude_self: bool, temperature: float, need_anchors: bool, need_contrast: bool,
                  precision: str):
    """Same contract as ``semgan_fast.kernels.pixel_contrast_loss.backward`` (precision unused)."""
    acc = accumulator_dtype(anchors.dtype)
    a, c = anchors.to(acc), contrast.to(acc)
    y_a, y_c = labels.long(), contrast_labels.long()
    n_a, n_c = a.shape[0], c.shape[0]
    da = torch.zeros_like(a) if need_anchors else None
    dc = torch.zeros_like(c) if need_contrast else None
    if n_a > 0 and n_c > 0:
        rows = min(n_a, max(_CPU_MIN_ROWS, _CPU_CHUNK_ELEMENTS // n_c))
        zero = torch.zeros((), dtype=acc, device=a.device)
        for r0 in range(0, n_a, rows):
            r1 = min(n_a, r0 + rows)
            s = (a[r0:r1] @ c.T) / temperature
            pos, neg = _chunk_masks(y_a[r0:r1], y_c, r0, exclude_self)
            shifted = s - ln[r0:r1].unsqueeze(1)
            g = torch.where(pos, -torch.sigmoid(-shifted),
                            torch.where(neg, torch.exp(shifted) * w[r0:r1].unsqueeze(1), zero))
            g = g * k[r0:r1].unsqueeze(1)
            if need_anchors:
                da[r0:r1] = g @ c
            if need_contrast:
                dc += g.T @ a[r0:r1]
    return (None if da is None else da.to(anchors.dtype)), (None if dc is None else dc.to(contrast.dtype))


# ---------------------------------------------------------------------------------------------------
# torch.library registration (project pattern, see ``_library.py``): ``semgan::pixel_contrast_loss``
# takes the resolved backend name as its last argument and returns the loss plus the per-anchor
# statistics that the backward needs (outputs, so autograd can save them);
# ``semgan::pixel_contrast_loss_backward`` recomputes from them.
# ---------------------------------------------------------------------------------------------------

_IMPLS = {
    "cpu": FastImpl("semgan_fast.ops.pixel_contrast_loss", "_cpu_forward", "_cpu_backward"),
    "triton": FastImpl("semgan_fast.kernels.pixel_contrast_loss", "forward", "backward"),
}


@torch.library.custom_op("semgan::pixel_contrast_loss", mutates_args=())
def _pixel_contrast_loss_op(anchors: Tensor, labels: Tensor, contrast: Tensor, contrast_labels: Tensor,
                            exclude_self: bool, temperature: float, base_temperature: float, precision: str,
                            backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss 0-dim, ln [A], w [A], coef [A]); float64 for float64 inputs, float32 otherwise."""
    forward_fn, _ = _IMPLS[backend].load()
    a, c = anchors.contiguous(), contrast.contiguous()
    y_a = labels.contiguous().to(torch.int32)
    y_c = contrast_labels.contiguous().to(torch.int32)
    ln, cnt, t, w = forward_fn(a, y_a, c, y_c, exclude_self, temperature, precision)
    acc = ln.dtype
    counted = (cnt > 0) & (y_a >= 0)
    n_counted = counted.sum().clamp_min(1).to(acc)
    coef = torch.where(counted, (temperature / base_temperature) / (cnt.clamp_min(1).to(acc) * n_counted),
                       torch.zeros((), dtype=acc, device=a.device))
    return (coef * t).sum(), ln, w, coef


@_pixel_contrast_loss_op.register_fake
def _(anchors, labels, contrast, contrast_labels, exclude_self, temperature, base_temperature, precision, backend):
    acc = accumulator_dtype(anchors.dtype)
    n = anchors.shape[0]
    return (anchors.new_empty((), dtype=acc), anchors.new_empty((n,), dtype=acc),
            anchors.new_empty((n,), dtype=acc), anchors.new_empty((n,), dtype=acc))


@torch.library.custom_op("semgan::pixel_contrast_loss_backward", mutates_args=())
def _pixel_contrast_loss_backward_op(grad: Tensor, anchors: Tensor, labels: Tensor, contrast: Tensor,
                                     contrast_labels: Tensor, ln: Tensor, w: Tensor, coef: Tensor,
                                     exclude_self: bool, temperature: float, need_anchors: bool,
                                     need_contrast: bool, precision: str, backend: str) -> tuple[Tensor, Tensor]:
    """(d_anchors [A, D] or empty, d_contrast [M, D] or empty) in the inputs' dtype."""
    _, backward_fn = _IMPLS[backend].load()
    a, c = anchors.contiguous(), contrast.contiguous()
    y_a = labels.contiguous().to(torch.int32)
    y_c = contrast_labels.contiguous().to(torch.int32)
    k = (grad.to(coef.dtype) * coef / temperature).contiguous()
    da, dc = backward_fn(a, y_a, c, y_c, ln.contiguous(), w.contiguous(), k, exclude_self, temperature,
                         need_anchors, need_contrast, precision)
    # Gradients that were not asked for come back empty (a custom op cannot return None).
    return (da if da is not None else anchors.new_empty((0,)),
            dc if dc is not None else contrast.new_empty((0,)))


@_pixel_contrast_loss_backward_op.register_fake
def _(grad, anchors, labels, contrast, contrast_labels, ln, w, coef, exclude_self, temperature, need_anchors,
      need_contrast, precision, backend):
    return (torch.empty_like(anchors) if need_anchors else anchors.new_empty((0,)),
            torch.empty_like(contrast) if need_contrast else contrast.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    anchors, labels, contrast, contrast_labels, exclude_self, temperature, _base, precision, backend = inputs
    _loss, ln, w, coef = output
    ctx.save_for_backward(anchors, labels, contrast, contrast_labels, ln, w, coef)
    ctx.exclude_self, ctx.temperature, ctx.precision, ctx.backend = exclude_self, temperature, precision, backend


def _backward(ctx, grad_loss, _grad_ln, _grad_w, _grad_coef):
    anchors, labels, contrast, contrast_labels, ln, w, coef = ctx.saved_tensors
    need_a, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    da, dc = torch.ops.semgan.pixel_contrast_loss_backward(
        grad_loss, anchors, labels, contrast, contrast_labels, ln, w, coef, ctx.exclude_self, ctx.temperature,
        need_a, need_c, ctx.precision, ctx.backend)
    return (da if need_a else None, None, dc if need_c else None, None, None, None, None, None, None)


_pixel_contrast_loss_op.register_autograd(_backward, setup_context=_setup_context)


@torch.compiler.assume_constant_result  # read at trace time under torch.compile (fullgraph-safe)
def _matmul_precision() -> str:
    """Triton ``input_precision`` for fp32 inputs, following torch's fp32 matmul setting (the reference's
    matmul obeys the same one): "highest" -> "ieee" (exact fp32), "high" -> "tf32x3" (~fp32 accuracy on
    tensor cores), "medium" -> "tf32"."""
    return {"highest": "ieee", "high": "tf32x3", "medium": "tf32"}.get(torch.get_float32_matmul_precision(), "ieee")


def _via_op(name: str):
    def run(anchors, labels, contrast, contrast_labels, temperature, base_temperature):
        exclude_self = contrast is None
        if exclude_self:
            # The same tensor enters twice; autograd adds the row and column gradients.
            contrast, contrast_labels = anchors, labels
        loss, _ln, _w, _coef = torch.ops.semgan.pixel_contrast_loss(
            anchors, labels, contrast, contrast_labels, exclude_self, float(temperature), float(base_temperature),
            _matmul_precision(), name)
        return loss
    run.__name__ = f"pixel_contrast_loss_{name}"
    return run


PIXEL_CONTRAST_LOSS_BACKENDS = BackendTable("pixel_contrast_loss")
PIXEL_CONTRAST_LOSS_BACKENDS.register(Backend("reference", pixel_contrast_loss_reference))
# auto: "triton" for CUDA tensors, "cpu" for CPU tensors ("triton" takes CPU tensors only under the
# interpreter and only when named, hence "cpu" ranks first).
PIXEL_CONTRAST_LOSS_BACKENDS.register(Backend("cpu", _via_op("cpu"), cpu_available), auto_rank=0)
PIXEL_CONTRAST_LOSS_BACKENDS.register(Backend("triton", _via_op("triton"), triton_available), auto_rank=1)


def pixel_contrast_loss(anchors: Tensor, labels: Tensor, contrast: Tensor | None = None,
                        contrast_labels: Tensor | None = None, temperature: float = 0.1,
                        base_temperature: float = 0.07, backend: str = "auto", check_values: bool = False) -> Tensor:
    """Pixel-wise supervised contrastive loss (ECGAN Eq. 5 with ContrastiveSeg's tau / tau_b scale).

    Args:
        anchors: anchor embeddings [A, D], float16/bfloat16/float32/float64 (L2-normalised in ECGAN and
            ContrastiveSeg; not required: the fast backends use no fixed logit shift).
        labels: anchor classes [A], integer. Negative values mark unused slots (e.g. the invalid slots of
            ``sample_anchors``): such rows are neither anchors nor contrast entries.
        contrast: contrast embeddings [M, D] (e.g. ``ClassMemoryBank.contrast_set()``), same dtype, or None to
            contrast the anchors with each other (each anchor then excludes itself from its positives).
        contrast_labels: [M] integer, negative = unused slot. Required with ``contrast``.
        temperature: tau > 0. base_temperature: tau_b > 0; the loss is scaled by tau / tau_b.
        backend: "auto" (CUDA: "triton"; CPU: "cpu"), "reference", "cpu", "triton".
        check_values: also verify finiteness of the embeddings (synchronises with the device).

    Returns:
        scalar loss, float32 (float64 for float64 inputs); 0 when no anchor has a positive. Gradients flow
        to ``anchors`` and, if it requires grad, ``contrast``.

    Precision: fp16/bf16 inputs use tensor-core products with fp32 accumulation; fp32 inputs follow
    ``torch.get_float32_matmul_precision()`` ("highest", the default: exact fp32 products).
    Memory (fast backends): O((A + M) * D) plus three floats per anchor; the A x M logits are never stored.
    """
    check_float("anchors", anchors, 2)
    check_tensor("labels", labels, 1, INT_DTYPES)
    if labels.shape[0] != anchors.shape[0]:
        raise ValueError(f"labels must have shape [A] = [{anchors.shape[0]}] matching anchors, "
                         f"got {list(labels.shape)}")
    if (contrast is None) != (contrast_labels is None):
        raise ValueError("contrast and contrast_labels must be given together (or both None)")
    if contrast is not None:
        check_float("contrast", contrast, 2)
        check_tensor("contrast_labels", contrast_labels, 1, INT_DTYPES)
        check_same_dtype("anchors", anchors, contrast=contrast)
        if contrast.shape[1] != anchors.shape[1]:
            raise ValueError(f"contrast must have shape [M, D] with D = {anchors.shape[1]} as anchors, "
                             f"got {list(contrast.shape)}")
        if contrast_labels.shape[0] != contrast.shape[0]:
            raise ValueError(f"contrast_labels must have shape [M] = [{contrast.shape[0]}], "
                             f"got {list(contrast_labels.shape)}")
    check_same_device("anchors", anchors, labels=labels, contrast=contrast, contrast_labels=contrast_labels)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not base_temperature > 0:
        raise ValueError(f"base_temperature must be > 0, got {base_temperature!r}")
    if check_values:
        check_finite("anchors", anchors)
        if contrast is not None:
            check_finite("contrast", contrast)
    impl = PIXEL_CONTRAST_LOSS_BACKENDS.resolve(backend, anchors.device)
    return impl(anchors, labels, contrast, contrast_labels, temperature, base_temperature)
