"""Triton kernels for ``onehot_conv``: a convolution whose input is ``cat([one_hot(labels, K), extra])``.

Forward (exact, cost independent of K). For output pixel p and tap d, the padded one-hot input has a
single 1, in channel ``labels[rho(p*stride - pad + d)]`` (rho = reflect map; zero-padding taps hit no
channel), so the one-hot part of the convolution is a gather of weight columns:
    out[b, :, p] = bias + sum_d W[:, labels[rho(...)], d] + sum_d sum_e W[:, K+e, d] * extra[b, e, rho(...)]
The weight is re-laid out by the caller as ``wt [k*k, K, O]`` (one contiguous O-row per (tap, class))
and ``we [k*k, E, O]``. Each program owns one batch item, ``BLOCK_P`` output pixels and ``BLOCK_O``
output channels; extra channels (few: instance edge, RGB) are accumulated as outer products.

Backward of the one-hot weight columns:
    dW[:, c, d] = sum_{b, p : labels[rho(p*stride - pad + d)] = c} grad_out[b, :, p]
a label-segmented sum per tap. Each program loads its grad tile once and, per tap, walks the distinct
labels under the tap's shifted window (typically 1-3 per tile), reducing the tile under each label's
mask and adding the [BLOCK_O] partial into ``dwt[d, c, :]`` atomically (run-to-run order of fp32
additions may differ: not bitwise deterministic). Extra-channel gradients are ordinary convolution
gradients and are left to ``torch.ops.aten.convolution_backward`` by the caller.

Labels outside [0, K) contribute nothing; the public op rejects them when ``check_values=True``.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _acc(dtype: torch.dtype):
    """Accumulator: fp64 for fp64 inputs (so fp64 gradcheck holds), fp32 otherwise."""
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _tap_coords(oy, ox, t, H, W, stride, pad, KS: tl.constexpr, REFLECT: tl.constexpr):
    """Input coordinates of tap t for output pixels (oy, ox), reflected or with an in-image mask."""
    dy = t // KS
    dx = t % KS
    iy = oy * stride - pad + dy
    ix = ox * stride - pad + dx
    if REFLECT:
        # pad < H and pad < W (checked by the op), so one reflection suffices.
        iy = tl.where(iy < 0, -iy, iy)
        iy = tl.where(iy >= H, 2 * (H - 1) - iy, iy)
        ix = tl.where(ix < 0, -ix, ix)
        ix = tl.where(ix >= W, 2 * (W - 1) - ix, ix)
        inside = (iy == iy)
    else:
        inside = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    return iy, ix, inside


@triton.jit
def _onehot_conv_fwd_kernel(lab_ptr, extra_ptr, wt_ptr, we_ptr, bias_ptr, out_ptr,
                            H, W, Ho, Wo, K, E, O, stride, pad,
                            KS: tl.constexpr, REFLECT: tl.constexpr, HAS_BIAS: tl.constexpr,
                            BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, ACC: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    mp = offs_p < Ho * Wo
    mo = offs_o < O
    oy = offs_p // Wo
    ox = offs_p % Wo
    hw = H * W
    acc = tl.zeros([BLOCK_P, BLOCK_O], dtype=ACC)
    for t in range(KS * KS):
        iy, ix, inside = _tap_coords(oy, ox, t, H, W, stride, pad, KS, REFLECT)
        valid = mp & inside
        pix = iy * W + ix
        lab = tl.load(lab_ptr + b * hw + pix, mask=valid, other=0)
        hit = valid & (lab >= 0) & (lab < K)
        w = tl.load(wt_ptr + ((t * K + lab) * O)[:, None] + offs_o[None, :],
                    mask=hit[:, None] & mo[None, :], other=0.0)
        acc += w.to(ACC)
        for e in range(E):
            xv = tl.load(extra_ptr + (b * E + e) * hw + pix, mask=valid, other=0.0).to(ACC)
            we = tl.load(we_ptr + (t * E + e) * O + offs_o, mask=mo, other=0.0).to(ACC)
            acc += xv[:, None] * we[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_o, mask=mo, other=0.0).to(ACC)[None, :]
    hwo = Ho * Wo
    tl.store(out_ptr + (b * O + offs_o[None, :]) * hwo + offs_p[:, None], acc.to(out_ptr.dtype.element_ty),
             mask=mp[:, None] & mo[None, :])


@triton.jit
def _onehot_conv_bwd_w_kernel(g_ptr, lab_ptr, dwt_ptr, H, W, Ho, Wo, K, O, stride, pad,
                              KS: tl.constexpr, REFLECT: tl.constexpr,
                              BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, ACC: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    mp = offs_p < Ho * Wo
    mo = offs_o < O
    oy = offs_p // Wo
    ox = offs_p % Wo
    hw = H * W
    hwo = Ho * Wo
    g = tl.load(g_ptr + (b * O + offs_o[None, :]) * hwo + offs_p[:, None],
                mask=mp[:, None] & mo[None, :], other=0.0).to(ACC)
    for t in range(KS * KS):
        iy, ix, inside = _tap_coords(oy, ox, t, H, W, stride, pad, KS, REFLECT)
        valid = mp & inside
        lab = tl.load(lab_ptr + b * hw + iy * W + ix, mask=valid, other=0)
        remaining = tl.where(valid & (lab >= 0) & (lab < K), lab, 2147483647)
        cur = tl.min(remaining, axis=0)
        while cur < 2147483647:
            sel = remaining == cur
            part = tl.sum(tl.where(sel[:, None], g, 0.0), axis=0)
            tl.atomic_add(dwt_ptr + (t * K + cur) * O + offs_o, part, mask=mo)
            remaining = tl.where(sel, 2147483647, remaining)
            cur = tl.min(remaining, axis=0)


def _blocks(pixels: int, out_channels: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_O, num_warps). The interpreter costs ~1.5 ms per program whatever the block,
    so it gets few large programs; on GPU a 64 x 128 accumulator tile stays in registers."""
    block_o = min(triton.next_power_of_2(out_channels), 128)
    if _interpreting():
        return min(triton.next_power_of_2(pixels), 256), block_o, 4
    return 64, block_o, 4


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def onehot_conv_forward(labels: torch.Tensor, extra: torch.Tensor | None, weight: torch.Tensor,
                        bias: torch.Tensor | None, stride: int, padding: int, reflect: bool) -> torch.Tensor:
    """Forward pass.

    Args:
        labels: [B, H, W] int32, contiguous.
        extra: [B, E, H, W] (E >= 1) in weight's dtype, contiguous, or None.
        weight: [O, K + E, k, k] float, contiguous.
        bias: [O] in weight's dtype, or None.
    Returns:
        [B, O, Ho, Wo] in weight's dtype, Ho = (H + 2*padding - k) // stride + 1 (same for Wo).
    """
    batch, height, width = labels.shape
    out_ch, in_ch, ks = weight.shape[0], weight.shape[1], weight.shape[-1]
    n_extra = 0 if extra is None else extra.shape[1]
    num_classes = in_ch - n_extra
    ho, wo = out_size(height, ks, stride, padding), out_size(width, ks, stride, padding)
    out = torch.empty(batch, out_ch, ho, wo, device=weight.device, dtype=weight.dtype)
    if out.numel() == 0:
        return out
    # [O, Cin, k, k] -> [k*k, Cin, O]: one contiguous O-row per (tap, input channel) for the gather.
    wt_all = weight.permute(2, 3, 1, 0).reshape(ks * ks, in_ch, out_ch)
    wt = wt_all[:, :num_classes].contiguous()
    we = wt_all[:, num_classes:].contiguous() if n_extra else wt
    block_p, block_o, warps = _blocks(ho * wo, out_ch)
    grid = (triton.cdiv(ho * wo, block_p), triton.cdiv(out_ch, block_o), batch)
    _onehot_conv_fwd_kernel[grid](
        labels, extra if extra is not None else labels, wt, we, bias if bias is not None else wt, out,
        height, width, ho, wo, num_classes, n_extra, out_ch, stride, padding,
        KS=ks, REFLECT=reflect, HAS_BIAS=bias is not None,
        BLOCK_P=block_p, BLOCK_O=block_o, ACC=_acc(weight.dtype), num_warps=warps)
    return out


