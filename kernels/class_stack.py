"""Triton kernels for ``class_stack``: the per-item conv of the sparse class-stack engine.

The engine (``semgan_fast.ops.class_stack``) turns every present (image, tile, class) triple into an
*item*: a window of the class's layer input, already padded exactly (reflect/zero at the image
border) and masked. Each layer is then one valid convolution per item with the weights of the item's
class. Items are sorted by class, so ``class_offsets[c]:class_offsets[c+1]`` are class c's items.

* forward, grid (items, pixel blocks, O blocks): ``out[p] = conv_valid(inp[p], W[cls[p]]) + b[cls[p]]``,
  per tap ``acc[P, O] += inp[p][:, pixels + d]^T @ W_c[:, :, d]^T`` (tl.dot, O padded to 16).
* input gradient, grid (items, pixel blocks, I blocks): the transposed conv of the output gradient
  with the item's class weights (taps whose output pixel falls outside the window are masked).
* weight/bias gradient, grid (present classes, taps, splits x O blocks x I blocks): class c's program walks its
  split's items (every SPLIT-th of class c) and accumulates ``g^T @ inp_d``; the per-split partials
  are summed by the host in a fixed order: deterministic, no atomics. Bias gradients come from the
  tap-0, first-I-block programs.

Accumulation is fp32 (fp64 for fp64 inputs, so fp64 gradcheck works in the interpreter); fp32 dots
use ``input_precision="ieee"`` (no TF32); fp16/bf16 windows and weights are dotted in their own dtype
(``DOT``, tensor cores) with fp32 accumulation, and the output gradient is cast to it. Weight and bias
gradients are always stored in the accumulation dtype. Inputs may be any strided layout (the engine's
gathers give channels-last windows); outputs and gradients are contiguous. Item offsets are int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _item_conv_fwd_kernel(inp_ptr, w_ptr, b_ptr, cls_ptr, out_ptr, I, O, Ho, Wo,
                          s_ip, s_ic, s_ih, s_iw,
                          KS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,
                          ACC: tl.constexpr, DOT: tl.constexpr):
    KK: tl.constexpr = KS * KS
    item = tl.program_id(0).to(tl.int64)
    pix = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_o = tl.program_id(2) * BLOCK_O + tl.arange(0, BLOCK_O)
    c = tl.load(cls_ptr + item)
    pm = pix < Ho * Wo
    om = offs_o < O
    oy = pix // Wo
    ox = pix % Wo
    base = item * s_ip
    wbase = c * O * I * KK
    acc = tl.zeros([BLOCK_P, BLOCK_O], dtype=ACC)
    for ci0 in range(0, I, BLOCK_C):
        offs_c = ci0 + tl.arange(0, BLOCK_C)
        cm = offs_c < I
        for d in tl.static_range(KK):
            a = tl.load(inp_ptr + base + offs_c[None, :] * s_ic + (oy + d // KS)[:, None] * s_ih
                        + (ox + d % KS)[:, None] * s_iw, mask=pm[:, None] & cm[None, :], other=0.0).to(DOT)
            w = tl.load(w_ptr + wbase + (offs_o[None, :] * I + offs_c[:, None]) * KK + d,
                        mask=cm[:, None] & om[None, :], other=0.0).to(DOT)
            acc = tl.dot(a, w, acc, input_precision="ieee", out_dtype=ACC)
    acc += tl.load(b_ptr + c * O + offs_o, mask=om, other=0.0).to(ACC)[None, :]
    tl.store(out_ptr + (item * O + offs_o[None, :]) * (Ho * Wo) + pix[:, None], acc.to(out_ptr.dtype.element_ty),
             mask=pm[:, None] & om[None, :])


@triton.jit
def _item_conv_dinp_kernel(g_ptr, w_ptr, cls_ptr, dinp_ptr, I, O, Hi, Wi, Ho, Wo,
                           KS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,
                           ACC: tl.constexpr, DOT: tl.constexpr):
    KK: tl.constexpr = KS * KS
    item = tl.program_id(0).to(tl.int64)
    pix = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = tl.load(cls_ptr + item)
    pm = pix < Hi * Wi
    cm = offs_c < I
    iy = pix // Wi
    ix = pix % Wi
    wbase = c * O * I * KK
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for o0 in range(0, O, BLOCK_O):
        offs_o = o0 + tl.arange(0, BLOCK_O)
        om = offs_o < O
        for d in tl.static_range(KK):
            gy = iy - d // KS
            gx = ix - d % KS
            valid = pm & (gy >= 0) & (gy < Ho) & (gx >= 0) & (gx < Wo)
            g = tl.load(g_ptr + (item * O + offs_o[None, :]) * (Ho * Wo) + (gy * Wo + gx)[:, None],
                        mask=valid[:, None] & om[None, :], other=0.0).to(DOT)
            wt = tl.load(w_ptr + wbase + (offs_o[:, None] * I + offs_c[None, :]) * KK + d,
                         mask=om[:, None] & cm[None, :], other=0.0).to(DOT)
            acc = tl.dot(g, wt, acc, input_precision="ieee", out_dtype=ACC)
    tl.store(dinp_ptr + (item * I + offs_c[None, :]) * (Hi * Wi) + pix[:, None], acc.to(dinp_ptr.dtype.element_ty),
             mask=pm[:, None] & cm[None, :])


@triton.jit
def _item_conv_dw_kernel(g_ptr, inp_ptr, off_ptr, present_ptr, dw_ptr, db_ptr, K, I, O, Ho, Wo,
                         s_ip, s_ic, s_ih, s_iw, SPLIT, n_ob, n_cb,
                         KS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,
                         ACC: tl.constexpr, DOT: tl.constexpr):
    KK: tl.constexpr = KS * KS
    c = tl.load(present_ptr + tl.program_id(0))
    d = tl.program_id(1)
    rest = tl.program_id(2)
    cblk = rest % n_cb
    oblk = (rest // n_cb) % n_ob
    split = rest // (n_cb * n_ob)
    offs_o = oblk * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_c = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
    om = offs_o < O
    cm = offs_c < I
    dy = d // KS
    dx = d % KS
    with_bias = (d == 0) & (cblk == 0)
    lo = tl.load(off_ptr + c)
    hi = tl.load(off_ptr + c + 1)
    acc = tl.zeros([BLOCK_O, BLOCK_C], dtype=ACC)
    accb = tl.zeros([BLOCK_O], dtype=ACC)
    for item in range(lo + split, hi, SPLIT):
        for p0 in range(0, Ho * Wo, BLOCK_P):
            pix = p0 + tl.arange(0, BLOCK_P)
            pm = pix < Ho * Wo
            g = tl.load(g_ptr + (item * O + offs_o[:, None]) * (Ho * Wo) + pix[None, :],
                        mask=om[:, None] & pm[None, :], other=0.0)
            a = tl.load(inp_ptr + item * s_ip + offs_c[None, :] * s_ic + (pix // Wo + dy)[:, None] * s_ih
                        + (pix % Wo + dx)[:, None] * s_iw, mask=pm[:, None] & cm[None, :], other=0.0).to(DOT)
            acc = tl.dot(g.to(DOT), a, acc, input_precision="ieee", out_dtype=ACC)
            if with_bias:
                accb += tl.sum(g.to(ACC), axis=1)
    part = split.to(tl.int64) * K + c
    tl.store(dw_ptr + ((part * O + offs_o[:, None]) * I + offs_c[None, :]) * KK + d, acc,
             mask=om[:, None] & cm[None, :])
    if with_bias:
        tl.store(db_ptr + part * O + offs_o, accb, mask=om)


def _np2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class _Blocks:
    """Block sizes. The interpreter pays per program instance, so there blocks cover the problem;
    on the GPU they are sized for registers."""

    def __init__(self, inp: torch.Tensor, weight: torch.Tensor, pixels: int):
        out_ch, in_ch = weight.shape[1], weight.shape[2]
        interp = inp.device.type != "cuda"
        wide = inp.dtype == torch.float64
        self.acc = tl.float64 if wide else tl.float32
        self.acc_torch = torch.float64 if wide else torch.float32
        # fp16/bf16 inputs: dots in that dtype (tensor cores), fp32 accumulation; fp32/fp64: exact (ieee)
        self.dot = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}.get(inp.dtype, self.acc)
        self.block_o = max(16, min(_np2(out_ch), 64))
        self.block_c = max(16, min(_np2(in_ch), 128 if interp else (16 if wide else 32)))
        self.block_p = max(16, min(_np2(pixels), 1024)) if interp else (32 if wide else 64)


def item_conv_forward_triton(inp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, plan) -> torch.Tensor:
    """inp [P, I, Hi, Wi] (any strides), weight [K, O, I, k, k], bias [K, O] -> [P, O, Hi-k+1, Wi-k+1] (contiguous)."""
    items, in_ch, hi, wi = inp.shape
    out_ch, ks = weight.shape[1], weight.shape[-1]
    ho, wo = hi - ks + 1, wi - ks + 1
    out = inp.new_empty(items, out_ch, ho, wo)
    if out.numel() == 0:
        return out
    blk = _Blocks(inp, weight, ho * wo)
    grid = (items, triton.cdiv(ho * wo, blk.block_p), triton.cdiv(out_ch, blk.block_o))
    _item_conv_fwd_kernel[grid](inp, weight.contiguous(), bias.contiguous(), plan.item_class, out, in_ch, out_ch, ho, wo,
                                *inp.stride(), KS=ks, BLOCK_P=blk.block_p, BLOCK_C=blk.block_c, BLOCK_O=blk.block_o,
                                ACC=blk.acc, DOT=blk.dot)
    return out


def item_conv_backward_triton(grad: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, plan, need_input: bool):
    """grad [P, O, Ho, Wo] (any float dtype) -> (d_inp [P, I, Hi, Wi] in inp's dtype or None, dweight [K, O, I, k, k],
    dbias [K, O] in the accumulation dtype)."""
    grad = grad.contiguous()
    weight = weight.contiguous()
    items, in_ch, hi, wi = inp.shape
    num_classes, out_ch, ks = weight.shape[0], weight.shape[1], weight.shape[-1]
    ho, wo = grad.shape[2], grad.shape[3]
    d_inp = None
    if need_input:
        d_inp = inp.new_empty(items, in_ch, hi, wi)
        if items:
            blk = _Blocks(inp, weight, hi * wi)
            grid = (items, triton.cdiv(hi * wi, blk.block_p), triton.cdiv(in_ch, blk.block_c))
            _item_conv_dinp_kernel[grid](grad, weight, plan.item_class, d_inp, in_ch, out_ch, hi, wi, ho, wo,
                                         KS=ks, BLOCK_P=blk.block_p, BLOCK_C=blk.block_c, BLOCK_O=blk.block_o,
                                         ACC=blk.acc, DOT=blk.dot)
    blk = _Blocks(inp, weight, ho * wo)
    most = max((end - start for _, start, end in plan.segments), default=0)
    # Splits give long classes (e.g. road) parallelism; one under the interpreter (per-program cost).
    split = 1 if inp.device.type != "cuda" else max(1, min(16, most // 4))
    n_ob, n_cb = triton.cdiv(out_ch, blk.block_o), triton.cdiv(in_ch, blk.block_c)
    dw_part = inp.new_zeros(split, num_classes, out_ch, in_ch, ks * ks, dtype=blk.acc_torch)
    db_part = inp.new_zeros(split, num_classes, out_ch, dtype=blk.acc_torch)
    if items:
        present = plan.present_classes                      # on the device already: no upload (a sync) per layer
        grid = (present.numel(), ks * ks, split * n_ob * n_cb)
        _item_conv_dw_kernel[grid](grad, inp, plan.class_offsets, present, dw_part, db_part, num_classes, in_ch, out_ch, ho, wo,
                                   *inp.stride(), split, n_ob, n_cb, KS=ks, BLOCK_P=blk.block_p, BLOCK_C=blk.block_c,
                                   BLOCK_O=blk.block_o, ACC=blk.acc, DOT=blk.dot)
    return d_inp, dw_part.sum(0).view(weight.shape), db_part.sum(0)
