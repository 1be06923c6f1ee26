// class_conv CUDA kernels (forward and backward), torch-free: raw pointers, sizes, cudaStream_t.
//
//   out[b, i] = act(conv(pad(x[b] * (labels[b] == i)), weight[i]) + bias[i])     i = 0..K-1
//   x [B,C,H,W], labels int32 [B,H,W], weight [K,O,C,k,k] (k in {1,3,5,7}), bias [K,O] or null,
//   padding k//2 'reflect' or 'zeros', act = identity or tanh, out [B,K,O,H,W].
//
// Exact gather formulation (kernel-design.md §3): tap d of output pixel p reads q = rho(p + d) and
// contributes to class labels[q] only. Labels outside [0, K) belong to no class (as in the
// reference, whose masks are all zero there).
//
// Forward: one block per 16x32 output tile (one image, up to 4 output channels). The block builds
// the class set of the tile + halo in shared memory, then for each present class c streams x in
// 8-channel chunks into shared memory, *masked by labels == c at load time*, and runs a dense
// direct convolution on the masked tile (each thread: 4 rows x OB outputs in registers, a column of
// 4 + k - 1 inputs reused across the k vertical taps, weights broadcast from shared memory).
// Classes absent from the tile + halo are act(bias) everywhere: written without any arithmetic.
//
// Backward (g = grad_out * (1 - out^2) for tanh, else grad_out):
//  * dx: per 16x32 tile of input pixels q and each class c present among them,
//    dx(q) = sum_{(p,d): rho(p+d)=q} W_c[:,:,d]^T g_c(p): a transposed direct conv of g_c over the
//    tile + halo, plus explicit reflected-preimage taps for pixels within k//2 of the border.
//  * dweight: dW_c[:,:,d] = sum_p g_c(p) x(rho(p+d))^T [labels(rho(p+d)) = c]. A tile-mask pass
//    records which classes touch each tile + halo; block (split s, class c, channel chunk) sums over
//    the tiles t = s, s + S, ... holding c (masked x tile in shared memory, each thread one
//    (channel, tap row) with a sliding window along the pixel row), then writes a partial. A second
//    kernel sums the S partials in a fixed order: deterministic, no atomics.
//  * dbias: sum over all pixels of g_c (absent classes included), deterministic two-pass plane sum.
// Accumulation in fp32 (fp64 for fp64 inputs); int64 offsets wherever products can exceed 2^31
// (per-image H*W must stay below 2^31).
#pragma once

#include "sg_common.cuh"

