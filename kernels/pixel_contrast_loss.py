"""Triton kernels for ``pixel_contrast_loss`` (ECGAN Eq. 5 / ContrastiveSeg ``PixelContrastLoss``).

Notation: anchors f_i [A, D] with labels y_i, contrast c_j [M, D] with labels z_j (label < 0: slot
not used), s_ij = f_i . c_j / tau, positives P_i = {j: z_j = y_i} (minus j = i for self-contrast),
negatives N_i = {j: z_j >= 0, z_j != y_i}. With LN_i = log sum_{n in N_i} exp(s_in) the per-positive
term of ECGAN Eq. 5 is

    -log(e^{s_ip} / (e^{s_ip} + e^{LN_i})) = softplus(LN_i - s_ip),

which is finite for every input (LN_i = -inf when there are no negatives gives 0) and needs no
shift. The loss is sum_i coef_i * sum_{p in P_i} softplus(LN_i - s_ip), coef_i = (tau / tau_b) /
(|P_i| * #anchors with positives), 0 for anchors without positives.

Kernels (none materialises the A x M logits; every one streams contrast or anchor tiles of the
full feature width BLOCK_D = next_pow2(D)):

- ``_stats_kernel`` (rows): online log-sum-exp of the negative logits -> LN_i, and |P_i|.
- ``_terms_kernel`` (rows): T_i = sum_p softplus(LN_i - s_ip) and W_i = sum_p sigmoid(LN_i - s_ip).
- ``_grad_rows_kernel``: dF_i = sum_j G_ij c_j, ``_grad_cols_kernel``: dC_j = sum_i G_ij f_i, with
  G_ij = k_i * (-sigmoid(LN_i - s_ij) on positives, e^{s_ij - LN_i} * W_i on negatives),
  k_i = upstream grad * coef_i / tau. Row and column kernels recompute s (FlashAttention dQ/dK
  split): deterministic, no atomics.

Logits are handled in base 2 (scale2 = log2(e) / tau folded into one multiply) so the kernels use
exp2/log2. Accumulation is fp32 (fp64 for fp64 inputs, so fp64 gradcheck works); fp32 inputs use
``input_precision`` chosen by the caller ("ieee" by default, see the op's docstring).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# The interpreter accepts exactly one autotune config; the GPU gets a small search space.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _configs(program_block: str, loop_block: str):
    if INTERPRET:
        return [triton.Config({program_block: 64, loop_block: 64}, num_warps=4)]
    # Full-width rows (BLOCK_D = 256 for D = 256) make shared memory the limit: AOT-compiled for sm_90,
    # 64x64 tiles fit fp16/bf16 and fp32 "ieee" (<= 148 KB), fp32 "tf32x3" and fp64 need 32x32
    # (<= 197 KB). Configs that do not fit are pruned by the autotuner (OutOfResources). Few configs:
    # fp32 "ieee" dots unroll into FMAs and take ~1 min each to compile (cached on disk afterwards).
    return [
        triton.Config({program_block: 64, loop_block: 64}, num_warps=4, num_stages=2),
        triton.Config({program_block: 64, loop_block: 32}, num_warps=4, num_stages=2),
        triton.Config({program_block: 32, loop_block: 32}, num_warps=4, num_stages=2),
    ]


@triton.jit
def _load_rows(ptr, rows, n_rows, stride, offs_d, dim, CAST_F32: tl.constexpr):
    tile = tl.load(ptr + rows[:, None] * stride + offs_d[None, :],
                   mask=(rows < n_rows)[:, None] & (offs_d < dim)[None, :], other=0.0)
    if CAST_F32:
        # bf16 math is wrong in the Triton interpreter; the launcher asks for fp32 there.
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _masks(rows, cols, la, lc, EXCLUDE_SELF: tl.constexpr):
    # Unused slots (label < 0, also the padding rows/columns of a tile) are in neither set.
    valid = (la >= 0)[:, None] & (lc >= 0)[None, :]
    pos = (la[:, None] == lc[None, :]) & valid
    if EXCLUDE_SELF:
        pos = pos & (rows[:, None] != cols[None, :])
    neg = (la[:, None] != lc[None, :]) & valid
    return pos, neg


@triton.autotune(configs=_configs("BLOCK_A", "BLOCK_M"), key=["BLOCK_D", "EXCLUDE_SELF", "PRECISION"])
@triton.jit
def _stats_kernel(a_ptr, la_ptr, c_ptr, lc_ptr, scale_ptr, ln2_ptr, cnt_ptr, n_a, n_c, dim, stride_a, stride_c,
                  EXCLUDE_SELF: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, CAST_F32: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_M: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_d = tl.arange(0, BLOCK_D)
    scale2 = tl.load(scale_ptr)
    a = _load_rows(a_ptr, rows, n_a, stride_a, offs_d, dim, CAST_F32)
    la = tl.load(la_ptr + rows, mask=rows < n_a, other=-1)
    m = tl.full([BLOCK_A], float("-inf"), ACC)
    l_sum = tl.zeros([BLOCK_A], ACC)
    cnt = tl.zeros([BLOCK_A], tl.int32)
    for start in range(0, n_c, BLOCK_M):
        cols = start + tl.arange(0, BLOCK_M)
        c = _load_rows(c_ptr, cols, n_c, stride_c, offs_d, dim, CAST_F32)
        lc = tl.load(lc_ptr + cols, mask=cols < n_c, other=-1)
        s = tl.dot(a, tl.trans(c), input_precision=PRECISION, out_dtype=ACC) * scale2
        pos, neg = _masks(rows, cols, la, lc, EXCLUDE_SELF)
        cnt += tl.sum(pos.to(tl.int32), axis=1)
        s_neg = tl.where(neg, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s_neg, axis=1))
        # Rows with no negative so far keep m = -inf; shift by 0 there to avoid inf - inf.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_sum = l_sum * tl.exp2(m - m_safe) + tl.sum(tl.exp2(s_neg - m_safe[:, None]), axis=1)
        m = m_new
    ln2 = tl.where(l_sum > 0, m + tl.log2(tl.where(l_sum > 0, l_sum, 1.0)), float("-inf"))
    tl.store(ln2_ptr + rows, ln2, mask=rows < n_a)
    tl.store(cnt_ptr + rows, cnt, mask=rows < n_a)


@triton.autotune(configs=_configs("BLOCK_A", "BLOCK_M"), key=["BLOCK_D", "EXCLUDE_SELF", "PRECISION"])
@triton.jit
def _terms_kernel(a_ptr, la_ptr, c_ptr, lc_ptr, scale_ptr, ln2_ptr, t_ptr, w_ptr, n_a, n_c, dim, stride_a, stride_c,
                  EXCLUDE_SELF: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, CAST_F32: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_M: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_d = tl.arange(0, BLOCK_D)
    scale2 = tl.load(scale_ptr)
    a = _load_rows(a_ptr, rows, n_a, stride_a, offs_d, dim, CAST_F32)
    la = tl.load(la_ptr + rows, mask=rows < n_a, other=-1)
    ln2 = tl.load(ln2_ptr + rows, mask=rows < n_a, other=float("-inf"))
    t_acc = tl.zeros([BLOCK_A], ACC)
    w_acc = tl.zeros([BLOCK_A], ACC)
    for start in range(0, n_c, BLOCK_M):
        cols = start + tl.arange(0, BLOCK_M)
        c = _load_rows(c_ptr, cols, n_c, stride_c, offs_d, dim, CAST_F32)
        lc = tl.load(lc_ptr + cols, mask=cols < n_c, other=-1)
        s = tl.dot(a, tl.trans(c), input_precision=PRECISION, out_dtype=ACC) * scale2
        pos, neg = _masks(rows, cols, la, lc, EXCLUDE_SELF)
        z = ln2[:, None] - s  # (LN_i - s_ip) in base-2 units; -inf when there are no negatives
        softplus2 = tl.maximum(z, 0.0) + tl.log2(1.0 + tl.exp2(-tl.abs(z)))
        sig = 1.0 / (1.0 + tl.exp2(tl.minimum(-z, 126.0)))  # clamp: finite lanes, error < 2^-126
        t_acc += tl.sum(tl.where(pos, softplus2, 0.0), axis=1)
        w_acc += tl.sum(tl.where(pos, sig, 0.0), axis=1)
    tl.store(t_ptr + rows, t_acc, mask=rows < n_a)  # log2 units; ln(2) applied by the caller
    tl.store(w_ptr + rows, w_acc, mask=rows < n_a)


@triton.jit
def _grad_tile(s, pos, neg, ln2, w, k):
    # dLoss/ds for one tile: -sigmoid(LN - s) on positives, e^{s - LN} * W on negatives (both <= 1 in
    # magnitude before k). e^{s - LN} can overflow outside the negative set; tl.where discards it.
    # s - LN <= 0 on negatives; the clamp only keeps other lanes finite (no inf * 0 = nan) and changes
    # sigmoid values below 2^-126.
    e = tl.exp2(tl.minimum(s - ln2[:, None], 126.0))
    sig = 1.0 / (1.0 + e)
    e_neg = e * w[:, None]
    g = tl.where(pos, -sig, tl.where(neg, e_neg, 0.0))
    return g * k[:, None]


@triton.autotune(configs=_configs("BLOCK_A", "BLOCK_M"), key=["BLOCK_D", "EXCLUDE_SELF", "PRECISION"])
@triton.jit
def _grad_rows_kernel(a_ptr, la_ptr, c_ptr, lc_ptr, scale_ptr, ln2_ptr, w_ptr, k_ptr, da_ptr, n_a, n_c, dim,
                      stride_a, stride_c, stride_da,
                      EXCLUDE_SELF: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, CAST_F32: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_M: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_d = tl.arange(0, BLOCK_D)
    scale2 = tl.load(scale_ptr)
    a = _load_rows(a_ptr, rows, n_a, stride_a, offs_d, dim, CAST_F32)
    la = tl.load(la_ptr + rows, mask=rows < n_a, other=-1)
    ln2 = tl.load(ln2_ptr + rows, mask=rows < n_a, other=float("-inf"))
    w = tl.load(w_ptr + rows, mask=rows < n_a, other=0.0)
    k = tl.load(k_ptr + rows, mask=rows < n_a, other=0.0)
    acc = tl.zeros([BLOCK_A, BLOCK_D], ACC)
    for start in range(0, n_c, BLOCK_M):
        cols = start + tl.arange(0, BLOCK_M)
        c = _load_rows(c_ptr, cols, n_c, stride_c, offs_d, dim, CAST_F32)
        lc = tl.load(lc_ptr + cols, mask=cols < n_c, other=-1)
        s = tl.dot(a, tl.trans(c), input_precision=PRECISION, out_dtype=ACC) * scale2
        pos, neg = _masks(rows, cols, la, lc, EXCLUDE_SELF)
        g = _grad_tile(s, pos, neg, ln2, w, k)
        acc += tl.dot(g.to(c.dtype), c, input_precision=PRECISION, out_dtype=ACC)
    tl.store(da_ptr + rows[:, None] * stride_da + offs_d[None, :], acc.to(da_ptr.dtype.element_ty),
             mask=(rows < n_a)[:, None] & (offs_d < dim)[None, :])


@triton.autotune(configs=_configs("BLOCK_M", "BLOCK_A"), key=["BLOCK_D", "EXCLUDE_SELF", "PRECISION"])
@triton.jit
def _grad_cols_kernel(a_ptr, la_ptr, c_ptr, lc_ptr, scale_ptr, ln2_ptr, w_ptr, k_ptr, dc_ptr, n_a, n_c, dim,
                      stride_a, stride_c, stride_dc,
                      EXCLUDE_SELF: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, CAST_F32: tl.constexpr,
                      BLOCK_D: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_M: tl.constexpr):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    scale2 = tl.load(scale_ptr)
    c = _load_rows(c_ptr, cols, n_c, stride_c, offs_d, dim, CAST_F32)
    lc = tl.load(lc_ptr + cols, mask=cols < n_c, other=-1)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for start in range(0, n_a, BLOCK_A):
        rows = start + tl.arange(0, BLOCK_A)
        a = _load_rows(a_ptr, rows, n_a, stride_a, offs_d, dim, CAST_F32)
        la = tl.load(la_ptr + rows, mask=rows < n_a, other=-1)
        ln2 = tl.load(ln2_ptr + rows, mask=rows < n_a, other=float("-inf"))
        w = tl.load(w_ptr + rows, mask=rows < n_a, other=0.0)
        k = tl.load(k_ptr + rows, mask=rows < n_a, other=0.0)
        s = tl.dot(a, tl.trans(c), input_precision=PRECISION, out_dtype=ACC) * scale2
        pos, neg = _masks(rows, cols, la, lc, EXCLUDE_SELF)
        g = _grad_tile(s, pos, neg, ln2, w, k)
        acc += tl.dot(tl.trans(g).to(a.dtype), a, input_precision=PRECISION, out_dtype=ACC)
    tl.store(dc_ptr + cols[:, None] * stride_dc + offs_d[None, :], acc.to(dc_ptr.dtype.element_ty),
             mask=(cols < n_c)[:, None] & (offs_d < dim)[None, :])


def _common(anchors: torch.Tensor, precision: str):
    acc_torch = torch.float64 if anchors.dtype == torch.float64 else torch.float32
    acc = tl.float64 if anchors.dtype == torch.float64 else tl.float32
    if anchors.dtype == torch.float32:
        prec = precision
    else:
        # fp64 needs "ieee"; for fp16/bf16 tensor-core inputs the setting is ignored.
        prec = "ieee"
    cast_f32 = INTERPRET and anchors.dtype == torch.bfloat16
    block_d = max(16, triton.next_power_of_2(anchors.shape[1]))
    return acc_torch, acc, prec, cast_f32, block_d


def _scale(temperature: float, acc_torch: torch.dtype, device) -> torch.Tensor:
    # Passed by pointer: Triton scalar float arguments are fp32, which would break fp64 exactness.
    return torch.full((1,), LOG2E / temperature, dtype=acc_torch, device=device)


def forward(anchors: torch.Tensor, labels: torch.Tensor, contrast: torch.Tensor, contrast_labels: torch.Tensor,
            exclude_self: bool, temperature: float, precision: str = "ieee"):
    """Per-anchor statistics of the loss.

    Args:
        anchors [A, D], contrast [M, D]: contiguous, same float dtype. labels [A], contrast_labels [M]:
        contiguous int32. exclude_self: anchors and contrast are the same rows (self-contrast).

    Returns:
        ln [A] (natural-log log-sum-exp of negative logits, -inf without negatives), cnt [A] int32
        (|P_i|), t [A] (sum over positives of softplus(LN_i - s_ip)), w [A] (sum of sigmoid(LN_i - s_ip));
        float64 for float64 inputs, float32 otherwise.
    """
    n_a, dim = anchors.shape
    n_c = contrast.shape[0]
    acc_torch, acc, prec, cast_f32, block_d = _common(anchors, precision)
    dev = anchors.device
    ln2 = torch.full((n_a,), float("-inf"), dtype=acc_torch, device=dev)
    cnt = torch.zeros((n_a,), dtype=torch.int32, device=dev)
    t = torch.zeros((n_a,), dtype=acc_torch, device=dev)
    w = torch.zeros((n_a,), dtype=acc_torch, device=dev)
    if n_a == 0 or n_c == 0:
        return ln2, cnt, t, w
    scale = _scale(temperature, acc_torch, dev)
    grid = lambda meta: (triton.cdiv(n_a, meta["BLOCK_A"]),)  # noqa: E731
    common = dict(EXCLUDE_SELF=exclude_self, PRECISION=prec, ACC=acc, CAST_F32=cast_f32, BLOCK_D=block_d)
    _stats_kernel[grid](anchors, labels, contrast, contrast_labels, scale, ln2, cnt, n_a, n_c, dim,
                        anchors.stride(0), contrast.stride(0), **common)
    _terms_kernel[grid](anchors, labels, contrast, contrast_labels, scale, ln2, t, w, n_a, n_c, dim,
                        anchors.stride(0), contrast.stride(0), **common)
    # Unit conversions in torch: a Triton float literal would be fp32, too coarse for fp64 exactness.
    return ln2 * LN2, cnt, t * LN2, w


def backward(anchors: torch.Tensor, labels: torch.Tensor, contrast: torch.Tensor, contrast_labels: torch.Tensor,
             ln: torch.Tensor, w: torch.Tensor, k: torch.Tensor, exclude_self: bool, temperature: float,
             need_anchors: bool, need_contrast: bool, precision: str = "ieee"):
    """Gradients. ``k`` [A] = upstream grad * coef_i / tau (0 for anchors that do not count).

    Returns (d_anchors [A, D] or None, d_contrast [M, D] or None) in the inputs' dtype.
    """
    n_a, dim = anchors.shape
    n_c = contrast.shape[0]
    acc_torch, acc, prec, cast_f32, block_d = _common(anchors, precision)
    dev = anchors.device
    da = torch.zeros_like(anchors) if need_anchors else None
    dc = torch.zeros_like(contrast) if need_contrast else None
    if n_a == 0 or n_c == 0:
        return da, dc
    scale = _scale(temperature, acc_torch, dev)
    ln2 = (ln * LOG2E).to(acc_torch).contiguous()
    w = w.to(acc_torch).contiguous()
    k = k.to(acc_torch).contiguous()
    common = dict(EXCLUDE_SELF=exclude_self, PRECISION=prec, ACC=acc, CAST_F32=cast_f32, BLOCK_D=block_d)
    if need_anchors:
        grid = lambda meta: (triton.cdiv(n_a, meta["BLOCK_A"]),)  # noqa: E731
        _grad_rows_kernel[grid](anchors, labels, contrast, contrast_labels, scale, ln2, w, k, da, n_a, n_c, dim,
                                anchors.stride(0), contrast.stride(0), da.stride(0), **common)
    if need_contrast:
        grid = lambda meta: (triton.cdiv(n_c, meta["BLOCK_M"]),)  # noqa: E731
        _grad_cols_kernel[grid](anchors, labels, contrast, contrast_labels, scale, ln2, w, k, dc, n_a, n_c, dim,
                                anchors.stride(0), contrast.stride(0), dc.stride(0), **common)
    return da, dc
