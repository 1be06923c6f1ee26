"""Triton kernels for ``class_conv`` (exact class-conditional gather conv, kernel-design.md §3).

Semantics (``semgan_fast.ops.class_conv``): for every class c,
``out[:, c] = act(conv(pad(x * (labels == c)), weight[c]) + bias[c])``, padding k//2 (reflect or
zeros). With rho the padding index map, tap d of output pixel p reads q = rho(p + d) and feeds only
class labels[q]; classes absent from p's window give act(bias) exactly.

Tiles are TH x TW output (or input) pixels of one image. Two presence tables (int8 [tiles, K])
say which classes occur in a tile (``pres0``) and in the tile plus its k//2 halo (``presH``,
reflected positions included); they only gate work, the label comparisons inside keep results exact.

Forward (variant S, per-tile class list), grid (tiles, K):
  if class c occurs in the tile's halo window: for each tap d, gather x(rho(p+d)) [P, C] masked to
  labels == c and ``acc[P, O] += x_d @ W_c[d]^T`` (tl.dot, O padded to 16); else acc = bias.
  Optional fused tanh. Work per tile is proportional to the classes present, not to K.
Backward (q-centric; g = grad_out * (1 - out^2) under tanh, applied on the fly):
  G(q)[n], n = o*k*k + d: sum of g_{l(q)}[o](p) over the output pixels p with rho(p + d) = q
  (the direct tap plus, near borders, reflected copies: at most 3 per axis); recomputed where
  needed, never stored.
  dx kernel, grid (tiles, C-blocks): G gathered once per tile with each pixel's own class, then
  per class present in the tile ``dx[q] += G(q)[l(q) == c] @ W_c`` (W_c as [O*k*k, C]).
  dW kernel, grid (K, n-blocks, splits x C-blocks): class c's program walks its split's tiles
  (tile t with t % SPLIT == s) that contain c and accumulates ``G_c^T @ x``; the per-split partials
  are summed by the host in a fixed order: deterministic, no atomics.
  db kernel: per-(b, c, o) partial sums of g over the image, reduced in a fixed order.
Accumulation is fp32 (fp64 for fp64 inputs: ``ACC`` constexpr, so fp64 gradcheck works in the
interpreter). fp32 dots use ``input_precision="ieee"`` (no TF32) for parity with the reference; fp16
and bf16 forward dots run natively (exact products, fp32 accumulation) except bf16 under the
interpreter, which is cast to fp32. Offsets that multiply batch/class/channel indices by H*W are int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# ----------------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _reflect(i, n):
    """Reflect padding index map for i in [-(n-1), 2n-2] (edge not repeated)."""
    i = tl.where(i < 0, -i, i)
    return tl.where(i >= n, 2 * (n - 1) - i, i)


@triton.jit
def _tanh(z):
    # exp form; absolute error ~1 ulp of 1 (libdevice tanh is unavailable in the interpreter).
    e = tl.exp(-2.0 * tl.abs(z))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z < 0, -t, t)


@triton.jit
def _tile_pixels(t, n_tw, n_tiles_img, H, W, TH: tl.constexpr, TW: tl.constexpr):
    """Batch index (int64), row/col of the tile's TH*TW pixels and their in-image mask."""
    b = tl.cast(t // n_tiles_img, tl.int64)
    r = t % n_tiles_img
    idx = tl.arange(0, TH * TW)
    h = (r // n_tw) * TH + idx // TW
    w = (r % n_tw) * TW + idx % TW
    return b, h, w, (h < H) & (w < W)


@triton.jit
def _gather_grad(go_ptr, out_ptr, b, cls, K, O, H, W, hq, wq, rowm, offs_n, NT,
                 KS: tl.constexpr, REFLECT: tl.constexpr, TANH: tl.constexpr, ACC: tl.constexpr,
                 P: tl.constexpr, BLOCK_N: tl.constexpr):
    """G[i, n] = sum_{p, d: rho(p + d) = q_i} g_c[o](p) for n = o*KS*KS + d, rows masked by ``rowm``.

    ``cls`` is the class c: a scalar, or [P, 1] (each row's own label) to gather every row's class at once.

    Per axis the padded coordinate u with rho(u) = q is q itself, -q (top/left reflection, q in
    1..PAD) or 2(n-1) - q (bottom/right, q in n-1-PAD..n-2); the output pixel is p = u - d.
    """
    PAD: tl.constexpr = KS // 2
    KK: tl.constexpr = KS * KS
    HW = H * W
    o = offs_n // KK
    d = offs_n % KK
    dy = d // KS - PAD
    dx = d % KS - PAD
    base = ((b * K + cls) * O + o[None, :]) * HW             # [1 or P, BLOCK_N] int64
    m0 = rowm[:, None] & (offs_n < NT)[None, :]
    # Column candidates (direct, left reflection, right reflection), hoisted out of the row loop.
    pw0 = wq[:, None] - dx[None, :]
    mw0 = (pw0 >= 0) & (pw0 < W)
    pw1 = -wq[:, None] - dx[None, :]
    mw1 = ((wq >= 1) & (wq <= PAD))[:, None] & (pw1 >= 0) & (pw1 < W)
    pw2 = (2 * (W - 1) - wq)[:, None] - dx[None, :]
    mw2 = ((wq <= W - 2) & (wq >= W - 1 - PAD))[:, None] & (pw2 >= 0) & (pw2 < W)
    G = tl.zeros([P, BLOCK_N], dtype=ACC)
    for ih in tl.static_range(1 + 2 * REFLECT):
        if ih == 0:
            ph = hq[:, None] - dy[None, :]
            mh = m0 & (ph >= 0) & (ph < H)
        elif ih == 1:
            ph = -hq[:, None] - dy[None, :]
            mh = m0 & ((hq >= 1) & (hq <= PAD))[:, None] & (ph >= 0) & (ph < H)
        else:
            ph = (2 * (H - 1) - hq)[:, None] - dy[None, :]
            mh = m0 & ((hq <= H - 2) & (hq >= H - 1 - PAD))[:, None] & (ph >= 0) & (ph < H)
        row = base + ph * W
        for iw in tl.static_range(1 + 2 * REFLECT):
            if iw == 0:
                off = row + pw0
                m = mh & mw0
            elif iw == 1:
                off = row + pw1
                m = mh & mw1
            else:
                off = row + pw2
                m = mh & mw2
            gv = tl.load(go_ptr + off, mask=m, other=0.0).to(ACC)
            if TANH:
                ov = tl.load(out_ptr + off, mask=m, other=0.0).to(ACC)
                gv = gv * (1.0 - ov * ov)
            G += gv
    return G


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _cc_presence_kernel(lab_ptr, pres_ptr, H, W, K, n_tw, n_tiles_img,
                        TH: tl.constexpr, TW: tl.constexpr, HALO: tl.constexpr, REFLECT: tl.constexpr,
                        BLOCK: tl.constexpr):
    """pres[t, c] = 1 if class c occurs among the (rho-mapped) pixels of tile t plus HALO."""
    t = tl.program_id(0)
    b = tl.cast(t // n_tiles_img, tl.int64)
    r = t % n_tiles_img
    idx = tl.arange(0, BLOCK)
    hh = (r // n_tw) * TH - HALO + idx // (TW + 2 * HALO)
    ww = (r % n_tw) * TW - HALO + idx % (TW + 2 * HALO)
    m = idx < (TH + 2 * HALO) * (TW + 2 * HALO)
    if REFLECT:
        m = m & (hh >= -HALO) & (hh < H + HALO) & (ww >= -HALO) & (ww < W + HALO)
        hh = _reflect(hh, H)
        ww = _reflect(ww, W)
    else:
        m = m & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    lab = tl.load(lab_ptr + b * H * W + hh * W + ww, mask=m, other=-1)
    ok = m & (lab >= 0) & (lab < K)  # out-of-range labels belong to no class
    ones = tl.full([BLOCK], 1, tl.int8)
    tl.store(pres_ptr + tl.cast(t, tl.int64) * K + lab, ones, mask=ok)


@triton.jit
def _cc_fwd_kernel(x_ptr, lab_ptr, w_ptr, b_ptr, pres_ptr, out_ptr,
                   C, H, W, K, O, n_tw, n_tiles_img,
                   KS: tl.constexpr, REFLECT: tl.constexpr, TANH: tl.constexpr, HAS_BIAS: tl.constexpr,
                   TH: tl.constexpr, TW: tl.constexpr, TPC: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_O: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
    """Grid (tiles, K). Each step gathers TPC taps x BLOCK_C channels: A [P, TPC*BLOCK_C] masked to
    pixels whose tap reads class c, times W_c rows (tap, channel) [TPC*BLOCK_C, O]."""
    t = tl.program_id(0)
    c = tl.program_id(1)
    P: tl.constexpr = TH * TW
    PAD: tl.constexpr = KS // 2
    KK: tl.constexpr = KS * KS
    b, h, w, pmask = _tile_pixels(t, n_tw, n_tiles_img, H, W, TH, TW)
    HW = H * W
    offs_o = tl.arange(0, BLOCK_O)
    omask = offs_o < O
    acc = tl.zeros([P, BLOCK_O], dtype=ACC)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c * O + offs_o, mask=omask, other=0.0).to(ACC)
        acc += bias[None, :]
    present = tl.load(pres_ptr + tl.cast(t, tl.int64) * K + c)
    if present != 0:
        x_base = x_ptr + b * C * HW
        w_base = w_ptr + tl.cast(c, tl.int64) * O * C * KK
        offs_t = tl.arange(0, TPC)
        for d0 in range(0, KK, TPC):
            d = d0 + offs_t                                   # [TPC] taps of this step
            dmask = d < KK
            hh = h[:, None] + (d // KS - PAD)[None, :]        # [P, TPC]
            ww = w[:, None] + (d % KS - PAD)[None, :]
            valid = pmask[:, None] & dmask[None, :]
            if REFLECT:
                hh = _reflect(hh, H)
                ww = _reflect(ww, W)
            else:
                valid = valid & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            q = hh * W + ww
            lab = tl.load(lab_ptr + b * HW + q, mask=valid, other=-1)
            m = valid & (lab == c)
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                cmask = offs_c < C
                xa = tl.load(x_base + offs_c[None, None, :].to(tl.int64) * HW + q[:, :, None],
                             mask=m[:, :, None] & cmask[None, None, :], other=0.0)      # [P, TPC, BC]
                wt = tl.load(w_base + (offs_o[None, None, :] * C + offs_c[None, :, None]) * KK + d[:, None, None],
                             mask=dmask[:, None, None] & cmask[None, :, None] & omask[None, None, :],
                             other=0.0)                                                 # [TPC, BC, BO]
                a2 = tl.reshape(xa, [P, TPC * BLOCK_C]).to(DOT)
                w2 = tl.reshape(wt, [TPC * BLOCK_C, BLOCK_O]).to(DOT)
                acc = tl.dot(a2, w2, acc, input_precision="ieee", out_dtype=ACC)
    if TANH:
        acc = _tanh(acc)
    out_off = ((b * K + c) * O + offs_o[None, :]) * HW + (h * W + w)[:, None]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=pmask[:, None] & omask[None, :])


@triton.jit
def _cc_bwd_dx_kernel(go_ptr, out_ptr, lab_ptr, w_ptr, pres_ptr, dx_ptr,
                      C, H, W, K, O, NT, n_tw, n_tiles_img,
                      KS: tl.constexpr, REFLECT: tl.constexpr, TANH: tl.constexpr,
                      TH: tl.constexpr, TW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                      ACC: tl.constexpr):
    """Grid (tiles, C-blocks). G is gathered once per tile (each pixel's own class); the classes
    present in the tile then take their rows: dx[q] += G(q) @ W_{l(q)} with W_c as [O*k*k, C]."""
    t = tl.program_id(0)
    cb = tl.program_id(1)
    P: tl.constexpr = TH * TW
    KK: tl.constexpr = KS * KS
    b, hq, wq, qmask = _tile_pixels(t, n_tw, n_tiles_img, H, W, TH, TW)
    HW = H * W
    lab = tl.load(lab_ptr + b * HW + hq * W + wq, mask=qmask, other=-1)
    rowm = qmask & (lab >= 0) & (lab < K)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    acc = tl.zeros([P, BLOCK_C], dtype=ACC)
    for n0 in range(0, NT, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        G = _gather_grad(go_ptr, out_ptr, b, lab[:, None], K, O, H, W, hq, wq, rowm, offs_n, NT,
                         KS, REFLECT, TANH, ACC, P, BLOCK_N)
        o = offs_n // KK
        d = offs_n % KK
        w_off = (o[:, None] * C + offs_c[None, :]) * KK + d[:, None]
        w_mask = (offs_n < NT)[:, None] & cmask[None, :]
        for c in range(K):
            present = tl.load(pres_ptr + tl.cast(t, tl.int64) * K + c)
            if present != 0:
                wt = tl.load(w_ptr + tl.cast(c, tl.int64) * O * C * KK + w_off, mask=w_mask, other=0.0).to(ACC)
                Gc = tl.where((lab == c)[:, None], G, 0.0)
                acc = tl.dot(Gc, wt, acc, input_precision="ieee", out_dtype=ACC)
    dx_off = (b * C + offs_c[None, :]) * HW + (hq * W + wq)[:, None]
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=qmask[:, None] & cmask[None, :])


@triton.jit
def _cc_bwd_dw_kernel(go_ptr, out_ptr, lab_ptr, x_ptr, pres_ptr, part_ptr,
                      C, H, W, K, O, NT, n_tw, n_tiles_img, n_tiles, SPLIT, n_cb,
                      KS: tl.constexpr, REFLECT: tl.constexpr, TANH: tl.constexpr,
                      TH: tl.constexpr, TW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                      ACC: tl.constexpr):
    c = tl.program_id(0)
    nb = tl.program_id(1)
    s = tl.program_id(2) // n_cb
    cb = tl.program_id(2) % n_cb
    P: tl.constexpr = TH * TW
    HW = H * W
    offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)
    for t in range(s, n_tiles, SPLIT):
        present = tl.load(pres_ptr + tl.cast(t, tl.int64) * K + c)
        if present != 0:
            b, hq, wq, qmask = _tile_pixels(t, n_tw, n_tiles_img, H, W, TH, TW)
            q = hq * W + wq
            lab = tl.load(lab_ptr + b * HW + q, mask=qmask, other=-1)
            rowm = qmask & (lab == c)
            G = _gather_grad(go_ptr, out_ptr, b, c, K, O, H, W, hq, wq, rowm, offs_n, NT,
                             KS, REFLECT, TANH, ACC, P, BLOCK_N)
            xa = tl.load(x_ptr + (b * C + offs_c[None, :]) * HW + q[:, None],
                         mask=rowm[:, None] & cmask[None, :], other=0.0).to(ACC)
            acc = tl.dot(tl.trans(G), xa, acc, input_precision="ieee", out_dtype=ACC)
    part_off = ((tl.cast(s, tl.int64) * K + c) * NT + offs_n[:, None]) * C + offs_c[None, :]
    tl.store(part_ptr + part_off, acc, mask=(offs_n < NT)[:, None] & cmask[None, :])


@triton.jit
def _cc_bwd_db_kernel(go_ptr, out_ptr, part_ptr, R, HW, NCHUNK,
                      TANH: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """part[r, ch] = sum of g over the ch-th strided chunk of row r (r = (b*K + c)*O + o)."""
    rb = tl.program_id(0)
    ch = tl.program_id(1)
    rows = rb * ROWS + tl.arange(0, ROWS)
    rmask = rows < R
    base = rows.to(tl.int64) * HW
    acc = tl.zeros([ROWS, BLOCK], dtype=ACC)
    for start in range(ch * BLOCK, HW, NCHUNK * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = rmask[:, None] & (offs < HW)[None, :]
        off = base[:, None] + offs[None, :]
        g = tl.load(go_ptr + off, mask=m, other=0.0).to(ACC)
        if TANH:
            ov = tl.load(out_ptr + off, mask=m, other=0.0).to(ACC)
            g = g * (1.0 - ov * ov)
        acc += g
    tl.store(part_ptr + rows.to(tl.int64) * NCHUNK + ch, tl.sum(acc, axis=1), mask=rmask)


# ----------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
              torch.float64: tl.float64}


def _np2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


class _Config:
    """Tile and block sizes. Under the interpreter (CPU tensors) every program costs ~1.5 ms
    whatever its size, so tiles and blocks are as large as the problem; on the GPU they are sized
    for registers (8x16 pixel tiles, 64-wide channel blocks)."""

    def __init__(self, x: torch.Tensor, weight: torch.Tensor):
        _, channels, height, width = x.shape
        _, out_ch, _, kernel, _ = weight.shape
        self.interp = x.device.type != "cuda"
        self.nt = out_ch * kernel * kernel
        wide = x.dtype == torch.float64  # fp64 tiles take twice the registers
        taps = kernel * kernel
        if self.interp:
            self.th = min(_np2(height), 32)
            self.tw = max(16, min(_np2(width), 32))
            self.block_c = min(_np2(channels), 128)
            self.tpc = max(_np2(taps), 16 // self.block_c)   # all taps in one step
            self.block_n = max(16, min(_np2(self.nt), 256))
            self.block_cb = max(16, self.block_c)            # backward channel block (dot dim >= 16)
        else:
            self.th, self.tw = 8, 16
            self.block_c = min(_np2(channels), 32 if wide else 64)
            self.tpc = max(1, (32 if wide else 64) // self.block_c)  # small C: several taps per step
            self.block_n = 16 if wide else 32
            self.block_cb = max(16, self.block_c)
        self.block_o = max(16, _np2(out_ch))
        self.n_th = triton.cdiv(height, self.th)
        self.n_tw = triton.cdiv(width, self.tw)
        self.acc = tl.float64 if x.dtype == torch.float64 else tl.float32
        dot = _TL_DTYPES[x.dtype]
        if dot == tl.bfloat16 and self.interp:
            dot = tl.float32  # bf16 math is wrong in the interpreter (triton#11584)
        self.dot = dot
        self.num_warps = 4


def _presence(labels: torch.Tensor, num_classes: int, cfg: _Config, halo: int, reflect: bool) -> torch.Tensor:
    batch, height, width = labels.shape
    n_tiles = batch * cfg.n_th * cfg.n_tw
    pres = torch.zeros(n_tiles, num_classes, dtype=torch.int8, device=labels.device)
    block = _np2((cfg.th + 2 * halo) * (cfg.tw + 2 * halo))
    _cc_presence_kernel[(n_tiles,)](labels, pres, height, width, num_classes, cfg.n_tw, cfg.n_th * cfg.n_tw,
                                    TH=cfg.th, TW=cfg.tw, HALO=halo, REFLECT=int(reflect), BLOCK=block)
    return pres


def _prep(x, labels, weight, bias):
    return (x.contiguous(), labels.to(torch.int32).contiguous(), weight.contiguous(),
            None if bias is None else bias.contiguous())


def class_conv_forward_triton(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                              bias: torch.Tensor | None, padding_mode: str, activation: str | None) -> torch.Tensor:
    """Forward. x [B,C,H,W], labels int [B,H,W], weight [K,O,C,k,k], bias [K,O] or None.

    Returns out [B,K,O,H,W] in x's dtype (fp32/fp64 accumulation).
    """
    x, labels, weight, bias = _prep(x, labels, weight, bias)
    batch, channels, height, width = x.shape
    num_classes, out_ch, _, kernel, _ = weight.shape
    out = torch.empty(batch, num_classes, out_ch, height, width, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    cfg = _Config(x, weight)
    reflect = padding_mode == "reflect"
    pres = _presence(labels, num_classes, cfg, kernel // 2, reflect)
    grid = (pres.shape[0], num_classes)
    _cc_fwd_kernel[grid](x, labels, weight, bias if bias is not None else weight, pres, out,
                         channels, height, width, num_classes, out_ch, cfg.n_tw, cfg.n_th * cfg.n_tw,
                         KS=kernel, REFLECT=int(reflect), TANH=int(activation == "tanh"), HAS_BIAS=int(bias is not None),
                         TH=cfg.th, TW=cfg.tw, TPC=cfg.tpc, BLOCK_C=cfg.block_c, BLOCK_O=cfg.block_o,
                         ACC=cfg.acc, DOT=cfg.dot,
                         num_warps=cfg.num_warps)
    return out


def class_conv_backward_triton(grad_out: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                               bias: torch.Tensor | None, out: torch.Tensor, padding_mode: str,
                               activation: str | None):
    """Backward: (dx [B,C,H,W], dweight [K,O,C,k,k], dbias [K,O] or None); ``out`` = forward output."""
    x, labels, weight, bias = _prep(x, labels, weight, bias)
    grad_out, out = grad_out.contiguous(), out.contiguous()
    batch, channels, height, width = x.shape
    num_classes, out_ch, _, kernel, _ = weight.shape
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    dx = torch.zeros_like(x)
    dweight = torch.zeros_like(weight)
    dbias = None if bias is None else torch.zeros_like(bias)
    if x.numel() == 0 or grad_out.numel() == 0:
        return dx, dweight, dbias
    cfg = _Config(x, weight)
    reflect, tanh = int(padding_mode == "reflect"), int(activation == "tanh")
    pres = _presence(labels, num_classes, cfg, 0, bool(reflect))
    n_tiles = pres.shape[0]
    n_cb = triton.cdiv(channels, cfg.block_cb)
    common = dict(KS=kernel, REFLECT=reflect, TANH=tanh, TH=cfg.th, TW=cfg.tw, BLOCK_N=cfg.block_n,
                  BLOCK_C=cfg.block_cb, ACC=cfg.acc, num_warps=cfg.num_warps)
    _cc_bwd_dx_kernel[(n_tiles, n_cb)](grad_out, out, labels, weight, pres, dx,
                                       channels, height, width, num_classes, out_ch, cfg.nt,
                                       cfg.n_tw, cfg.n_th * cfg.n_tw, **common)
    n_nb = triton.cdiv(cfg.nt, cfg.block_n)
    if cfg.interp:
        split = 1
    else:
        # Enough programs to fill the GPU, partial buffer kept under ~64 MiB.
        per_split = num_classes * cfg.nt * channels * 4
        split = max(1, min(n_tiles, triton.cdiv(1024, num_classes * n_nb * n_cb), (64 << 20) // per_split))
    part = torch.empty(split, num_classes, cfg.nt, channels, dtype=acc_dtype, device=x.device)
    _cc_bwd_dw_kernel[(num_classes, n_nb, split * n_cb)](grad_out, out, labels, x, pres, part,
                                                         channels, height, width, num_classes, out_ch, cfg.nt,
                                                         cfg.n_tw, cfg.n_th * cfg.n_tw, n_tiles, split, n_cb,
                                                         **common)
    # part[s, c, o*k*k + d, C] -> [K, O, C, k, k]; the sum over splits runs in a fixed order.
    dw = part.sum(0).view(num_classes, out_ch, kernel * kernel, channels).permute(0, 1, 3, 2)
    dweight.copy_(dw.reshape(num_classes, out_ch, channels, kernel, kernel))
    if bias is not None:
        rows, hw = batch * num_classes * out_ch, height * width
        if cfg.interp:
            rows_blk, block, nchunk = min(_np2(rows), 512), min(_np2(hw), 1024), 1
        else:
            rows_blk, block = 4, 512
            nchunk = max(1, min(triton.cdiv(hw, block), triton.cdiv(4096, triton.cdiv(rows, rows_blk))))
        dpart = torch.empty(rows, nchunk, dtype=acc_dtype, device=x.device)
        _cc_bwd_db_kernel[(triton.cdiv(rows, rows_blk), nchunk)](grad_out, out, dpart, rows, hw, nchunk,
                                                                TANH=tanh, ROWS=rows_blk, BLOCK=block,
                                                                ACC=cfg.acc)
        dbias.copy_(dpart.view(batch, num_classes, out_ch, nchunk).sum(dim=(0, 3)))
    return dx, dweight, dbias
