"""``class_conv``: LGGAN's masked per-class feature filtering (Eq. 1) followed by each class's conv.

For every class i: ``out[:, i] = act(conv(pad(x * (labels == i)), weight[i]) + bias[i])``.

The reference below follows the public formulation literally (K masked copies, K convolutions).
The fast backends use the exact *gather* formulation (kernel-design.md §3): with rho the padding
index map, tap d of output pixel p reads input pixel q = rho(p + d) and contributes only to class
labels[q]: ``z[labels[q]](p) += weight[labels[q]][:, :, d] @ x(q)``; every class starts from its
bias, so a class absent from p's window gives ``act(bias)`` exactly. Masked copies are never built
and the multiply-adds do not depend on K (only writing the K*O output channels does).

Backends (``CLASS_CONV_BACKENDS``; ``auto`` order: cuda > triton on CUDA tensors, cpu on CPU):

* ``reference``: the naive loop above (plain PyTorch autograd).
* ``cpu``: :func:`class_conv_forward_cpu` / :func:`class_conv_backward_cpu` (this file): pixels
  sorted by class, one ``[n_c, C] x [C, k*k*O]`` matmul per present class, then a per-tap
  scatter-add into the class channel. Deterministic.
* ``triton``: ``semgan_fast.kernels.class_conv`` (GPU; on CPU only under ``TRITON_INTERPRET=1``).
* ``cuda``: ``semgan_fast.ops._cuda`` (``cuda_ext_available()``, ``class_conv_forward_cuda``,
  ``class_conv_backward_cuda``); unavailable when that module or its extension is missing.

Every fast backend supplies two functions with these signatures (inputs already contiguous,
labels int32; values outside [0, K) contribute to no class, as in the reference):

* ``forward(x [B,C,H,W], labels int32 [B,H,W], weight [K,O,C,k,k], bias [K,O] | None,
  padding_mode: str, activation: str | None) -> out [B,K,O,H,W]`` (x's dtype).
* ``backward(grad_out [B,K,O,H,W], x, labels, weight, bias | None, out [B,K,O,H,W],
  padding_mode, activation) -> (dx [B,C,H,W], dweight [K,O,C,k,k], dbias [K,O] | None)``, where
  ``out`` is the forward output (the tanh derivative is ``1 - out**2``).

They run inside the custom ops ``semgan::class_conv`` and ``semgan::class_conv_backward``
(``torch.library``: fake tensors, autograd, torch.compile / export, ``opcheck``).
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F

from ._checks import (check_dim, check_finite, check_float, check_label_range, check_labels,
                      check_same_device, check_same_dtype)
from ._dispatch import Backend, BackendTable
from ._library import (NAMESPACE, FastImpl, accumulator_dtype, cpu_available, cuda_ext_available,
                       triton_available)

PADDING_MODES = ("reflect", "zeros")
ACTIVATIONS = (None, "tanh")


def class_conv_reference(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         padding_mode: str = "reflect", activation: str | None = None) -> torch.Tensor:
    """Naive per-class loop: K masked copies of ``x``, K padded convolutions. See ``class_conv``."""
    num_classes, kernel = weight.shape[0], weight.shape[-1]
    pad = kernel // 2
    outputs = []
    for i in range(num_classes):
        masked = x * (labels == i).unsqueeze(1).to(x.dtype)
        if padding_mode == "reflect":
            masked = F.pad(masked, (pad, pad, pad, pad), mode="reflect")
        else:
            masked = F.pad(masked, (pad, pad, pad, pad))
        outputs.append(F.conv2d(masked, weight[i], None if bias is None else bias[i]))
    out = torch.stack(outputs, dim=1)
    return torch.tanh(out) if activation == "tanh" else out


# ---------------------------------------------------------------------------------------------
# CPU backend: exact gather formulation with plain PyTorch ops.
#
# Rewritten per input pixel q: Y(q) = W_{l(q)} x(q) with W_c viewed as [k*k*O, C] holds every tap's
# O-vector that q sends out; output pixel p then receives Y(rho(p+d))[d] in class l(rho(p+d)).
# Pixels are sorted by class so Y costs one matmul per present class (N*C*k*k*O MACs in all,
# whatever K); the per-tap scatter-add touches B*H*W*O values per tap.
# ---------------------------------------------------------------------------------------------


def _reflect_map(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """rho for padded coordinates -pad .. n+pad-1 (reflect without repeating the edge), int64 [n+2*pad]."""
    u = torch.arange(-pad, n + pad, device=device).abs()
    return torch.where(u >= n, 2 * (n - 1) - u, u)


def _fill_reflect_border(planes: torch.Tensor, pad: int) -> None:
    """In place: fill the pad-wide border of planes [..., H+2p, W+2p] by reflecting the interior."""
    if pad == 0:
        return
    hp, wp = planes.shape[-2], planes.shape[-1]
    h, w = hp - 2 * pad, wp - 2 * pad
    dev = planes.device
    # Padded index pad-j mirrors pad+j (j = 1..pad); pad+n-1+j mirrors pad+n-1-j.
    left = torch.arange(2 * pad, pad, -1, device=dev)
    right = torch.arange(pad + w - 2, w - 2, -1, device=dev)
    top = torch.arange(2 * pad, pad, -1, device=dev)
    bottom = torch.arange(pad + h - 2, h - 2, -1, device=dev)
    rows = planes[..., pad:pad + h, :]
    rows[..., :pad] = rows.index_select(-1, left)
    rows[..., pad + w:] = rows.index_select(-1, right)
    # Rows after columns, so the corners get the doubly reflected values.
    planes[..., :pad, :] = planes.index_select(-2, top)
    planes[..., pad + h:, :] = planes.index_select(-2, bottom)


def _fold_reflect_border(planes: torch.Tensor, pad: int) -> None:
    """In place: adjoint of ``_fill_reflect_border``; adds the border into the interior it mirrors."""
    if pad == 0:
        return
    hp, wp = planes.shape[-2], planes.shape[-1]
    h, w = hp - 2 * pad, wp - 2 * pad
    dev = planes.device
    top = torch.arange(2 * pad, pad, -1, device=dev)
    bottom = torch.arange(pad + h - 2, h - 2, -1, device=dev)
    left = torch.arange(2 * pad, pad, -1, device=dev)
    right = torch.arange(pad + w - 2, w - 2, -1, device=dev)
    # Reverse order of the fill: rows first (they carry the corners), then columns.
    planes.index_add_(planes.dim() - 2, top, planes[..., :pad, :].clone())
    planes.index_add_(planes.dim() - 2, bottom, planes[..., pad + h:, :].clone())
    rows = planes[..., pad:pad + h, :]
    rows.index_add_(rows.dim() - 1, left, rows[..., :pad].clone())
    rows.index_add_(rows.dim() - 1, right, rows[..., pad + w:].clone())


class _CpuPlan:
    """Class-sorted pixel order and padded geometry shared by the CPU forward and backward."""

    def __init__(self, labels: torch.Tensor, num_classes: int, kernel: int, padding_mode: str):
        batch, height, width = labels.shape
        pad = kernel // 2
        dev = labels.device
        key = labels.reshape(-1).long()
        valid = (key >= 0) & (key < num_classes)
        # Out-of-range labels belong to no class (as in the reference): sort them last, skip them.
        key = torch.where(valid, key, num_classes)
        self.order = torch.argsort(key, stable=True)
        self.counts = torch.bincount(key, minlength=num_classes + 1)[:num_classes].tolist()
        self.num_valid = sum(self.counts)
        self.pad, self.kernel = pad, kernel
        self.shape = (batch, height, width)
        hp, wp = height + 2 * pad, width + 2 * pad
        b = torch.arange(batch, device=dev).view(batch, 1, 1)
        h = torch.arange(height, device=dev).view(1, height, 1)
        w = torch.arange(width, device=dev).view(1, 1, width)
        # Flat index of each pixel's interior position in [B, H+2p, W+2p], in class-sorted order.
        self.dest = ((b * hp + h + pad) * wp + w + pad).reshape(-1)[self.order]
        # Class index of every padded position; invalid labels and zero padding read class 0 and
        # always come with a zero value (forward) or are never read back (backward).
        lab = torch.where(valid, key, 0).view(batch, height, width)
        if padding_mode == "reflect":
            lab = lab.index_select(1, _reflect_map(height, pad, dev)).index_select(2, _reflect_map(width, pad, dev))
        else:
            lab = F.pad(lab, (pad, pad, pad, pad))
        self.labpad = lab

    def segments(self):
        start = 0
        for c, n in enumerate(self.counts):
            if n:
                yield c, start, start + n
            start += n

    def tap_index(self, i: int, j: int, channels: int) -> torch.Tensor:
        """Class of the input pixel that tap (i, j) reads for every output pixel: [B, 1, O, H, W]."""
        batch, height, width = self.shape
        return self.labpad[:, None, None, i:i + height, j:j + width].expand(batch, 1, channels, height, width)


def _sorted_channels(x: torch.Tensor, order: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x [B, C, H, W] -> [C, B*H*W] with pixels in ``order`` (channel rows stay contiguous)."""
    batch, channels = x.shape[:2]
    flat = x.to(dtype)
    flat = flat.view(channels, -1) if batch == 1 else flat.transpose(0, 1).reshape(channels, -1)
    return flat.index_select(1, order)