def onehot_conv_weight_grad(grad_out: torch.Tensor, labels: torch.Tensor, num_classes: int, kernel: int,
                            stride: int, padding: int, reflect: bool) -> torch.Tensor:
    """Gradient of the one-hot weight columns.

    Args:
        grad_out: [B, O, Ho, Wo] float, contiguous.
        labels: [B, H, W] int32, contiguous.
    Returns:
        [O, K, k, k] in the accumulator dtype (float64 for float64 grad_out, float32 otherwise).
    """
    batch, out_ch, ho, wo = grad_out.shape
    height, width = labels.shape[1:]
    acc = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    dwt = torch.zeros(kernel * kernel, num_classes, out_ch, device=grad_out.device, dtype=acc)
    if grad_out.numel() > 0:
        block_p, block_o, warps = _blocks(ho * wo, out_ch)
        grid = (triton.cdiv(ho * wo, block_p), triton.cdiv(out_ch, block_o), batch)
        _onehot_conv_bwd_w_kernel[grid](grad_out, labels, dwt, height, width, ho, wo, num_classes, out_ch,
                                        stride, padding, KS=kernel, REFLECT=reflect,
                                        BLOCK_P=block_p, BLOCK_O=block_o, ACC=_acc(grad_out.dtype),
                                        num_warps=warps)
    return dwt.view(kernel, kernel, num_classes, out_ch).permute(3, 2, 0, 1)
