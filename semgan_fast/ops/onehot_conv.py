"""``onehot_conv``: convolution of a one-hot label map concatenated with a few dense channels.

``out = conv2d(pad(cat([one_hot(labels, K), extra], dim=1)), weight, stride) + bias``

This is the first layer of SPADE's shared modulation conv (one-hot segmap [+ instance edge]), of
LGGAN's encoder (reflect-pad 3, 7x7) and of the discriminator (4x4, stride 2, pad 2). With K = 35
or 151 classes the one-hot tensor dominates both the memory and the FLOPs of the dense conv.

Exact fast formulation (cost independent of K): the padded one-hot map has a single 1 per pixel, in
channel ``labels[rho(q)]`` (rho = reflect map; reflect-padding a one-hot map = one-hot of the reflected
labels; a zero-padding tap hits no channel), so
    out[:, p] = bias + sum_taps d W[:, labels[rho(p*s - pad + d)], d]  +  conv(pad(extra), W[:, K:])
Backward: the one-hot weight columns get a label-segmented sum of grad_out per tap
(``dW[:, c, d] = sum_{p: labels[rho(p*s - pad + d)] = c} grad_out[:, p]``); dbias = sum of grad_out;
the extra channels get ordinary conv gradients. Labels get no gradient.

Backends (``ONEHOT_CONV_BACKENDS``): "reference" (literal one_hot + cat + conv2d), "cpu" (PyTorch
``embedding_bag`` gather + ``index_add_`` backward, extra channels by im2col GEMM; CPU tensors), "triton" (kernels/onehot_conv.py;
CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``), "cuda" (CUDA C++ extension, when built).
``auto``: cuda > triton for CUDA tensors, cpu for CPU tensors. The fast backends run inside the
``semgan::onehot_conv`` custom op (torch.compile / torch.export / opcheck compatible).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._checks import (check_finite, check_float, check_label_range, check_labels, check_same_device,
                      check_same_dtype)
from ._dispatch import Backend, BackendTable
from ._library import accumulator_dtype, cpu_available, cuda_ext_available, triton_available

PADDING_MODES = ("zeros", "reflect")
STRIDES = (1, 2)


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------

def onehot_conv_reference(labels: torch.Tensor, extra: torch.Tensor | None, weight: torch.Tensor,
                          bias: torch.Tensor | None = None, padding: int = 0, padding_mode: str = "zeros",
                          stride: int = 1) -> torch.Tensor:
    """Literal formulation: materialise the one-hot map, concatenate, pad, convolve. See ``onehot_conv``.
    Labels outside [0, K) give an all-zero one-hot row (no class), as in every fast backend."""
    n_extra = 0 if extra is None else extra.shape[1]
    num_classes = weight.shape[1] - n_extra
    valid = (labels >= 0) & (labels < num_classes)
    inp = F.one_hot(torch.where(valid, labels, 0).long(), num_classes).permute(0, 3, 1, 2).to(weight.dtype)
    inp = inp * valid.unsqueeze(1).to(weight.dtype)
    if n_extra:
        inp = torch.cat([inp, extra], dim=1)
    if padding:
        inp = F.pad(inp, (padding,) * 4, mode="reflect" if padding_mode == "reflect" else "constant")
    return F.conv2d(inp, weight, bias, stride=stride)


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------

def _out_size(size, kernel: int, stride: int, padding: int):
    return (size + 2 * padding - kernel) // stride + 1


def _extra_grads(grad_out: torch.Tensor, extra: torch.Tensor, weight_extra: torch.Tensor, stride: int,
                 padding: int, reflect: bool, need_extra: bool):
    """Ordinary conv gradients of the extra channels: (dextra [B,E,H,W] or None, dweight_extra [O,E,k,k])."""
    if reflect and padding:
        inp, conv_pad = F.pad(extra, (padding,) * 4, mode="reflect"), 0
    else:
        inp, conv_pad = extra, padding
    d_inp, d_w, _ = torch.ops.aten.convolution_backward(
        grad_out, inp, weight_extra, None, [stride, stride], [conv_pad, conv_pad], [1, 1], False, [0, 0], 1,
        [need_extra, True, False])
    if need_extra and reflect and padding:
        d_inp = torch.ops.aten.reflection_pad2d_backward(d_inp, extra, [padding] * 4)
    return d_inp, d_w


def _transpose_last2(src: torch.Tensor) -> torch.Tensor:
    """[B, M, N] contiguous -> [B, N, M] contiguous, one 2-D transpose per batch item (aten's blocked
    2-D transpose copy; a 4-D permute().contiguous() is several times slower on CPU)."""
    out = src.new_empty(src.shape[0], src.shape[2], src.shape[1])
    for b in range(src.shape[0]):
        out[b].copy_(src[b].t())
    return out


def _reflect_index(size: int, padding: int, device) -> torch.Tensor:
    idx = torch.arange(-padding, size + padding, device=device).abs()
    return torch.where(idx >= size, 2 * (size - 1) - idx, idx)


# ----------------------------------------------------------------------------------------------
# CPU backend: embedding_bag gather (forward), index_add_ (backward)
# ----------------------------------------------------------------------------------------------

def _cpu_tap_index(labels: torch.Tensor, num_classes: int, kernel: int, stride: int, padding: int,
                   reflect: bool) -> torch.Tensor:
    """[B*Ho*Wo, k*k] int64 rows into a [(k*k)*(K+1), O] table: tap t, class c -> t*(K+1) + c.
    Row c = K of each tap is the zero row hit by zero-padding taps and by out-of-range labels."""
    lab = labels.long()
    lab = torch.where((lab >= 0) & (lab < num_classes), lab, num_classes)
    if padding and reflect:
        rows = _reflect_index(lab.shape[1], padding, lab.device)
        cols = _reflect_index(lab.shape[2], padding, lab.device)
        lab = lab[:, rows][:, :, cols]
    elif padding:
        lab = F.pad(lab, (padding,) * 4, value=num_classes)
    windows = lab.unfold(1, kernel, stride).unfold(2, kernel, stride)  # [B, Ho, Wo, k, k] view
    offsets = torch.arange(kernel * kernel, device=lab.device).view(kernel, kernel) * (num_classes + 1)
    # out= keeps the result pixel-major; a plain add picks a strided layout and reshape then copies.
    index = torch.empty(windows.shape, dtype=torch.int64, device=lab.device)
    return torch.add(windows, offsets, out=index).view(-1, kernel * kernel)


def _cpu_extra_cols(extra: torch.Tensor, kernel: int, stride: int, padding: int, reflect: bool) -> torch.Tensor:
    """im2col of the (few) extra channels: [B*Ho*Wo, E*k*k], rows ordered as the gathered output rows."""
    inp = F.pad(extra, (padding,) * 4, mode="reflect" if reflect else "constant") if padding else extra
    cols = F.unfold(inp, kernel, stride=stride)  # [B, E*k*k, Ho*Wo]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _cpu_forward(labels, extra, weight, bias, stride, padding, reflect):
    batch = labels.shape[0]
    out_ch, in_ch, kernel = weight.shape[0], weight.shape[1], weight.shape[-1]
    n_extra = 0 if extra is None else extra.shape[1]
    num_classes = in_ch - n_extra
    ho, wo = _out_size(labels.shape[1], kernel, stride, padding), _out_size(labels.shape[2], kernel, stride, padding)
    cdt = accumulator_dtype(weight.dtype)
    w = weight.to(cdt)
    table = torch.zeros(kernel * kernel, num_classes + 1, out_ch, dtype=cdt, device=weight.device)
    table[:, :num_classes] = w[:, :num_classes].permute(2, 3, 1, 0).reshape(kernel * kernel, num_classes, out_ch)
    if bias is not None:
        # Every output pixel gathers exactly one row of tap 0 (class or zero row): the bias rides along.
        table[0] += bias.to(cdt)
    index = _cpu_tap_index(labels, num_classes, kernel, stride, padding, reflect)
    rows = F.embedding_bag(index, table.view(-1, out_ch), mode="sum")  # [B*Ho*Wo, O], channels-last
    if n_extra:
        # Few extra channels (instance edge, RGB): im2col + one GEMM into the same rows beats conv2d here.
        cols = _cpu_extra_cols(extra.to(cdt), kernel, stride, padding, reflect)
        rows.addmm_(cols, w[:, num_classes:].reshape(out_ch, -1).t())
    return _transpose_last2(rows.view(batch, ho * wo, out_ch)).view(batch, out_ch, ho, wo).to(weight.dtype)


def _cpu_backward(grad_out, labels, extra, weight, stride, padding, reflect, need_extra):
    out_ch, in_ch, kernel = weight.shape[0], weight.shape[1], weight.shape[-1]
    n_extra = 0 if extra is None else extra.shape[1]
    num_classes = in_ch - n_extra
    cdt = accumulator_dtype(weight.dtype)
    batch = grad_out.shape[0]
    # channels-last copy: one O-row per output pixel
    rows = _transpose_last2(grad_out.to(cdt).reshape(batch, out_ch, -1)).view(-1, out_ch)
    index = _cpu_tap_index(labels, num_classes, kernel, stride, padding, reflect).t().contiguous()
    dtable = torch.zeros(kernel * kernel * (num_classes + 1), out_ch, dtype=cdt, device=weight.device)
    for tap in range(kernel * kernel):
        dtable.index_add_(0, index[tap], rows)
    dweight = torch.empty(out_ch, in_ch, kernel, kernel, dtype=cdt, device=weight.device)
    dweight[:, :num_classes] = dtable.view(kernel, kernel, num_classes + 1, out_ch)[:, :, :num_classes].permute(3, 2, 0, 1)
    dextra = None
    if n_extra:
        cols = _cpu_extra_cols(extra.to(cdt), kernel, stride, padding, reflect)
        # GEMM operand orders chosen for MKL: [E*k*k, N] @ [N, O] is ~20x faster than [O, N] @ [N, E*k*k].
        dweight[:, num_classes:] = (cols.t() @ rows).t().reshape(out_ch, n_extra, kernel, kernel)
        if need_extra:
            height, width = extra.shape[2:]
            w_cols = weight[:, num_classes:].to(cdt).reshape(out_ch, -1).t().contiguous()  # [E*k*k, O]
            dcols = (w_cols @ rows.t()).view(w_cols.shape[0], batch, -1).transpose(0, 1)  # [B, E*k*k, L]
            dpad = F.fold(dcols, (height + 2 * padding, width + 2 * padding), kernel, stride=stride)
            if reflect and padding:
                dextra = torch.ops.aten.reflection_pad2d_backward(dpad, extra.to(cdt), [padding] * 4)
            else:
                dextra = dpad[:, :, padding:padding + height, padding:padding + width]
    dbias = rows.sum(dim=0)
    return (dweight.to(weight.dtype), dbias.to(weight.dtype),
            None if dextra is None else dextra.to(weight.dtype, memory_format=torch.contiguous_format))


# ----------------------------------------------------------------------------------------------
# Triton backend
# ----------------------------------------------------------------------------------------------

def _triton_forward(labels, extra, weight, bias, stride, padding, reflect):
    from semgan_fast.kernels.onehot_conv import onehot_conv_forward
    return onehot_conv_forward(labels.to(torch.int32).contiguous(), extra, weight, bias, stride, padding, reflect)


def _triton_backward(grad_out, labels, extra, weight, stride, padding, reflect, need_extra):
    from semgan_fast.kernels.onehot_conv import onehot_conv_weight_grad
    in_ch, kernel = weight.shape[1], weight.shape[-1]
    n_extra = 0 if extra is None else extra.shape[1]
    num_classes = in_ch - n_extra
    dweight = torch.empty_like(weight)
    dweight[:, :num_classes] = onehot_conv_weight_grad(grad_out, labels.to(torch.int32).contiguous(), num_classes,
                                                       kernel, stride, padding, reflect)
    dextra = None
    if n_extra:
        dextra, dwe = _extra_grads(grad_out, extra, weight[:, num_classes:], stride, padding, reflect, need_extra)
        dweight[:, num_classes:] = dwe
    dbias = grad_out.sum(dim=(0, 2, 3), dtype=accumulator_dtype(grad_out.dtype)).to(weight.dtype)
    return dweight, dbias, dextra


# ----------------------------------------------------------------------------------------------
# CUDA C++ backend (semgan_fast/ops/_cuda.py, built separately; optional)
# ----------------------------------------------------------------------------------------------

def _cuda_module():
    from . import _cuda  # only reached when cuda_ext_available() said yes
    return _cuda


def _cuda_forward(labels, extra, weight, bias, stride, padding, reflect):
    return _cuda_module().onehot_conv_forward_cuda(labels.to(torch.int32).contiguous(), extra, weight, bias, stride,
                                                   padding, "reflect" if reflect else "zeros")


def _cuda_backward(grad_out, labels, extra, weight, stride, padding, reflect, need_extra):
    return _cuda_module().onehot_conv_backward_cuda(grad_out, labels.to(torch.int32).contiguous(), extra, weight,
                                                    stride, padding, "reflect" if reflect else "zeros", need_extra)


_FORWARD = {"cpu": _cpu_forward, "triton": _triton_forward, "cuda": _cuda_forward}
_BACKWARD = {"cpu": _cpu_backward, "triton": _triton_backward, "cuda": _cuda_backward}


# ----------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------

def _contig(t):
    return None if t is None else t.contiguous()


@torch.library.custom_op("semgan::onehot_conv", mutates_args=())
def _onehot_conv_op(labels: torch.Tensor, extra: Optional[torch.Tensor], weight: torch.Tensor,
                    bias: Optional[torch.Tensor], stride: int, padding: int, padding_mode: str,
                    backend: str) -> torch.Tensor:
    """Fast-backend forward. extra is None or has E >= 1 channels. Returns [B, O, Ho, Wo]."""
    return _FORWARD[backend](labels.contiguous(), _contig(extra), weight.contiguous(), _contig(bias), stride,
                             padding, padding_mode == "reflect")


@_onehot_conv_op.register_fake
def _(labels, extra, weight, bias, stride, padding, padding_mode, backend):
    kernel = weight.shape[-1]
    return weight.new_empty(labels.shape[0], weight.shape[0], _out_size(labels.shape[1], kernel, stride, padding),
                            _out_size(labels.shape[2], kernel, stride, padding))


@torch.library.custom_op("semgan::onehot_conv_backward", mutates_args=())
def _onehot_conv_backward_op(grad_out: torch.Tensor, labels: torch.Tensor, extra: Optional[torch.Tensor],
                             weight: torch.Tensor, stride: int, padding: int, padding_mode: str, backend: str,
                             need_extra_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dweight [O, K+E, k, k], dbias [O], dextra [B, E, H, W] or an empty [0] tensor)."""
    need = need_extra_grad and extra is not None
    dweight, dbias, dextra = _BACKWARD[backend](grad_out.contiguous(), labels.contiguous(), _contig(extra),
                                                weight.contiguous(), stride, padding, padding_mode == "reflect", need)
    if not need or dextra is None:
        dextra = weight.new_empty(0)
    return dweight, dbias, dextra


