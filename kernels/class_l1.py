"""Triton kernels for ``class_l1``: the local L1 loss in one pass over ``per_class_out``.

``loss = (1/N) sum_{b,c,p} sum_k | image[b,c,p] * [labels[b,p] == k] - out[b,k,c,p] |`` with
N = B*C*H*W (every class term is a mean over the same N elements). Each program owns one (b, c) row
and a block of pixels, loads image and labels once, streams the K class outputs and writes one
partial sum; the caller sums the partials (deterministic, no atomics, no host sync).

Backward (s = upstream grad / N, sign(0) = 0 as in autograd's abs):
    grad_out[b,k,c,p] = -s * sign(image*[l==k] - out_k)
    grad_image[b,c,p] =  s * sign(image - out_{l(p)})   (0 where l(p) is outside [0, K))
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
def _class_l1_fwd_kernel(out_ptr, img_ptr, lab_ptr, partial_ptr, C, HW, K,
                         BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    pid_p = tl.program_id(0)
    row = tl.program_id(1)  # b * C + c
    b = (row // C).to(tl.int64)
    c = (row % C).to(tl.int64)
    offs = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    m = offs < HW
    img = tl.load(img_ptr + (b * C + c) * HW + offs, mask=m, other=0.0).to(ACC)
    lab = tl.load(lab_ptr + b * HW + offs, mask=m, other=-1)
    acc = tl.zeros([BLOCK_P], dtype=ACC)
    for k in range(K):
        o = tl.load(out_ptr + ((b * K + k) * C + c) * HW + offs, mask=m, other=0.0).to(ACC)
        acc += tl.abs(tl.where(lab == k, img, 0.0) - o)
    tl.store(partial_ptr + row * tl.num_programs(0) + pid_p, tl.sum(acc, axis=0))


@triton.jit
def _class_l1_bwd_kernel(out_ptr, img_ptr, lab_ptr, scale_ptr, gout_ptr, gimg_ptr, C, HW, K,
                         BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    pid_p = tl.program_id(0)
    row = tl.program_id(1)
    b = (row // C).to(tl.int64)
    c = (row % C).to(tl.int64)
    offs = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    m = offs < HW
    s = tl.load(scale_ptr).to(ACC)  # upstream grad / N, read on device: no host sync
    img = tl.load(img_ptr + (b * C + c) * HW + offs, mask=m, other=0.0).to(ACC)
    lab = tl.load(lab_ptr + b * HW + offs, mask=m, other=-1)
    gimg = tl.zeros([BLOCK_P], dtype=ACC)
    for k in range(K):
        base = ((b * K + k) * C + c) * HW
        o = tl.load(out_ptr + base + offs, mask=m, other=0.0).to(ACC)
        own = lab == k
        d = tl.where(own, img, 0.0) - o
        sgn = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0)).to(ACC)
        tl.store(gout_ptr + base + offs, (-s * sgn).to(gout_ptr.dtype.element_ty), mask=m)
        gimg += tl.where(own, sgn, 0.0)
    tl.store(gimg_ptr + (b * C + c) * HW + offs, (s * gimg).to(gimg_ptr.dtype.element_ty), mask=m)


def _block(hw: int) -> tuple[int, int]:
    """(BLOCK_P, num_warps): few large programs in the interpreter (~1.5 ms each), 1024 on GPU."""
    if _interpreting():
        return min(triton.next_power_of_2(hw), 4096), 4
    return min(triton.next_power_of_2(hw), 1024), 4


def class_l1_forward(per_class_out: torch.Tensor, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss value.

    Args:
        per_class_out: [B, K, C, H, W] float, contiguous.
        image: [B, C, H, W] same dtype, contiguous.
        labels: [B, H, W] int32, contiguous.
    Returns:
        0-dim tensor, float64 for float64 inputs, float32 otherwise.
    """
    batch, num_classes, channels, height, width = per_class_out.shape
    hw = height * width
    acc = torch.float64 if image.dtype == torch.float64 else torch.float32
    n = batch * channels * hw
    if n == 0:
        return torch.full((), float("nan"), device=image.device, dtype=acc)  # mean of nothing, as torch
    block, warps = _block(hw)
    grid = (triton.cdiv(hw, block), batch * channels)
    partial = torch.empty(grid[1] * grid[0], device=image.device, dtype=acc)
    _class_l1_fwd_kernel[grid](per_class_out, image, labels, partial, channels, hw, num_classes,
                               BLOCK_P=block, ACC=_acc(image.dtype), num_warps=warps)
    return partial.sum() / n


def class_l1_backward(grad: torch.Tensor, per_class_out: torch.Tensor, image: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the loss.

    Args:
        grad: 0-dim upstream gradient (any float dtype, on the inputs' device).
        per_class_out, image, labels: as in ``class_l1_forward``.
    Returns:
        (grad_per_class_out [B, K, C, H, W], grad_image [B, C, H, W]) in the inputs' dtype.
    """
    batch, num_classes, channels, height, width = per_class_out.shape
    hw = height * width
    acc = torch.float64 if image.dtype == torch.float64 else torch.float32
    gout = torch.empty_like(per_class_out)
    gimg = torch.empty_like(image)
    n = batch * channels * hw
    if n == 0 or num_classes == 0:
        return gout.zero_(), gimg.zero_()
    scale = (grad.to(acc) / n).reshape(1).contiguous()
    block, warps = _block(hw)
    grid = (triton.cdiv(hw, block), batch * channels)
    _class_l1_bwd_kernel[grid](per_class_out, image, labels, scale, gout, gimg, channels, hw, num_classes,
                               BLOCK_P=block, ACC=_acc(image.dtype), num_warps=warps)
    return gout, gimg