namespace semgan {
namespace kern {
namespace classconv {

constexpr int TW = 32;         // tile width: one warp spans a tile row
constexpr int TR = 4;          // thread rows
constexpr int PX = 4;          // output rows per thread (consecutive)
constexpr int TH = TR * PX;    // tile height (16)
constexpr int NT = TW * TR;    // threads per forward / dx block (128)
constexpr int CC_FWD = 8;      // input channels per shared-memory chunk (forward)
constexpr int CC_DX = 16;      // dx channels per chunk (register accumulators: PX x CC_DX)
constexpr int OC_DX = 4;       // grad_out channels per chunk (dx)
constexpr int CC_DW = 8;       // input channels per block (dweight)
constexpr int64_t kDwPartialBudget = int64_t(8) << 20;  // max elements of dweight partials in the workspace

// Shared-memory tile + halo for kernel size KS. Row stride = 8 (mod 16) words and channel stride =
// 1 (mod 32) words keep the dweight kernel's (channel, tap-row) thread layout free of bank conflicts.
template <int KS> struct Region {
  static constexpr int R = KS / 2;
  static constexpr int RH = TH + KS - 1;
  static constexpr int RW = TW + KS - 1;
  static constexpr int RWS0 = round_up(RW, 8);
  static constexpr int RWS = (RWS0 / 8) % 2 == 0 ? RWS0 + 8 : RWS0;
  static constexpr int NPOS = RH * RWS;
  static constexpr int CSTR = NPOS + (33 - NPOS % 32) % 32;
};

// dweight thread layout: (row group, tap row, channel); TH / RG pixel rows per thread.
template <int KS> struct DwCfg {
  static constexpr int RG = KS >= 5 ? 4 : (KS == 3 ? 8 : 16);
  static constexpr int NTW = CC_DW * KS * RG;
  static constexpr int RPT = TH / RG;
  static constexpr int GSW = TW + 1;  // padded g row stride
};

inline bool supported_kernel_size(int ks) { return ks == 1 || ks == 3 || ks == 5 || ks == 7; }

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------
template <typename T, int KS, int OB>
SG_GLOBAL void SG_LAUNCH_BOUNDS(NT)
class_conv_fwd_kernel(const T* SG_RESTRICT x, const int32_t* SG_RESTRICT labels, const T* SG_RESTRICT weight,
                      const T* SG_RESTRICT bias, T* SG_RESTRICT out, int C, int H, int W, int K, int O, int n_ob,
                      int reflect, int act_tanh) {
  using A = acc_t<T>;
  using G = Region<KS>;
  constexpr int KK = KS * KS;
  constexpr int OBP = OB == 3 ? 4 : OB;  // padded for vector loads
  constexpr int NCOL = PX + KS - 1;
  const int nwords = (K + 31) / 32;
  SG_DYN_SMEM(smem);
  A* ws = reinterpret_cast<A*>(smem);                              // [KK][CC_FWD][OBP]
  A* xs = ws + KK * CC_FWD * OBP;                                  // [CC_FWD][CSTR] masked x
  int* goff = reinterpret_cast<int*>(xs + CC_FWD * G::CSTR);       // [NPOS] pixel offset or -1
  int* lab = goff + G::NPOS;                                       // [NPOS] class or -1
  unsigned* present = reinterpret_cast<unsigned*>(lab + G::NPOS);  // [nwords]
  int* clist = reinterpret_cast<int*>(present + nwords);           // [K + 1], count in clist[K]

  const int tid = threadIdx.x, tx = tid % TW, ty = tid / TW;
  const int tile_x0 = blockIdx.x * TW, tile_y0 = blockIdx.y * TH;
  const int b = blockIdx.z / n_ob, o0 = (blockIdx.z % n_ob) * OB;
  const int64_t HW = static_cast<int64_t>(H) * W;

  for (int w = tid; w < nwords; w += NT) present[w] = 0u;
  for (int i = tid; i < G::RH * G::RW; i += NT) {
    const int ry = i / G::RW, rx = i % G::RW;
    const int off = padded_offset(tile_y0 - G::R + ry, tile_x0 - G::R + rx, H, W, reflect != 0);
    int l = -1;
    if (off >= 0) {
      l = labels[b * HW + off];
      if (l < 0 || l >= K) l = -1;
    }
    goff[ry * G::RWS + rx] = off;
    lab[ry * G::RWS + rx] = l;
  }
  SG_SYNC();
  for (int i = tid; i < G::RH * G::RW; i += NT) {
    const int l = lab[(i / G::RW) * G::RWS + i % G::RW];
    if (l >= 0) sg_atomic_or(&present[l >> 5], 1u << (l & 31));
  }
  SG_SYNC();
  if (tid == 0) clist[K] = bits_to_list(present, nwords, clist);
  SG_SYNC();
  const int ncls = clist[K];

  for (int ci = 0; ci < ncls; ++ci) {
    const int c = clist[ci];
    // Threads whose input window holds no pixel of class c only write act(bias).
    bool active = false;
    for (int r = 0; r < NCOL; ++r)
      for (int dx = 0; dx < KS; ++dx) active |= lab[(ty * PX + r) * G::RWS + tx + dx] == c;
    A acc[PX][OB];
    SG_UNROLL
    for (int j = 0; j < PX; ++j)
      SG_UNROLL
      for (int o = 0; o < OB; ++o) acc[j][o] = A(0);

    for (int c0 = 0; c0 < C; c0 += CC_FWD) {
      SG_SYNC();  // previous chunk fully consumed
      for (int i = tid; i < OBP * CC_FWD * KK; i += NT) {
        const int d = i % KK, cc = (i / KK) % CC_FWD, o = i / (KK * CC_FWD);
        const int ch = c0 + cc, oo = o0 + o;
        A v = A(0);
        if (o < OB && oo < O && ch < C) v = to_acc(weight[((static_cast<int64_t>(c) * O + oo) * C + ch) * KK + d]);
        ws[(d * CC_FWD + cc) * OBP + o] = v;
      }
      for (int i = tid; i < CC_FWD * G::RH * G::RW; i += NT) {
        const int cc = i / (G::RH * G::RW), p = i % (G::RH * G::RW);
        const int idx = (p / G::RW) * G::RWS + p % G::RW;
        const int ch = c0 + cc;
        A v = A(0);
        if (ch < C && lab[idx] == c) v = to_acc(x[(static_cast<int64_t>(b) * C + ch) * HW + goff[idx]]);
        xs[cc * G::CSTR + idx] = v;
      }
      SG_SYNC();
      if (active) {
        // Loops over channels and tap columns stay rolled (code size); each iteration does
        // KS * PX * OB FMAs on registers fed by NCOL + KS shared-memory loads.
        SG_UNROLL_N(1)
        for (int cc = 0; cc < CC_FWD; ++cc) {
          const A* xcol = xs + cc * G::CSTR + ty * PX * G::RWS + tx;
          const A* wcc = ws + cc * OBP;
          SG_UNROLL_N(1)
          for (int dx = 0; dx < KS; ++dx) {
            A col[NCOL];
            SG_UNROLL
            for (int r = 0; r < NCOL; ++r) col[r] = xcol[r * G::RWS + dx];
            SG_UNROLL
            for (int dy = 0; dy < KS; ++dy) {
              A w[OBP];
              load_vec<OBP>(wcc + (dy * KS + dx) * CC_FWD * OBP, w);
              SG_UNROLL
              for (int j = 0; j < PX; ++j)
                SG_UNROLL
                for (int o = 0; o < OB; ++o) acc[j][o] = sg_fma(w[o], col[j + dy], acc[j][o]);
            }
          }
        }
      }
    }
    SG_UNROLL
    for (int o = 0; o < OB; ++o) {
      const int oo = o0 + o;
      if (oo >= O) continue;
      const A bv = bias != nullptr ? to_acc(bias[static_cast<int64_t>(c) * O + oo]) : A(0);
      T* dst = out + ((static_cast<int64_t>(b) * K + c) * O + oo) * HW;
      SG_UNROLL
      for (int j = 0; j < PX; ++j) {
        const int y = tile_y0 + ty * PX + j, xg = tile_x0 + tx;
        if (y < H && xg < W) {
          A v = acc[j][o] + bv;
          if (act_tanh) v = sg_tanh(v);
          dst[static_cast<int64_t>(y) * W + xg] = from_acc<T>(v);
        }
      }
    }
  }
  // Classes absent from the tile + halo: act(bias) (exactly what the reference computes there).
  for (int c = 0; c < K; ++c) {
    if ((present[c >> 5] >> (c & 31)) & 1u) continue;
    for (int o = 0; o < OB; ++o) {
      const int oo = o0 + o;
      if (oo >= O) break;
      A v = bias != nullptr ? to_acc(bias[static_cast<int64_t>(c) * O + oo]) : A(0);
      if (act_tanh) v = sg_tanh(v);
      const T tv = from_acc<T>(v);
      T* dst = out + ((static_cast<int64_t>(b) * K + c) * O + oo) * HW;
      for (int j = 0; j < PX; ++j) {
        const int y = tile_y0 + ty * PX + j, xg = tile_x0 + tx;
        if (y < H && xg < W) dst[static_cast<int64_t>(y) * W + xg] = tv;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: input gradient
// ---------------------------------------------------------------------------------------------
template <typename T, int KS>
SG_GLOBAL void SG_LAUNCH_BOUNDS(NT)
class_conv_dx_kernel(const T* SG_RESTRICT grad_out, const T* SG_RESTRICT out, const int32_t* SG_RESTRICT labels,
                     const T* SG_RESTRICT weight, T* SG_RESTRICT dx, int C, int H, int W, int K, int O, int reflect,
                     int act_tanh) {
  using A = acc_t<T>;
  using G = Region<KS>;
  constexpr int KK = KS * KS;
  constexpr int R = G::R;
  constexpr int NCOL = PX + KS - 1;
  const int nwords = (K + 31) / 32;
  SG_DYN_SMEM(smem);
  A* ws = reinterpret_cast<A*>(smem);                              // [KK][OC_DX][CC_DX]
  A* gs = ws + KK * OC_DX * CC_DX;                                 // [OC_DX][CSTR] g_c over tile + halo
  int* labt = reinterpret_cast<int*>(gs + OC_DX * G::CSTR);        // [TH*TW]: class, -1 outside, -2 invalid
  unsigned* present = reinterpret_cast<unsigned*>(labt + TH * TW);  // [nwords]
  int* clist = reinterpret_cast<int*>(present + nwords);           // [K + 1]

  const int tid = threadIdx.x, tx = tid % TW, ty = tid / TW;
  const int tile_x0 = blockIdx.x * TW, tile_y0 = blockIdx.y * TH;
  const int b = blockIdx.z;
  const int64_t HW = static_cast<int64_t>(H) * W;

  for (int w = tid; w < nwords; w += NT) present[w] = 0u;
  for (int i = tid; i < TH * TW; i += NT) {
    const int qy = tile_y0 + i / TW, qx = tile_x0 + i % TW;
    int l = -1;
    if (qy < H && qx < W) {
      l = labels[b * HW + static_cast<int64_t>(qy) * W + qx];
      if (l < 0 || l >= K) l = -2;
    }
    labt[i] = l;
  }
  SG_SYNC();
  for (int i = tid; i < TH * TW; i += NT) {
    const int l = labt[i];
    if (l >= 0) sg_atomic_or(&present[l >> 5], 1u << (l & 31));
  }
  SG_SYNC();
  if (tid == 0) clist[K] = bits_to_list(present, nwords, clist);
  SG_SYNC();
  const int ncls = clist[K];
  int mylab[PX];
  SG_UNROLL
  for (int j = 0; j < PX; ++j) mylab[j] = labt[(ty * PX + j) * TW + tx];
  const int n_och = ceil_div(O, OC_DX);

  for (int ci = 0; ci < ncls; ++ci) {
    const int c = clist[ci];
    bool active = false;
    SG_UNROLL
    for (int j = 0; j < PX; ++j) active |= mylab[j] == c;
    for (int c0 = 0; c0 < C; c0 += CC_DX) {
      A acc[PX][CC_DX];
      SG_UNROLL
      for (int j = 0; j < PX; ++j)
        SG_UNROLL
        for (int cc = 0; cc < CC_DX; ++cc) acc[j][cc] = A(0);
      for (int oc = 0; oc < n_och; ++oc) {
        const int o0 = oc * OC_DX;
        SG_SYNC();
        if (n_och > 1 || c0 == 0) {  // with O <= OC_DX the g tile is reused across channel chunks
          for (int i = tid; i < OC_DX * G::RH * G::RW; i += NT) {
            const int o = i / (G::RH * G::RW), p = i % (G::RH * G::RW);
            const int ry = p / G::RW, rx = p % G::RW;
            const int gy = tile_y0 - R + ry, gx = tile_x0 - R + rx, oo = o0 + o;
            A v = A(0);
            if (oo < O && gy >= 0 && gy < H && gx >= 0 && gx < W) {
              const int64_t gi = ((static_cast<int64_t>(b) * K + c) * O + oo) * HW + static_cast<int64_t>(gy) * W + gx;
              v = to_acc(grad_out[gi]);
              if (act_tanh) {
                const A t = to_acc(out[gi]);
                v *= A(1) - t * t;
              }
            }
            gs[o * G::CSTR + ry * G::RWS + rx] = v;
          }
        }
        for (int i = tid; i < OC_DX * CC_DX * KK; i += NT) {
          const int d = i % KK, cc = (i / KK) % CC_DX, o = i / (KK * CC_DX);
          const int ch = c0 + cc, oo = o0 + o;
          A v = A(0);
          if (ch < C && oo < O) v = to_acc(weight[((static_cast<int64_t>(c) * O + oo) * C + ch) * KK + d]);
          ws[(d * OC_DX + o) * CC_DX + cc] = v;
        }
        SG_SYNC();
        if (!active) continue;
        // Direct taps: p = q - (d - R), read from the zero-filled g tile.
        SG_UNROLL_N(1)
        for (int o = 0; o < OC_DX; ++o) {
          const A* gcol = gs + o * G::CSTR + ty * PX * G::RWS + tx + (KS - 1);
          SG_UNROLL_N(1)
          for (int dxk = 0; dxk < KS; ++dxk) {
            A col[NCOL];
            SG_UNROLL
            for (int r = 0; r < NCOL; ++r) col[r] = gcol[r * G::RWS - dxk];
            SG_UNROLL
            for (int dyk = 0; dyk < KS; ++dyk) {
              const A* wp = ws + ((dyk * KS + dxk) * OC_DX + o) * CC_DX;
              A wv[CC_DX];
              SG_UNROLL
              for (int q4 = 0; q4 < CC_DX; q4 += 4) {
                A t4[4];
                load_vec<4>(wp + q4, t4);
                SG_UNROLL
                for (int e = 0; e < 4; ++e) wv[q4 + e] = t4[e];
              }
              SG_UNROLL
              for (int j = 0; j < PX; ++j) {
                const A gv = col[j + KS - 1 - dyk];
                SG_UNROLL
                for (int cc = 0; cc < CC_DX; ++cc) acc[j][cc] = sg_fma(wv[cc], gv, acc[j][cc]);
              }
            }
          }
        }
        // Reflect padding: padded positions u != q with rho(u) = q (pixels within R of the border).
        // Every such p = u - (d - R) lies within R of q, hence inside the g tile.
        if (reflect) {
          SG_UNROLL
          for (int j = 0; j < PX; ++j) {
            if (mylab[j] != c) continue;
            const int qy = tile_y0 + ty * PX + j, qx = tile_x0 + tx;
            int uy[3], ux[3];
            int nuy = 1, nux = 1;
            uy[0] = qy;
            ux[0] = qx;
            if (qy >= 1 && qy <= R) uy[nuy++] = -qy;
            if (qy <= H - 2 && qy >= H - 1 - R) uy[nuy++] = 2 * (H - 1) - qy;
            if (qx >= 1 && qx <= R) ux[nux++] = -qx;
            if (qx <= W - 2 && qx >= W - 1 - R) ux[nux++] = 2 * (W - 1) - qx;
            if (nuy == 1 && nux == 1) continue;
            for (int a = 0; a < nuy; ++a) {
              for (int e = 0; e < nux; ++e) {
                if (a == 0 && e == 0) continue;
                for (int dyk = 0; dyk < KS; ++dyk) {
                  const int py = uy[a] - dyk + R;
                  if (py < 0 || py >= H) continue;
                  for (int dxk = 0; dxk < KS; ++dxk) {
                    const int px = ux[e] - dxk + R;
                    if (px < 0 || px >= W) continue;
                    const int sidx = (py - tile_y0 + R) * G::RWS + (px - tile_x0 + R);
                    for (int o = 0; o < OC_DX; ++o) {
                      const A gv = gs[o * G::CSTR + sidx];
                      const A* wp = ws + ((dyk * KS + dxk) * OC_DX + o) * CC_DX;
                      SG_UNROLL
                      for (int cc = 0; cc < CC_DX; ++cc) acc[j][cc] = sg_fma(wp[cc], gv, acc[j][cc]);
                    }
                  }
                }
              }
            }
          }
        }
      }
      SG_UNROLL
      for (int j = 0; j < PX; ++j) {
        if (mylab[j] != c) continue;
        const int qy = tile_y0 + ty * PX + j, qx = tile_x0 + tx;
        T* dst = dx + static_cast<int64_t>(b) * C * HW + static_cast<int64_t>(qy) * W + qx;
        SG_UNROLL
        for (int cc = 0; cc < CC_DX; ++cc) {
          const int ch = c0 + cc;
          if (ch < C) dst[static_cast<int64_t>(ch) * HW] = from_acc<T>(acc[j][cc]);
        }
      }
    }
  }
  // Pixels with labels outside [0, K) feed no class: zero gradient.
  for (int j = 0; j < PX; ++j) {
    if (mylab[j] != -2) continue;
    const int qy = tile_y0 + ty * PX + j, qx = tile_x0 + tx;
    T* dst = dx + static_cast<int64_t>(b) * C * HW + static_cast<int64_t>(qy) * W + qx;
    for (int ch = 0; ch < C; ++ch) dst[static_cast<int64_t>(ch) * HW] = from_acc<T>(A(0));
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: weight gradient
// ---------------------------------------------------------------------------------------------
// tile_mask[t * nwords + w]: classes met by tile t's input window (tile + halo), t = (b*TY + ty)*TX + tx.
// (Templated only so that the header can be included by several translation units.)
template <typename Unused = void>
SG_GLOBAL void SG_LAUNCH_BOUNDS(256)
class_conv_tile_mask_kernel(const int32_t* SG_RESTRICT labels, unsigned* SG_RESTRICT tile_mask, int H, int W, int K,
                            int R, int reflect) {
  SG_DYN_SMEM(smem);
  unsigned* words = reinterpret_cast<unsigned*>(smem);
  const int nwords = (K + 31) / 32;
  const int tid = threadIdx.x;
  const int tile_x0 = blockIdx.x * TW, tile_y0 = blockIdx.y * TH, b = blockIdx.z;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int RH = TH + 2 * R, RW = TW + 2 * R;
  for (int w = tid; w < nwords; w += 256) words[w] = 0u;
  SG_SYNC();
  for (int i = tid; i < RH * RW; i += 256) {
    const int off = padded_offset(tile_y0 - R + i / RW, tile_x0 - R + i % RW, H, W, reflect != 0);
    if (off < 0) continue;
    const int l = labels[b * HW + off];
    if (l >= 0 && l < K) sg_atomic_or(&words[l >> 5], 1u << (l & 31));
  }
  SG_SYNC();
  const int64_t t = (static_cast<int64_t>(b) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  for (int w = tid; w < nwords; w += 256) tile_mask[t * nwords + w] = words[w];
}

template <typename T, int KS, int OB>
SG_GLOBAL void SG_LAUNCH_BOUNDS(DwCfg<KS>::NTW)
class_conv_dw_kernel(const T* SG_RESTRICT grad_out, const T* SG_RESTRICT out, const T* SG_RESTRICT x,
                     const int32_t* SG_RESTRICT labels, const unsigned* SG_RESTRICT tile_mask,
                     acc_t<T>* SG_RESTRICT partial, int* SG_RESTRICT flags, int B, int C, int H, int W, int K, int O,
                     int n_ob, int S, int tiles_x, int tiles_y, int reflect, int act_tanh) {
  using A = acc_t<T>;
  using G = Region<KS>;
  using Cfg = DwCfg<KS>;
  constexpr int KK = KS * KS;
  constexpr int NTW = Cfg::NTW;
  SG_DYN_SMEM(smem);
  A* xs = reinterpret_cast<A*>(smem);  // [CC_DW][CSTR] x masked by class c
  A* gs = xs + CC_DW * G::CSTR;        // [OB][TH][GSW] g_c on the tile
  A* red = reinterpret_cast<A*>(smem);  // [NTW][KS][OB] after the tile loop (aliases xs / gs)

  const int tid = threadIdx.x;
  const int cc = tid % CC_DW, dy = (tid / CC_DW) % KS, rg = tid / (CC_DW * KS);
  const int split = blockIdx.x, c = blockIdx.y;
  const int c0 = (blockIdx.z / n_ob) * CC_DW, o0 = (blockIdx.z % n_ob) * OB;
  const int nwords = (K + 31) / 32;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int per_img = tiles_x * tiles_y, total = B * per_img;

  A acc[KS][OB];
  SG_UNROLL
  for (int k = 0; k < KS; ++k)
    SG_UNROLL
    for (int o = 0; o < OB; ++o) acc[k][o] = A(0);
  bool any = false;  // block-uniform: depends on the tile mask only

  for (int t = split; t < total; t += S) {
    if (((tile_mask[static_cast<int64_t>(t) * nwords + (c >> 5)] >> (c & 31)) & 1u) == 0u) continue;
    any = true;
    const int b = t / per_img, rem = t % per_img;
    const int tile_y0 = (rem / tiles_x) * TH, tile_x0 = (rem % tiles_x) * TW;
    SG_SYNC();
    for (int i = tid; i < CC_DW * G::RH * G::RW; i += NTW) {
      const int ccl = i / (G::RH * G::RW), p = i % (G::RH * G::RW);
      const int ry = p / G::RW, rx = p % G::RW, ch = c0 + ccl;
      const int off = padded_offset(tile_y0 - G::R + ry, tile_x0 - G::R + rx, H, W, reflect != 0);
      A v = A(0);
      if (ch < C && off >= 0 && labels[b * HW + off] == c) v = to_acc(x[(static_cast<int64_t>(b) * C + ch) * HW + off]);
      xs[ccl * G::CSTR + ry * G::RWS + rx] = v;
    }
    for (int i = tid; i < OB * TH * TW; i += NTW) {
      const int o = i / (TH * TW), pix = i % (TH * TW);
      const int py = pix / TW, px = pix % TW;
      const int y = tile_y0 + py, xg = tile_x0 + px, oo = o0 + o;
      A v = A(0);
      if (oo < O && y < H && xg < W) {
        const int64_t gi = ((static_cast<int64_t>(b) * K + c) * O + oo) * HW + static_cast<int64_t>(y) * W + xg;
        v = to_acc(grad_out[gi]);
        if (act_tanh) {
          const A tv = to_acc(out[gi]);
          v *= A(1) - tv * tv;
        }
      }
      gs[(o * TH + py) * Cfg::GSW + px] = v;
    }
    SG_SYNC();
    for (int rr = 0; rr < Cfg::RPT; ++rr) {
      const int py = rg * Cfg::RPT + rr;
      const A* xrow = xs + cc * G::CSTR + (py + dy) * G::RWS;
      const A* grow = gs + py * Cfg::GSW;
      A win[KS];
      SG_UNROLL
      for (int k = 0; k < KS - 1; ++k) win[k] = xrow[k];
      SG_UNROLL
      for (int px = 0; px < TW; ++px) {
        win[KS - 1] = xrow[px + KS - 1];
        SG_UNROLL
        for (int o = 0; o < OB; ++o) {
          const A gv = grow[o * TH * Cfg::GSW + px];
          SG_UNROLL
          for (int k = 0; k < KS; ++k) acc[k][o] = sg_fma(gv, win[k], acc[k][o]);
        }
        SG_UNROLL
        for (int k = 0; k < KS - 1; ++k) win[k] = win[k + 1];
      }
    }
  }
  SG_SYNC();
  SG_UNROLL
  for (int k = 0; k < KS; ++k)
    SG_UNROLL
    for (int o = 0; o < OB; ++o) red[(tid * KS + k) * OB + o] = acc[k][o];
  SG_SYNC();
  if (any) {
    const int64_t ockk = static_cast<int64_t>(O) * C * KK;
    for (int i = tid; i < CC_DW * KK * OB; i += NTW) {
      const int o = i % OB;
      int rest = i / OB;
      const int dxk = rest % KS;
      rest /= KS;
      const int dyk = rest % KS, ccl = rest / KS;
      A s = A(0);
      for (int g = 0; g < Cfg::RG; ++g) s += red[((((g * KS + dyk) * CC_DW + ccl) * KS) + dxk) * OB + o];
      const int ch = c0 + ccl, oo = o0 + o;
      if (ch < C && oo < O)
        partial[(static_cast<int64_t>(c) * S + split) * ockk + (static_cast<int64_t>(oo) * C + ch) * KK + dyk * KS + dxk] = s;
    }
  }
  if (tid == 0 && blockIdx.z == 0) flags[c * S + split] = any ? 1 : 0;
}

template <typename T>
SG_GLOBAL void SG_LAUNCH_BOUNDS(256)
class_conv_dw_reduce_kernel(const acc_t<T>* SG_RESTRICT partial, const int* SG_RESTRICT flags, T* SG_RESTRICT dweight,
                            int K, int S, int64_t ockk) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
  if (i >= static_cast<int64_t>(K) * ockk) return;
  const int c = static_cast<int>(i / ockk);
  const int64_t j = i % ockk;
  acc_t<T> s = 0;
  for (int sp = 0; sp < S; ++sp)
    if (flags[c * S + sp]) s += partial[(static_cast<int64_t>(c) * S + sp) * ockk + j];
  dweight[i] = from_acc<T>(s);
}

// ---------------------------------------------------------------------------------------------
// Host launchers
// ---------------------------------------------------------------------------------------------
struct Dims {
  int B, C, H, W, K, O, ks;
  bool reflect, tanh;
  int tiles_x() const { return ceil_div(W, TW); }
  int tiles_y() const { return ceil_div(H, TH); }
  int nwords() const { return ceil_div(K, 32); }
  int64_t ockk() const { return static_cast<int64_t>(O) * C * ks * ks; }
  int64_t n_tiles() const { return static_cast<int64_t>(B) * tiles_x() * tiles_y(); }
  // dweight splits: enough blocks per class for load balance, bounded workspace.
  int dw_splits() const {
    int64_t s = kDwPartialBudget / (static_cast<int64_t>(K) * ockk());
    if (s > 64) s = 64;
    if (s > n_tiles()) s = n_tiles();
    return static_cast<int>(s < 1 ? 1 : s);
  }
};

inline int pick_ob(int O) { return O >= 4 ? 4 : O; }

template <typename T, int KS, int OB>
cudaError_t launch_fwd(const T* x, const int32_t* labels, const T* weight, const T* bias, T* out, const Dims& d,
                       cudaStream_t stream) {
  using A = acc_t<T>;
  using G = Region<KS>;
  constexpr int OBP = OB == 3 ? 4 : OB;
  const size_t smem = sizeof(A) * static_cast<size_t>(KS * KS * CC_FWD * OBP + CC_FWD * G::CSTR) +
                      sizeof(int) * static_cast<size_t>(2 * G::NPOS + d.nwords() + d.K + 1);
  auto kfn = class_conv_fwd_kernel<T, KS, OB>;
  cudaError_t err = set_smem_limit(kfn, smem);
  if (err != cudaSuccess) return err;
  const int n_ob = ceil_div(d.O, OB);
  if (static_cast<int64_t>(d.B) * n_ob > 65535) return cudaErrorInvalidValue;
  const dim3 grid(d.tiles_x(), d.tiles_y(), d.B * n_ob);
  SG_LAUNCH(kfn, grid, dim3(NT), smem, stream, x, labels, weight, bias, out, d.C, d.H, d.W, d.K, d.O, n_ob,
            d.reflect ? 1 : 0, d.tanh ? 1 : 0);
  return SG_LAST_ERROR();
}

template <typename T, int KS>
cudaError_t launch_fwd_ob(const T* x, const int32_t* labels, const T* weight, const T* bias, T* out, const Dims& d,
                          cudaStream_t stream) {
  switch (pick_ob(d.O)) {
    case 1: return launch_fwd<T, KS, 1>(x, labels, weight, bias, out, d, stream);
    case 2: return launch_fwd<T, KS, 2>(x, labels, weight, bias, out, d, stream);
    case 3: return launch_fwd<T, KS, 3>(x, labels, weight, bias, out, d, stream);
    default: return launch_fwd<T, KS, 4>(x, labels, weight, bias, out, d, stream);
  }
}

// out [B,K,O,H,W] = class_conv(x, labels, weight, bias). bias may be null.
template <typename T>
cudaError_t forward(const T* x, const int32_t* labels, const T* weight, const T* bias, T* out, const Dims& d,
                    cudaStream_t stream) {
  if (d.B < 1 || d.C < 1 || d.H < 1 || d.W < 1 || d.K < 1 || d.O < 1) return cudaErrorInvalidValue;
  if (d.reflect && (d.ks / 2 >= d.H || d.ks / 2 >= d.W)) return cudaErrorInvalidValue;
  switch (d.ks) {
    case 1: return launch_fwd_ob<T, 1>(x, labels, weight, bias, out, d, stream);
    case 3: return launch_fwd_ob<T, 3>(x, labels, weight, bias, out, d, stream);
    case 5: return launch_fwd_ob<T, 5>(x, labels, weight, bias, out, d, stream);
    case 7: return launch_fwd_ob<T, 7>(x, labels, weight, bias, out, d, stream);
    default: return cudaErrorInvalidValue;
  }
}

// Workspace bytes for backward (0 is never returned; pass the same dims to backward).
template <typename T> size_t backward_workspace_bytes(const Dims& d) {
  using A = acc_t<T>;
  Workspace w{nullptr, 0};
  w.take<unsigned>(static_cast<size_t>(d.n_tiles()) * d.nwords());
  const int S = d.dw_splits();
  w.take<A>(static_cast<size_t>(d.K) * S * d.ockk());
  w.take<int>(static_cast<size_t>(d.K) * S);
  w.take<A>(static_cast<size_t>(d.K) * d.O * plane_sum_splits(static_cast<int64_t>(d.H) * d.W));
  return w.used;
}

template <typename T, int KS>
cudaError_t launch_dx(const T* grad_out, const T* out, const int32_t* labels, const T* weight, T* dx, const Dims& d,
                      cudaStream_t stream) {
  using A = acc_t<T>;
  using G = Region<KS>;
  const size_t smem = sizeof(A) * static_cast<size_t>(KS * KS * OC_DX * CC_DX + OC_DX * G::CSTR) +
                      sizeof(int) * static_cast<size_t>(TH * TW + d.nwords() + d.K + 1);
  auto kfn = class_conv_dx_kernel<T, KS>;
  cudaError_t err = set_smem_limit(kfn, smem);
  if (err != cudaSuccess) return err;
  if (d.B > 65535) return cudaErrorInvalidValue;
  SG_LAUNCH(kfn, dim3(d.tiles_x(), d.tiles_y(), d.B), dim3(NT), smem, stream, grad_out, out, labels, weight, dx, d.C,
            d.H, d.W, d.K, d.O, d.reflect ? 1 : 0, d.tanh ? 1 : 0);
  return SG_LAST_ERROR();
}

template <typename T, int KS, int OB>
cudaError_t launch_dw(const T* grad_out, const T* out, const T* x, const int32_t* labels, const unsigned* tile_mask,
                      acc_t<T>* partial, int* flags, const Dims& d, cudaStream_t stream) {
  using A = acc_t<T>;
  using G = Region<KS>;
  using Cfg = DwCfg<KS>;
  const size_t tile_bytes = sizeof(A) * static_cast<size_t>(CC_DW * G::CSTR + OB * TH * Cfg::GSW);
  const size_t red_bytes = sizeof(A) * static_cast<size_t>(Cfg::NTW * KS * OB);
  const size_t smem = tile_bytes > red_bytes ? tile_bytes : red_bytes;
  auto kfn = class_conv_dw_kernel<T, KS, OB>;
  cudaError_t err = set_smem_limit(kfn, smem);
  if (err != cudaSuccess) return err;
  const int n_ob = ceil_div(d.O, OB);
  const int S = d.dw_splits();
  const int64_t gz = static_cast<int64_t>(ceil_div(d.C, CC_DW)) * n_ob;
  if (gz > 65535 || d.K > 65535) return cudaErrorInvalidValue;
  SG_LAUNCH(kfn, dim3(S, d.K, static_cast<unsigned>(gz)), dim3(Cfg::NTW), smem, stream, grad_out, out, x, labels,
            tile_mask, partial, flags, d.B, d.C, d.H, d.W, d.K, d.O, n_ob, S, d.tiles_x(), d.tiles_y(),
            d.reflect ? 1 : 0, d.tanh ? 1 : 0);
  return SG_LAST_ERROR();
}

template <typename T, int KS>
cudaError_t launch_dw_ob(const T* grad_out, const T* out, const T* x, const int32_t* labels,
                         const unsigned* tile_mask, acc_t<T>* partial, int* flags, const Dims& d,
                         cudaStream_t stream) {
  switch (pick_ob(d.O)) {
    case 1: return launch_dw<T, KS, 1>(grad_out, out, x, labels, tile_mask, partial, flags, d, stream);
    case 2: return launch_dw<T, KS, 2>(grad_out, out, x, labels, tile_mask, partial, flags, d, stream);
    case 3: return launch_dw<T, KS, 3>(grad_out, out, x, labels, tile_mask, partial, flags, d, stream);
    default: return launch_dw<T, KS, 4>(grad_out, out, x, labels, tile_mask, partial, flags, d, stream);
  }
}

// Gradients of class_conv. out (the forward output) is required when d.tanh. Any of dx, dweight,
// dbias may be null (not computed). workspace: backward_workspace_bytes<T>(d) bytes, 256-aligned.
template <typename T>
cudaError_t backward(const T* grad_out, const T* x, const int32_t* labels, const T* weight, const T* out, T* dx,
                     T* dweight, T* dbias, const Dims& d, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream) {
  using A = acc_t<T>;
  if (d.B < 1 || d.C < 1 || d.H < 1 || d.W < 1 || d.K < 1 || d.O < 1) return cudaErrorInvalidValue;
  if (!supported_kernel_size(d.ks)) return cudaErrorInvalidValue;
  if (d.reflect && (d.ks / 2 >= d.H || d.ks / 2 >= d.W)) return cudaErrorInvalidValue;
  if (d.tanh && out == nullptr) return cudaErrorInvalidValue;
  if (workspace_bytes < backward_workspace_bytes<T>(d) || workspace == nullptr) return cudaErrorInvalidValue;
  const T* tanh_out = d.tanh ? out : nullptr;
  Workspace w{static_cast<unsigned char*>(workspace), 0};
  unsigned* tile_mask = w.take<unsigned>(static_cast<size_t>(d.n_tiles()) * d.nwords());
  const int S = d.dw_splits();
  A* partial = w.take<A>(static_cast<size_t>(d.K) * S * d.ockk());
  int* flags = w.take<int>(static_cast<size_t>(d.K) * S);
  A* db_partial = w.take<A>(static_cast<size_t>(d.K) * d.O * plane_sum_splits(static_cast<int64_t>(d.H) * d.W));
  cudaError_t err = cudaSuccess;
  if (dx != nullptr) {
    switch (d.ks) {
      case 1: err = launch_dx<T, 1>(grad_out, tanh_out, labels, weight, dx, d, stream); break;
      case 3: err = launch_dx<T, 3>(grad_out, tanh_out, labels, weight, dx, d, stream); break;
      case 5: err = launch_dx<T, 5>(grad_out, tanh_out, labels, weight, dx, d, stream); break;
      default: err = launch_dx<T, 7>(grad_out, tanh_out, labels, weight, dx, d, stream); break;
    }
    if (err != cudaSuccess) return err;
  }
  if (dweight != nullptr) {
    if (d.B > 65535) return cudaErrorInvalidValue;
    auto ktm = class_conv_tile_mask_kernel<void>;
    SG_LAUNCH(ktm, dim3(d.tiles_x(), d.tiles_y(), d.B), dim3(256),
              sizeof(unsigned) * static_cast<size_t>(d.nwords()), stream, labels, tile_mask, d.H, d.W, d.K,
              d.ks / 2, d.reflect ? 1 : 0);
    err = SG_LAST_ERROR();
    if (err != cudaSuccess) return err;
    switch (d.ks) {
      case 1: err = launch_dw_ob<T, 1>(grad_out, tanh_out, x, labels, tile_mask, partial, flags, d, stream); break;
      case 3: err = launch_dw_ob<T, 3>(grad_out, tanh_out, x, labels, tile_mask, partial, flags, d, stream); break;
      case 5: err = launch_dw_ob<T, 5>(grad_out, tanh_out, x, labels, tile_mask, partial, flags, d, stream); break;
      default: err = launch_dw_ob<T, 7>(grad_out, tanh_out, x, labels, tile_mask, partial, flags, d, stream); break;
    }
    if (err != cudaSuccess) return err;
    const int64_t total = static_cast<int64_t>(d.K) * d.ockk();
    auto kred = class_conv_dw_reduce_kernel<T>;
    SG_LAUNCH(kred, dim3(static_cast<unsigned>(ceil_div64(total, 256))), dim3(256), 0, stream, partial, flags,
              dweight, d.K, S, d.ockk());
    err = SG_LAST_ERROR();
    if (err != cudaSuccess) return err;
  }
  if (dbias != nullptr) {
    err = launch_plane_sum<T>(grad_out, tanh_out, dbias, db_partial, d.B, d.K * d.O, static_cast<int64_t>(d.H) * d.W,
                              stream);
  }
  return err;
}

}  // namespace classconv
}  // namespace kern
}  // namespace semgan