@_onehot_conv_backward_op.register_fake
def _(grad_out, labels, extra, weight, stride, padding, padding_mode, backend, need_extra_grad):
    need = need_extra_grad and extra is not None
    dextra = torch.empty_like(extra) if need else weight.new_empty(0)
    return torch.empty_like(weight), weight.new_empty(weight.shape[0]), dextra


def _setup_context(ctx, inputs, output):
    labels, extra, weight, bias, stride, padding, padding_mode, backend = inputs
    ctx.save_for_backward(labels, extra, weight)
    ctx.conf = (stride, padding, padding_mode, backend)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    labels, extra, weight = ctx.saved_tensors
    stride, padding, padding_mode, backend = ctx.conf
    need_extra = extra is not None and ctx.needs_input_grad[1]
    dweight, dbias, dextra = torch.ops.semgan.onehot_conv_backward(grad, labels, extra, weight, stride, padding,
                                                                   padding_mode, backend, need_extra)
    return (None, dextra if need_extra else None, dweight, dbias if ctx.has_bias else None,
            None, None, None, None)


_onehot_conv_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Backend table and public function
# ----------------------------------------------------------------------------------------------



def _via_op(name: str):
    def run(labels, extra, weight, bias, padding, padding_mode, stride):
        return torch.ops.semgan.onehot_conv(labels, extra, weight, bias, stride, padding, padding_mode, name)
    run.__name__ = f"onehot_conv_{name}"
    return run


