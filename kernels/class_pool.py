"""Triton kernels for ``class_pool``: per-class segment sums of a feature map (forward) and the
label gather of the pooled gradient (backward).

Forward. Each program owns one batch item, a block of ``BLOCK_C`` channels and a block of
``BLOCK_P`` pixels. It loads the tile once and walks the *distinct* labels of its pixels (a tile
of neighbouring pixels typically holds 1-3 classes), reducing the tile under each label's mask and
adding the [BLOCK_C] partial into ``sums[b, k, :]`` with one atomic per channel. Work is
O(pixels x channels x distinct classes per tile), independent of K, and there is no host sync.
Pixel counts per class are accumulated by the channel-block-0 programs.

Backward. ``grad_x[b, c, p] = gscaled[b, labels[b, p], c]`` where ``gscaled`` = grad_pooled
divided by the divisor (computed by the caller on the small [B, K, C] tensor).

Labels outside [0, K) are ignored (forward) and receive a zero gradient (backward); the public op
rejects them when ``check_values=True``.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# In the kernels, 2147483647 (int32 max) marks pixels whose label has been consumed or masked out.


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _acc(dtype: torch.dtype):
    """Accumulator: fp64 for fp64 inputs (so fp64 gradcheck holds), fp32 otherwise."""
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _class_pool_fwd_kernel(x_ptr, lab_ptr, sums_ptr, counts_ptr, C, HW, K,
                           BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mp = offs_p < HW
    mc = offs_c < C
    lab = tl.load(lab_ptr + b * HW + offs_p, mask=mp, other=0)
    x = tl.load(x_ptr + b * C * HW + offs_c[:, None] * HW + offs_p[None, :],
                mask=mc[:, None] & mp[None, :], other=0.0).to(ACC)
    remaining = tl.where(mp, lab, 2147483647)
    cur = tl.min(remaining, axis=0)
    while cur < 2147483647:
        sel = remaining == cur
        part = tl.sum(tl.where(sel[None, :], x, 0.0), axis=1)
        ok = (cur >= 0) & (cur < K)
        tl.atomic_add(sums_ptr + (b * K + cur) * C + offs_c, part, mask=mc & ok)
        cnt = tl.sum(sel.to(tl.int32), axis=0)
        tl.atomic_add(counts_ptr + b * K + cur, cnt, mask=ok & (pid_c == 0))
        remaining = tl.where(sel, 2147483647, remaining)
        cur = tl.min(remaining, axis=0)


@triton.jit
def _class_pool_bwd_kernel(g_ptr, lab_ptr, gx_ptr, C, HW, K,
                           BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mp = offs_p < HW
    mc = offs_c < C
    lab = tl.load(lab_ptr + b * HW + offs_p, mask=mp, other=0)
    ok = mp & (lab >= 0) & (lab < K)
    g = tl.load(g_ptr + (b * K + lab[None, :]) * C + offs_c[:, None], mask=mc[:, None] & ok[None, :], other=0.0)
    tl.store(gx_ptr + b * C * HW + offs_c[:, None] * HW + offs_p[None, :],
             g.to(gx_ptr.dtype.element_ty), mask=mc[:, None] & mp[None, :])


def _blocks(channels: int, hw: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_P, num_warps). The interpreter costs ~1.5 ms per program whatever the block,
    so it gets few large programs; on GPU a 64 x 128 tile keeps the accumulator in registers."""
    if _interpreting():
        return min(triton.next_power_of_2(channels), 64), min(triton.next_power_of_2(hw), 1024), 4
    return min(triton.next_power_of_2(channels), 64), 128, 4


def class_pool_sums(x: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Per-class sums and pixel counts.

    Args:
        x: [B, C, H, W] float16/bfloat16/float32/float64, contiguous.
        labels: [B, H, W] int32, contiguous.
    Returns:
        sums [B, K, C] float32 (float64 for float64 x), counts [B, K] int32.
    """
    batch, channels, height, width = x.shape
    hw = height * width
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    sums = torch.zeros(batch, num_classes, channels, device=x.device, dtype=acc)
    counts = torch.zeros(batch, num_classes, device=x.device, dtype=torch.int32)
    if x.numel() == 0:
        return sums, counts
    block_c, block_p, warps = _blocks(channels, hw)
    grid = (triton.cdiv(hw, block_p), triton.cdiv(channels, block_c), batch)
    _class_pool_fwd_kernel[grid](x, labels, sums, counts, channels, hw, num_classes,
                                 BLOCK_C=block_c, BLOCK_P=block_p, ACC=_acc(x.dtype), num_warps=warps)
    return sums, counts


def class_pool_grad_x(gscaled: torch.Tensor, labels: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Gradient w.r.t. x.

    Args:
        gscaled: [B, K, C] grad_pooled already divided by the divisor, contiguous.
        labels: [B, H, W] int32, contiguous.
        out_dtype: dtype of x.
    Returns:
        grad_x [B, C, H, W] in out_dtype.
    """
    batch, num_classes, channels = gscaled.shape
    height, width = labels.shape[1:]
    hw = height * width
    gx = torch.empty(batch, channels, height, width, device=gscaled.device, dtype=out_dtype)
    if gx.numel() == 0:
        return gx
    block_c, block_p, warps = _blocks(channels, hw)
    grid = (triton.cdiv(hw, block_p), triton.cdiv(channels, block_c), batch)
    _class_pool_bwd_kernel[grid](gscaled, labels, gx, channels, hw, num_classes,
                                 BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps)
    return gx
