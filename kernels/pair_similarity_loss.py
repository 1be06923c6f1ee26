"""Triton kernels for ``pair_similarity_loss`` (ECGAN Eq. 3): BCE between A = S S^T (one-hot labels)
and A'' = P P^T (class probabilities) over all M x M pixel pairs of each image, never materialised.

Per pair (i, j): x_ij = clamp(p_i . p_j, 0, 1) and
    bce_ij = -max(log x_ij, -100)        if y_i == y_j   (a_ij = 1)
    bce_ij = -max(log(1 - x_ij), -100)   otherwise       (a_ij = 0)
(torch ``BCELoss``'s clamp; a_ij in {0, 1} so only one log per pair). Pairs with an ignored pixel
(``HAS_IGNORE``) are skipped.

- ``_fwd_kernel``: upper-triangular tile sweep (the matrix is symmetric: off-diagonal tiles count
  twice, diagonal tiles once, diagonal pairs i = j included as in Eq. 3). Program p of image b sweeps
  tile rows p and n_tiles-1-p, so every program does n_tiles + 1 tiles (balanced). One partial sum per
  program, reduced by the caller (deterministic, no atomics).
- ``_bwd_kernel``: row tile i, full sweep over j: dP_i = scale * sum_j G_ij p_j with
  G_ij = (x_ij - a_ij) / max(x_ij (1 - x_ij), 1e-12) where 0 <= p_i . p_j <= 1 (torch's
  ``binary_cross_entropy`` backward and ``clamp``'s pass-through mask) and scale = 2 * grad / #pairs
  (2: x_ij depends on p_i through both (i, j) and (j, i)). Deterministic, no atomics.

The K-wide products run in fp32 (fp64 for fp64 inputs; fp16/bf16 probabilities are converted on
load) with ``input_precision`` from the caller: "ieee" by default (1 - x near 1 needs full fp32
mantissas; on the GPU these are FMA, not tensor-core, products), "tf32x3" / "tf32" when torch's fp32
matmul precision is "high" / "medium". Probabilities are read from their [B, K, M] layout (contiguous
along pixels).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_BLOCKS = (64,) if INTERPRET else (128, 64)


def _configs():
    if INTERPRET:
        return [triton.Config({"BLOCK": 64}, num_warps=4)]
    # (BLOCK 128 with 4 warps also fits but takes minutes to compile with "ieee" dots.)
    return [triton.Config({"BLOCK": 128}, num_warps=8, num_stages=2),
            triton.Config({"BLOCK": 64}, num_warps=4, num_stages=2)]


@triton.jit
def _load_pixels(p_base, y_base, start, n_pix, n_cls, stride_pk, ignore_index, HAS_IGNORE: tl.constexpr,
                 ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    pix = start + tl.arange(0, BLOCK)
    offs_k = tl.arange(0, BLOCK_K)
    inside = pix < n_pix
    p = tl.load(p_base + offs_k[None, :] * stride_pk + pix[:, None],
                mask=inside[:, None] & (offs_k < n_cls)[None, :], other=0.0).to(ACC)
    y = tl.load(y_base + pix, mask=inside, other=-1)
    ok = inside
    if HAS_IGNORE:
        ok = ok & (y != ignore_index)
    return p, y, ok


@triton.jit
def _tile_bce_sum(p_i, y_i, ok_i, p_j, y_j, ok_j, PRECISION: tl.constexpr):
    x = tl.dot(p_i, tl.trans(p_j), input_precision=PRECISION, out_dtype=p_i.dtype)
    x = tl.minimum(tl.maximum(x, 0.0), 1.0)
    v = tl.where(y_i[:, None] == y_j[None, :], x, 1.0 - x)
    # max(log v, -100) with log 0 = -inf, written without evaluating log(0).
    lg = tl.where(v > 0, tl.maximum(tl.log(tl.where(v > 0, v, 1.0)), -100.0), -100.0)
    bce = tl.where(ok_i[:, None] & ok_j[None, :], -lg, 0.0)
    return tl.sum(bce, axis=1)


@triton.jit
def _row_sweep(p_base, y_base, ti, n_pix, n_cls, stride_pk, n_tiles, ignore_index, HAS_IGNORE: tl.constexpr,
               ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    p_i, y_i, ok_i = _load_pixels(p_base, y_base, ti * BLOCK, n_pix, n_cls, stride_pk, ignore_index, HAS_IGNORE,
                                  ACC, BLOCK, BLOCK_K)
    # Diagonal tile: every ordered pair inside it is visited once.
    acc = _tile_bce_sum(p_i, y_i, ok_i, p_i, y_i, ok_i, PRECISION)
    for tj in range(ti + 1, n_tiles):
        p_j, y_j, ok_j = _load_pixels(p_base, y_base, tj * BLOCK, n_pix, n_cls, stride_pk, ignore_index, HAS_IGNORE,
                                      ACC, BLOCK, BLOCK_K)
        acc += 2.0 * _tile_bce_sum(p_i, y_i, ok_i, p_j, y_j, ok_j, PRECISION)
    return tl.sum(acc, axis=0)


# Configs differ in the number of programs, hence in the partial slots written: zero them before each
# benchmarked config and before the final run (reset_to_zero), or stale partials would be summed.
@triton.autotune(configs=_configs(), key=["BLOCK_K", "HAS_IGNORE", "PRECISION"], reset_to_zero=["out_ptr"])
@triton.jit
def _fwd_kernel(p_ptr, y_ptr, out_ptr, n_pix, n_cls, stride_pb, stride_pk, stride_yb, ignore_index, out_stride,
                HAS_IGNORE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr,
                BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    p_base = p_ptr + b * stride_pb
    y_base = y_ptr + b * stride_yb
    n_tiles = tl.cdiv(n_pix, BLOCK)
    total = _row_sweep(p_base, y_base, pid, n_pix, n_cls, stride_pk, n_tiles, ignore_index, HAS_IGNORE, ACC,
                       PRECISION, BLOCK, BLOCK_K)
    mirror = n_tiles - 1 - pid
    if mirror > pid:
        total += _row_sweep(p_base, y_base, mirror, n_pix, n_cls, stride_pk, n_tiles, ignore_index, HAS_IGNORE, ACC,
                            PRECISION, BLOCK, BLOCK_K)
    tl.store(out_ptr + b * out_stride + pid, total)


@triton.autotune(configs=_configs(), key=["BLOCK_K", "HAS_IGNORE", "PRECISION"])
@triton.jit
def _bwd_kernel(p_ptr, y_ptr, scale_ptr, dp_ptr, n_pix, n_cls, stride_pb, stride_pk, stride_yb, ignore_index,
                HAS_IGNORE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr,
                BLOCK: tl.constexpr):
    ti = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    p_base = p_ptr + b * stride_pb
    y_base = y_ptr + b * stride_yb
    n_tiles = tl.cdiv(n_pix, BLOCK)
    p_i, y_i, ok_i = _load_pixels(p_base, y_base, ti * BLOCK, n_pix, n_cls, stride_pk, ignore_index, HAS_IGNORE,
                                  ACC, BLOCK, BLOCK_K)
    acc = tl.zeros([BLOCK, BLOCK_K], ACC)
    for tj in range(0, n_tiles):
        p_j, y_j, ok_j = _load_pixels(p_base, y_base, tj * BLOCK, n_pix, n_cls, stride_pk, ignore_index, HAS_IGNORE,
                                      ACC, BLOCK, BLOCK_K)
        x_raw = tl.dot(p_i, tl.trans(p_j), input_precision=PRECISION, out_dtype=ACC)
        x = tl.minimum(tl.maximum(x_raw, 0.0), 1.0)
        a = (y_i[:, None] == y_j[None, :]).to(ACC)
        g = (x - a) / tl.maximum(x * (1.0 - x), 1e-12)  # fp32 literal: torch's EPSILON is fp32-rounded too
        keep = ok_i[:, None] & ok_j[None, :] & (x_raw >= 0.0) & (x_raw <= 1.0)
        acc += tl.dot(tl.where(keep, g, 0.0), p_j, input_precision=PRECISION, out_dtype=ACC)
    acc = acc * tl.load(scale_ptr)
    pix = ti * BLOCK + tl.arange(0, BLOCK)
    offs_k = tl.arange(0, BLOCK_K)
    tl.store(dp_ptr + b * stride_pb + offs_k[None, :] * stride_pk + pix[:, None], acc.to(dp_ptr.dtype.element_ty),
             mask=(pix < n_pix)[:, None] & (offs_k < n_cls)[None, :])


def _acc(dtype: torch.dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _precision(dtype: torch.dtype, precision: str) -> str:
    # Probabilities are converted to fp32 (fp64) in the kernel, so the fp32 setting applies to every
    # non-fp64 dtype; fp64 needs "ieee".
    return "ieee" if dtype == torch.float64 else precision


def forward(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int, has_ignore: bool,
            precision: str = "ieee") -> torch.Tensor:
    """Sum of bce_ij over all valid ordered pairs of every image.

    Args:
        probs: [B, K, M] contiguous float; labels: [B, M] contiguous int32.
    Returns:
        0-dim tensor, float64 for float64 probs, else float32.
    """
    batch, n_cls, n_pix = probs.shape
    acc_torch, acc = _acc(probs.dtype)
    if batch == 0 or n_pix == 0:
        return torch.zeros((), dtype=acc_torch, device=probs.device)
    # Sized for the smallest tile (most programs); unused slots stay 0.
    n_prog = triton.cdiv(triton.cdiv(n_pix, min(_BLOCKS)), 2)
    partials = torch.zeros((batch, n_prog), dtype=acc_torch, device=probs.device)
    grid = lambda meta: (triton.cdiv(triton.cdiv(n_pix, meta["BLOCK"]), 2), batch)  # noqa: E731
    _fwd_kernel[grid](probs, labels, partials, n_pix, n_cls, probs.stride(0), probs.stride(1), labels.stride(0),
                      ignore_index, partials.stride(0), HAS_IGNORE=has_ignore, ACC=acc,
                      PRECISION=_precision(probs.dtype, precision), BLOCK_K=max(16, triton.next_power_of_2(n_cls)))
    return partials.sum()


def backward(probs: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor, ignore_index: int,
             has_ignore: bool, precision: str = "ieee") -> torch.Tensor:
    """d(scale/2 * forward sum)/dprobs as [B, K, M] in probs' dtype. ``scale`` is a 1-element tensor
    (2 * upstream grad / number of pairs) in the accumulation dtype."""
    batch, n_cls, n_pix = probs.shape
    _acc_torch, acc = _acc(probs.dtype)
    dp = torch.zeros_like(probs)
    if batch == 0 or n_pix == 0:
        return dp
    grid = lambda meta: (triton.cdiv(n_pix, meta["BLOCK"]), batch)  # noqa: E731
    _bwd_kernel[grid](probs, labels, scale, dp, n_pix, n_cls, probs.stride(0), probs.stride(1), labels.stride(0),
                      ignore_index, HAS_IGNORE=has_ignore, ACC=acc, PRECISION=_precision(probs.dtype, precision),
                      BLOCK_K=max(16, triton.next_power_of_2(n_cls)))
    return dp