def class_conv_forward_cpu(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor | None, padding_mode: str, activation: str | None) -> torch.Tensor:
    """Exact gather forward on CPU. Shapes as in the backend contract (module docstring).

    Accumulates in fp32 (fp64 for fp64 inputs) and returns x's dtype.
    """
    batch, channels, height, width = x.shape
    num_classes, out_ch, _, kernel, _ = weight.shape
    acc = accumulator_dtype(x.dtype)
    plan = _CpuPlan(labels, num_classes, kernel, padding_mode)
    pad, taps = plan.pad, kernel * kernel
    feats = taps * out_ch  # row f = d*O + o of the per-class projection matrix
    xs = _sorted_channels(x, plan.order, acc)                                  # [C, N]
    wm = weight.to(acc).permute(0, 3, 4, 1, 2).reshape(num_classes, feats, channels)
    ys = torch.empty(x.numel() // channels, feats, dtype=acc, device=x.device)  # [N, F], sorted
    for c, lo, hi in plan.segments():
        torch.mm(xs[:, lo:hi].t(), wm[c].t(), out=ys[lo:hi])
    ys[plan.num_valid:] = 0  # pixels with out-of-range labels send nothing
    # Padded planes [F, B, H+2p, W+2p]: the interior is fully written; reflect fills the border.
    new_planes = torch.empty if padding_mode == "reflect" else torch.zeros
    ypad = new_planes(feats, batch, height + 2 * pad, width + 2 * pad, dtype=acc, device=x.device)
    ypad.view(feats, -1)[:, plan.dest] = ys.t()
    if padding_mode == "reflect":
        _fill_reflect_border(ypad, pad)
    out = torch.empty(batch, num_classes, out_ch, height, width, dtype=acc, device=x.device)
    if bias is None:
        out.zero_()
    else:
        out.copy_(bias.to(acc).view(1, num_classes, out_ch, 1, 1).expand_as(out))
    for d in range(taps):
        i, j = divmod(d, kernel)
        src = ypad[d * out_ch:(d + 1) * out_ch, :, i:i + height, j:j + width].transpose(0, 1).unsqueeze(1)
        out.scatter_add_(1, plan.tap_index(i, j, out_ch), src)
    if activation == "tanh":
        out.tanh_()
    return out.to(x.dtype)


def class_conv_backward_cpu(grad_out: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None, out: torch.Tensor, padding_mode: str,
                            activation: str | None):
    """Exact gather backward on CPU: (dx [B,C,H,W], dweight [K,O,C,k,k], dbias [K,O] or None).

    g = grad_out * (1 - out**2) for tanh. dY(q)[d, o] collects g_{l(q)}[o](p) over every (p, d)
    with rho(p + d) = q (a per-tap gather into padded planes, then the reflect border folded back);
    then per class c: dx(q) = W_c^T dY(q) and dW_c = sum_q dY(q) x(q)^T, db_c = sum_p g_c(p).
    """
    batch, channels, height, width = x.shape
    num_classes, out_ch, _, kernel, _ = weight.shape
    acc = accumulator_dtype(x.dtype)
    plan = _CpuPlan(labels, num_classes, kernel, padding_mode)
    pad, taps = plan.pad, kernel * kernel
    feats = taps * out_ch
    g = grad_out.to(acc)
    if activation == "tanh":
        o = out.to(acc)
        g = torch.addcmul(g, g * o, o, value=-1)  # g * (1 - out^2)
    dbias = g.sum(dim=(0, 3, 4)).to(bias.dtype) if bias is not None else None
    dypad = torch.zeros(feats, batch, height + 2 * pad, width + 2 * pad, dtype=acc, device=x.device)
    for d in range(taps):
        i, j = divmod(d, kernel)
        dst = dypad[d * out_ch:(d + 1) * out_ch, :, i:i + height, j:j + width].transpose(0, 1).unsqueeze(1)
        torch.gather(g, 1, plan.tap_index(i, j, out_ch), out=dst)               # straight into the planes
    if padding_mode == "reflect":
        _fold_reflect_border(dypad, pad)
    # Zero padding: the border collects taps that read nothing; it is simply never read back.
    dys = dypad.view(feats, -1).index_select(1, plan.dest)                      # [F, N], sorted
    xs = _sorted_channels(x, plan.order, acc)                                  # [C, N]
    wm = weight.to(acc).permute(0, 3, 4, 1, 2).reshape(num_classes, feats, channels)
    dxs = torch.empty(xs.shape[1], channels, dtype=acc, device=x.device)
    dxs[plan.num_valid:] = 0
    dwm = torch.zeros(num_classes, feats, channels, dtype=acc, device=x.device)
    for c, lo, hi in plan.segments():
        torch.mm(dys[:, lo:hi].t(), wm[c], out=dxs[lo:hi])
        torch.mm(dys[:, lo:hi], xs[:, lo:hi].t(), out=dwm[c])
    dx = torch.empty_like(dxs).index_copy_(0, plan.order, dxs)
    dx = dx.view(batch, height, width, channels).permute(0, 3, 1, 2).contiguous().to(x.dtype)
    dweight = dwm.view(num_classes, kernel, kernel, out_ch, channels).permute(0, 3, 4, 1, 2)
    return dx, dweight.contiguous().to(weight.dtype), dbias


# ---------------------------------------------------------------------------------------------
# torch.library registration: one custom op per direction, dispatching on the backend name.
# ---------------------------------------------------------------------------------------------

_FAST_IMPLS = {
    "cpu": FastImpl(__name__, "class_conv_forward_cpu", "class_conv_backward_cpu"),
    "triton": FastImpl("semgan_fast.kernels.class_conv", "class_conv_forward_triton", "class_conv_backward_triton"),
    "cuda": FastImpl("semgan_fast.ops._cuda", "class_conv_forward_cuda", "class_conv_backward_cuda"),
}


def _fast_impl(backend: str) -> FastImpl:
    if backend not in _FAST_IMPLS:
        raise ValueError(f"backend must be one of {sorted(_FAST_IMPLS)} inside {NAMESPACE}::class_conv, got {backend!r}")
    return _FAST_IMPLS[backend]


def _opt_contig(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


@torch.library.custom_op(f"{NAMESPACE}::class_conv", mutates_args=())
def _class_conv_op(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   padding_mode: str, activation: Optional[str], backend: str) -> torch.Tensor:
    forward, _ = _fast_impl(backend).load()
    return forward(x.contiguous(), labels.to(torch.int32).contiguous(), weight.contiguous(), _opt_contig(bias),
                   padding_mode, activation)


@_class_conv_op.register_fake
def _class_conv_fake(x, labels, weight, bias, padding_mode, activation, backend):
    batch, _, height, width = x.shape
    return x.new_empty((batch, weight.shape[0], weight.shape[1], height, width))


@torch.library.custom_op(f"{NAMESPACE}::class_conv_backward", mutates_args=())
def _class_conv_backward_op(grad_out: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                            bias: Optional[torch.Tensor], out: torch.Tensor, padding_mode: str,
                            activation: Optional[str], backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, backward = _fast_impl(backend).load()
    dx, dweight, dbias = backward(grad_out.contiguous(), x.contiguous(), labels.to(torch.int32).contiguous(),
                                  weight.contiguous(), _opt_contig(bias), out.contiguous(), padding_mode, activation)
    if dbias is None:  # schema has no optional outputs; autograd drops it when bias is None
        dbias = weight.new_zeros(weight.shape[:2])
    return dx, dweight, dbias


@_class_conv_backward_op.register_fake
def _class_conv_backward_fake(grad_out, x, labels, weight, bias, out, padding_mode, activation, backend):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[:2])


def _class_conv_setup_context(ctx, inputs, output):
    x, labels, weight, bias, padding_mode, activation, backend = inputs
    ctx.save_for_backward(x, labels, weight, bias, output)
    ctx.padding_mode, ctx.activation, ctx.backend = padding_mode, activation, backend
    ctx.has_bias = bias is not None


def _class_conv_autograd(ctx, grad_out):
    x, labels, weight, bias, out = ctx.saved_tensors
    dx, dweight, dbias = torch.ops.semgan.class_conv_backward(grad_out, x, labels, weight, bias, out,
                                                              ctx.padding_mode, ctx.activation, ctx.backend)
    return dx, None, dweight, (dbias if ctx.has_bias else None), None, None, None


_class_conv_op.register_autograd(_class_conv_autograd, setup_context=_class_conv_setup_context)


def _class_conv_via_op(x, labels, weight, bias, padding_mode, activation, *, backend: str) -> torch.Tensor:
    return torch.ops.semgan.class_conv(x, labels, weight, bias, padding_mode, activation, backend)


CLASS_CONV_BACKENDS = BackendTable("class_conv")
CLASS_CONV_BACKENDS.register(Backend("reference", class_conv_reference))
# Auto order cuda > cpu > triton: the cpu backend only takes CPU tensors, so on CUDA tensors auto
# means cuda > triton, and on CPU tensors it never picks the Triton interpreter.
CLASS_CONV_BACKENDS.register(Backend("cuda", partial(_class_conv_via_op, backend="cuda"), cuda_ext_available),
                             auto_rank=0)
CLASS_CONV_BACKENDS.register(Backend("cpu", partial(_class_conv_via_op, backend="cpu"), cpu_available),
                             auto_rank=1)
CLASS_CONV_BACKENDS.register(Backend("triton", partial(_class_conv_via_op, backend="triton"), triton_available),
                             auto_rank=2)


def validate_class_conv(x, labels, weight, bias, padding_mode, activation, check_values=False) -> None:
    check_float("x", x, 4)
    check_labels("labels", labels, 3)
    check_float("weight", weight, 5)
    check_same_device("x", x, labels=labels, weight=weight, bias=bias)
    check_same_dtype("x", x, weight=weight, bias=bias)
    batch, channels, height, width = x.shape
    num_classes, _, in_channels, kh, kw = weight.shape
    if labels.shape != (batch, height, width):
        raise ValueError(f"labels must have shape [B, H, W] = {[batch, height, width]} matching x, "
                         f"got {list(labels.shape)}")
    check_dim("weight", weight, 2, channels, "x.shape[1] (input channels)")
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"weight must have a square, odd kernel [K, O, C, k, k], got shape {tuple(weight.shape)}")
    if bias is not None:
        check_float("bias", bias, 2)
        if tuple(bias.shape) != tuple(weight.shape[:2]):
            raise ValueError(f"bias must have shape [K, O] = {list(weight.shape[:2])}, got {list(bias.shape)}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if padding_mode == "reflect" and (kh // 2 >= height or kh // 2 >= width):
        raise ValueError(f"padding_mode='reflect' needs H and W > kernel//2 = {kh // 2}, got x of shape {tuple(x.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if num_classes < 1:
        raise ValueError("weight.shape[0] (number of classes K) must be >= 1")
    if check_values:
        check_label_range("labels", labels, num_classes)
        check_finite("x", x)


def class_conv(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               padding_mode: str = "reflect", activation: str | None = None, backend: str = "auto",
               check_values: bool = False) -> torch.Tensor:
    """Masked per-class filtering + per-class convolution (LGGAN Eq. 1 and the local branch).

    Args:
        x: features [B, C, H, W], float16/bfloat16/float32/float64.
        labels: class map [B, H, W], any integer dtype, values in [0, K).
        weight: per-class conv weights [K, O, C, k, k] (k odd), same dtype as x.
        bias: per-class bias [K, O] or None.
        padding_mode: "reflect" (LGGAN) or "zeros"; padding is k // 2 so H, W are kept.
        activation: None or "tanh" (applied per class, as LGGAN's class generators do).
        backend: "auto", "reference", or a fast backend name (see ``CLASS_CONV_BACKENDS``).
        check_values: also verify label range and finiteness of x (synchronises with the device).

    Returns:
        [B, K, O, H, W] in x's dtype: ``out[:, i] = act(conv(pad(x * (labels == i)), weight[i]) + bias[i])``.
    """
    validate_class_conv(x, labels, weight, bias, padding_mode, activation, check_values)
    impl = CLASS_CONV_BACKENDS.resolve(backend, x.device)
    if (backend == "auto" and impl is CLASS_CONV_BACKENDS.backends["cuda"].fn
            and weight.shape[-1] not in _cuda_kernel_sizes()):
        impl = CLASS_CONV_BACKENDS.resolve("triton", x.device)  # kernel size the CUDA kernels do not cover
    return impl(x, labels, weight, bias, padding_mode, activation)


def _cuda_kernel_sizes() -> tuple[int, ...]:
    """Kernel sizes the CUDA backend implements (``_cuda.CLASS_CONV_KERNEL_SIZES``; all when unstated)."""
    try:
        from . import _cuda
    except ImportError:
        return ()
    return tuple(getattr(_cuda, "CLASS_CONV_KERNEL_SIZES", range(1, 64, 2)))