ONEHOT_CONV_BACKENDS = BackendTable("onehot_conv")
ONEHOT_CONV_BACKENDS.register(Backend("reference", onehot_conv_reference))
# auto order: cuda, cpu, triton. "cpu" only serves CPU tensors and "triton" CUDA tensors (or CPU tensors
# under the interpreter, when asked for by name), so CUDA tensors get cuda > triton, CPU tensors cpu.
ONEHOT_CONV_BACKENDS.register(Backend("cuda", _via_op("cuda"), cuda_ext_available), auto_rank=0)
ONEHOT_CONV_BACKENDS.register(Backend("cpu", _via_op("cpu"), cpu_available), auto_rank=1)
ONEHOT_CONV_BACKENDS.register(Backend("triton", _via_op("triton"), triton_available), auto_rank=2)


def validate_onehot_conv(labels, extra, weight, bias, padding, padding_mode, stride, check_values=False):
    """Checks the arguments of ``onehot_conv``; returns extra normalised to None when it has 0 channels."""
    check_labels("labels", labels, 3)
    check_float("weight", weight, 4)
    if extra is not None:
        check_float("extra", extra, 4)
    if bias is not None:
        check_float("bias", bias, 1)
    check_same_device("weight", weight, labels=labels, extra=extra, bias=bias)
    check_same_dtype("weight", weight, extra=extra, bias=bias)
    batch, height, width = labels.shape
    out_ch, in_ch, kh, kw = weight.shape
    n_extra = 0
    if extra is not None:
        n_extra = extra.shape[1]
        if tuple(extra.shape) != (batch, n_extra, height, width):
            raise ValueError(f"extra must have shape [B, E, H, W] = {[batch, 'E', height, width]} matching labels, "
                             f"got {list(extra.shape)}")
    if kh != kw:
        raise ValueError(f"weight must have a square kernel [O, K+E, k, k], got shape {tuple(weight.shape)}")
    if in_ch - n_extra < 1:
        raise ValueError(f"weight.shape[1] = {in_ch} must exceed the extra channels E = {n_extra} "
                         f"(K = weight.shape[1] - E classes)")
    if out_ch < 1:
        raise ValueError(f"weight must have at least one output channel, got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (out_ch,):
        raise ValueError(f"bias must have shape [O] = [{out_ch}], got {list(bias.shape)}")
    if isinstance(stride, bool) or stride not in STRIDES:
        raise ValueError(f"stride must be one of {STRIDES}, got {stride!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if padding_mode == "reflect" and (padding >= height or padding >= width):
        raise ValueError(f"padding={padding} with padding_mode='reflect' needs H and W > padding, "
                         f"got labels of shape {tuple(labels.shape)}")
    if height + 2 * padding < kh or width + 2 * padding < kw:
        raise ValueError(f"padding={padding}: the padded input {height + 2 * padding}x{width + 2 * padding} is "
                         f"smaller than the {kh}x{kw} kernel")
    if check_values:
        check_label_range("labels", labels, in_ch - n_extra)
        if extra is not None:
            check_finite("extra", extra)
    return extra if n_extra else None


def onehot_conv(labels: torch.Tensor, extra: torch.Tensor | None, weight: torch.Tensor,
                bias: torch.Tensor | None = None, padding: int = 0, padding_mode: str = "zeros", stride: int = 1,
                backend: str = "auto", check_values: bool = False) -> torch.Tensor:
    """Convolution of ``cat([one_hot(labels, K), extra], 1)`` without materialising the one-hot map.

    Args:
        labels: class map [B, H, W], any integer dtype, values in [0, K). No gradient.
        extra: dense channels [B, E, H, W] in weight's dtype (e.g. the instance edge map), or None.
            E = 0 is the same as None.
        weight: [O, K + E, k, k] float16/bfloat16/float32/float64; the first K input channels belong to
            the one-hot classes (K = weight.shape[1] - E), the last E to ``extra``.
        bias: [O] or None.
        padding: p >= 0 on every side; output size (H + 2p - k) // stride + 1 (p = k // 2 keeps H, W at
            stride 1; SPADE's discriminator uses k = 4, stride 2, p = 2).
        padding_mode: "zeros" or "reflect" (reflect of a one-hot map = one-hot of the reflected labels;
            needs p < H, W).
        stride: 1 or 2.
        backend: "auto", "reference", "cpu", "triton", "cuda" (see ``ONEHOT_CONV_BACKENDS``).
        check_values: also verify the label range and finiteness of extra (synchronises with the device).

    Returns:
        [B, O, Ho, Wo] in weight's dtype. Labels outside [0, K) (unchecked) contribute nothing on the
        fast backends; the reference raises on them.
    """
    extra = validate_onehot_conv(labels, extra, weight, bias, padding, padding_mode, stride, check_values)
    impl = ONEHOT_CONV_BACKENDS.resolve(backend, weight.device)
    return impl(labels, extra, weight, bias, padding, padding_mode, stride)
