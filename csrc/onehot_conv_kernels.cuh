// onehot_conv CUDA kernels (forward and backward), torch-free: raw pointers, sizes, cudaStream_t.
//
//   out = conv2d(pad(cat([one_hot(labels, K), extra], 1)), weight, stride) + bias
//   labels int32 [B,H,W]; extra [B,E,H,W] or null (E = 0); weight [O,K+E,k,k] (any k);
//   bias [O] or null; stride >= 1 (1 or 2 in practice); padding p >= 0, 'zeros' or 'reflect'
//   (p < H, W); out [B,O,Ho,Wo] with Ho = (H + 2p - k) / stride + 1.
//
// The padded one-hot map has a single 1 per pixel, in channel labels[rho(q)], so the one-hot part
// is a gather of weight columns: out[:, p] += W[:, labels[rho(p*s - pad + d)], d] for every tap d
// (a zero-padding tap, or a label outside [0, K), adds nothing). The extra channels are a dense
// direct convolution.
//
// Forward: the weights are first transposed into a [K+E][k*k][Opad] accumulator-type table
// (Opad = O rounded up to 16) so that a tap's O-vector is contiguous; each thread owns one output
// pixel and 16 output channels in registers (vector loads from the table, L1-resident: one tile
// touches few classes).
// Backward:
//  * dweight (one-hot columns): dW[o, c, d] = sum over output pixels p whose tap d reads class c of
//    grad_out[o, p]. Block (split s, o-chunk) walks tiles s, s+S, ... of 8x32 output pixels; each
//    thread owns (o, d) items and their bins in shared memory (no two threads touch a bin, so no
//    atomics) and accumulates runs of equal labels in a register. Extra columns: dense sums of
//    grad * extra on the same tile. Partials [S][K+E][k*k][O] are summed in a fixed order.
//  * dbias: deterministic two-pass plane sum of grad_out.
//  * dextra: gather over the padded positions u with rho(u) = q (1 to 9 per pixel) and the taps
//    with (u - d) divisible by the stride.
#pragma once

#include "sg_common.cuh"

namespace semgan {
namespace kern {
namespace onehot {

constexpr int FT_W = 32;   // forward / dextra block: 32 x 4 pixels
constexpr int FT_H = 4;
constexpr int F_NT = FT_W * FT_H;
constexpr int OT = 16;     // output channels per forward thread
constexpr int DW_TH = 8;   // dweight tile: 8 x 32 output pixels
constexpr int DW_TW = 32;
constexpr int DW_NPIX = DW_TH * DW_TW;
constexpr int DW_NT = 256;
constexpr int DW_GS = DW_NPIX + 1;  // padded grad row (bank-conflict free across o)
constexpr int64_t kDwPartialBudget = int64_t(8) << 20;

struct Dims {
  int B, H, W, K, E, O, ks, stride, pad;
  bool reflect;
  int Ho() const { return (H + 2 * pad - ks) / stride + 1; }
  int Wo() const { return (W + 2 * pad - ks) / stride + 1; }
  int KE() const { return K + E; }
  int KK() const { return ks * ks; }
  int Opad() const { return round_up(O, OT); }
  int tiles_x() const { return ceil_div(Wo(), DW_TW); }
  int tiles_y() const { return ceil_div(Ho(), DW_TH); }
  int64_t n_tiles() const { return static_cast<int64_t>(B) * tiles_x() * tiles_y(); }
  int dw_splits() const {
    int64_t s = kDwPartialBudget / (static_cast<int64_t>(KE()) * KK() * O);
    if (s > 128) s = 128;
    if (s > n_tiles()) s = n_tiles();
    return static_cast<int>(s < 1 ? 1 : s);
  }
  bool valid() const {
    if (B < 1 || H < 1 || W < 1 || K < 1 || E < 0 || O < 1 || ks < 1 || stride < 1 || pad < 0) return false;
    if (H + 2 * pad < ks || W + 2 * pad < ks) return false;
    if (reflect && (pad >= H || pad >= W)) return false;
    return true;
  }
};

// wt[(ke * KK + d) * Opad + o] = weight[o, ke, d] (0 for o >= O).
template <typename T>
SG_GLOBAL void SG_LAUNCH_BOUNDS(256)
onehot_weight_table_kernel(const T* SG_RESTRICT weight, acc_t<T>* SG_RESTRICT wt, int O, int KE, int KK, int Opad) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
  if (i >= static_cast<int64_t>(KE) * KK * Opad) return;
  const int o = static_cast<int>(i % Opad);
  const int64_t r = i / Opad;
  const int ke = static_cast<int>(r / KK), d = static_cast<int>(r % KK);
  wt[i] = o < O ? to_acc(weight[(static_cast<int64_t>(o) * KE + ke) * KK + d]) : acc_t<T>(0);
}

template <typename T>
SG_GLOBAL void SG_LAUNCH_BOUNDS(F_NT)
onehot_fwd_kernel(const int32_t* SG_RESTRICT labels, const T* SG_RESTRICT extra, const acc_t<T>* SG_RESTRICT wt,
                  const T* SG_RESTRICT bias, T* SG_RESTRICT out, int H, int W, int K, int E, int O, int Opad, int ks,
                  int stride, int pad, int reflect, int Ho, int Wo, int n_ot) {
  using A = acc_t<T>;
  const int tid = threadIdx.x;
  const int ox = blockIdx.x * FT_W + tid % FT_W, oy = blockIdx.y * FT_H + tid / FT_W;
  const int b = blockIdx.z / n_ot, o0 = (blockIdx.z % n_ot) * OT;
  if (ox >= Wo || oy >= Ho) return;  // no shared memory, no barriers: early exit is safe
  const int KK = ks * ks;
  const int64_t HW = static_cast<int64_t>(H) * W;
  A acc[OT];
  SG_UNROLL
  for (int i = 0; i < OT; ++i) acc[i] = (bias != nullptr && o0 + i < O) ? to_acc(bias[o0 + i]) : A(0);
  for (int dy = 0; dy < ks; ++dy) {
    int iy = oy * stride + dy - pad;
    if (reflect) iy = reflect_index(iy, H);
    else if (iy < 0 || iy >= H) continue;
    for (int dx = 0; dx < ks; ++dx) {
      int ix = ox * stride + dx - pad;
      if (reflect) ix = reflect_index(ix, W);
      else if (ix < 0 || ix >= W) continue;
      const int64_t pix = static_cast<int64_t>(iy) * W + ix;
      const int d = dy * ks + dx;
      const int l = labels[b * HW + pix];
      if (l >= 0 && l < K) {
        const A* wr = wt + (static_cast<int64_t>(l) * KK + d) * Opad + o0;
        SG_UNROLL
        for (int i = 0; i < OT; i += 4) {
          A t4[4];
          load_vec<4>(wr + i, t4);
          SG_UNROLL
          for (int e = 0; e < 4; ++e) acc[i + e] += t4[e];
        }
      }
      for (int e = 0; e < E; ++e) {
        const A xv = to_acc(extra[(static_cast<int64_t>(b) * E + e) * HW + pix]);
        const A* wr = wt + (static_cast<int64_t>(K + e) * KK + d) * Opad + o0;
        SG_UNROLL
        for (int i = 0; i < OT; i += 4) {
          A t4[4];
          load_vec<4>(wr + i, t4);
          SG_UNROLL
          for (int q = 0; q < 4; ++q) acc[i + q] = sg_fma(xv, t4[q], acc[i + q]);
        }
      }
    }
  }
  const int64_t HoWo = static_cast<int64_t>(Ho) * Wo;
  SG_UNROLL
  for (int i = 0; i < OT; ++i) {
    const int oo = o0 + i;
    if (oo < O) out[(static_cast<int64_t>(b) * O + oo) * HoWo + static_cast<int64_t>(oy) * Wo + ox] = from_acc<T>(acc[i]);
  }
}

template <typename T>
SG_GLOBAL void SG_LAUNCH_BOUNDS(DW_NT)
onehot_dw_kernel(const T* SG_RESTRICT grad_out, const int32_t* SG_RESTRICT labels, const T* SG_RESTRICT extra,
                 acc_t<T>* SG_RESTRICT partial, int B, int H, int W, int K, int E, int O, int ks, int stride, int pad,
                 int reflect, int Ho, int Wo, int tiles_x, int tiles_y, int S, int OC) {
  using A = acc_t<T>;
  const int KK = ks * ks, KE = K + E;
  const int RH = (DW_TH - 1) * stride + ks, RW = (DW_TW - 1) * stride + ks, RHW = RH * RW;
  const int nbins = KE * KK * OC;
  SG_DYN_SMEM(smem);
  A* bins = reinterpret_cast<A*>(smem);                 // [KE][KK][OC], bin (ke, d, o) owned by item (o, d)
  A* gs = bins + nbins;                                 // [OC][DW_GS] grad tile
  A* xe = gs + OC * DW_GS;                              // [E][RHW] extra input window
  int* lab = reinterpret_cast<int*>(xe + E * RHW);      // [RHW] class or -1
  const int tid = threadIdx.x;
  const int split = blockIdx.x, o0 = blockIdx.y * OC;
  const int64_t HW = static_cast<int64_t>(H) * W, HoWo = static_cast<int64_t>(Ho) * Wo;
  const int per_img = tiles_x * tiles_y, total = B * per_img;
  for (int i = tid; i < nbins; i += DW_NT) bins[i] = A(0);

  for (int t = split; t < total; t += S) {
    const int b = t / per_img, rem = t % per_img;
    const int oy0 = (rem / tiles_x) * DW_TH, ox0 = (rem % tiles_x) * DW_TW;
    const int iy0 = oy0 * stride - pad, ix0 = ox0 * stride - pad;
    SG_SYNC();
    for (int i = tid; i < RHW; i += DW_NT) {
      const int off = padded_offset(iy0 + i / RW, ix0 + i % RW, H, W, reflect != 0);
      int l = -1;
      if (off >= 0) {
        l = labels[b * HW + off];
        if (l < 0 || l >= K) l = -1;
      }
      lab[i] = l;
      for (int e = 0; e < E; ++e)
        xe[e * RHW + i] = off >= 0 ? to_acc(extra[(static_cast<int64_t>(b) * E + e) * HW + off]) : A(0);
    }
    for (int i = tid; i < OC * DW_NPIX; i += DW_NT) {
      const int o = i / DW_NPIX, pix = i % DW_NPIX;
      const int oy = oy0 + pix / DW_TW, ox = ox0 + pix % DW_TW, oo = o0 + o;
      A v = A(0);
      if (oo < O && oy < Ho && ox < Wo)
        v = to_acc(grad_out[(static_cast<int64_t>(b) * O + oo) * HoWo + static_cast<int64_t>(oy) * Wo + ox]);
      gs[o * DW_GS + pix] = v;
    }
    SG_SYNC();
    for (int it = tid; it < OC * KK; it += DW_NT) {
      const int o = it % OC, d = it / OC;
      const int dy = d / ks, dx = d % ks;
      const A* grow = gs + o * DW_GS;
      int cur = -1;
      A run = A(0);
      for (int pix = 0; pix < DW_NPIX; ++pix) {
        const int py = pix / DW_TW, px = pix % DW_TW;
        const int l = lab[(py * stride + dy) * RW + px * stride + dx];
        if (l != cur) {
          if (cur >= 0) bins[(cur * KK + d) * OC + o] += run;
          cur = l;
          run = A(0);
        }
        run += grow[pix];
      }
      if (cur >= 0) bins[(cur * KK + d) * OC + o] += run;
      for (int e = 0; e < E; ++e) {
        const A* xr = xe + e * RHW;
        A a = A(0);
        for (int pix = 0; pix < DW_NPIX; ++pix) {
          const int py = pix / DW_TW, px = pix % DW_TW;
          a = sg_fma(grow[pix], xr[(py * stride + dy) * RW + px * stride + dx], a);
        }
        bins[((K + e) * KK + d) * OC + o] += a;
      }
    }
  }
  SG_SYNC();
  for (int i = tid; i < nbins; i += DW_NT) {
    const int o = i % OC, r = i / OC, oo = o0 + o;
    if (oo < O) partial[(static_cast<int64_t>(split) * KE * KK + r) * O + oo] = bins[i];
  }
}

template <typename T>
SG_GLOBAL void SG_LAUNCH_BOUNDS(256)
onehot_dw_reduce_kernel(const acc_t<T>* SG_RESTRICT partial, T* SG_RESTRICT dweight, int O, int KEKK, int S) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
  if (i >= static_cast<int64_t>(O) * KEKK) return;
  const int o = static_cast<int>(i / KEKK), r = static_cast<int>(i % KEKK);
  acc_t<T> s = 0;
  for (int sp = 0; sp < S; ++sp) s += partial[(static_cast<int64_t>(sp) * KEKK + r) * O + o];
  dweight[i] = from_acc<T>(s);
}

template <typename T, int ET>
SG_GLOBAL void SG_LAUNCH_BOUNDS(F_NT)
onehot_dextra_kernel(const T* SG_RESTRICT grad_out, const acc_t<T>* SG_RESTRICT wt, T* SG_RESTRICT dextra, int H,
                     int W, int K, int E, int O, int Opad, int ks, int stride, int pad, int reflect, int Ho, int Wo,
                     int n_et) {
  using A = acc_t<T>;
  const int tid = threadIdx.x;
  const int qx = blockIdx.x * FT_W + tid % FT_W, qy = blockIdx.y * FT_H + tid / FT_W;
  const int b = blockIdx.z / n_et, e0 = (blockIdx.z % n_et) * ET;
  if (qx >= W || qy >= H) return;
  const int KK = ks * ks;
  const int ne = sg_min(ET, E - e0);
  const int64_t HoWo = static_cast<int64_t>(Ho) * Wo;
  // Padded coordinates U (= u + pad) whose padding map reads q.
  int uy[3], ux[3];
  int nuy = 1, nux = 1;
  uy[0] = qy + pad;
  ux[0] = qx + pad;
  if (reflect) {
    if (qy >= 1 && qy <= pad) uy[nuy++] = pad - qy;
    if (qy <= H - 2 && qy >= H - 1 - pad) uy[nuy++] = 2 * (H - 1) - qy + pad;
    if (qx >= 1 && qx <= pad) ux[nux++] = pad - qx;
    if (qx <= W - 2 && qx >= W - 1 - pad) ux[nux++] = 2 * (W - 1) - qx + pad;
  }
  A acc[ET];
  SG_UNROLL
  for (int e = 0; e < ET; ++e) acc[e] = A(0);
  const T* gb = grad_out + static_cast<int64_t>(b) * O * HoWo;
  for (int a = 0; a < nuy; ++a) {
    for (int dy = 0; dy < ks; ++dy) {
      const int ty = uy[a] - dy;
      if (ty < 0 || ty % stride != 0 || ty / stride >= Ho) continue;
      const int py = ty / stride;
      for (int c = 0; c < nux; ++c) {
        for (int dx = 0; dx < ks; ++dx) {
          const int tx = ux[c] - dx;
          if (tx < 0 || tx % stride != 0 || tx / stride >= Wo) continue;
          const int px = tx / stride;
          const int d = dy * ks + dx;
          const T* gp = gb + static_cast<int64_t>(py) * Wo + px;
          const A* wr = wt + (static_cast<int64_t>(K + e0) * KK + d) * Opad;
          for (int o = 0; o < O; ++o) {
            const A gv = to_acc(gp[static_cast<int64_t>(o) * HoWo]);
            SG_UNROLL
            for (int e = 0; e < ET; ++e)
              if (e < ne) acc[e] = sg_fma(wr[static_cast<int64_t>(e) * KK * Opad + o], gv, acc[e]);
          }
        }
      }
    }
  }
  const int64_t HW = static_cast<int64_t>(H) * W;
  SG_UNROLL
  for (int e = 0; e < ET; ++e)
    if (e < ne) dextra[(static_cast<int64_t>(b) * E + e0 + e) * HW + static_cast<int64_t>(qy) * W + qx] = from_acc<T>(acc[e]);
}

// ---------------------------------------------------------------------------------------------
// Host launchers
// ---------------------------------------------------------------------------------------------
template <typename T> size_t forward_workspace_bytes(const Dims& d) {
  Workspace w{nullptr, 0};
  w.take<acc_t<T>>(static_cast<size_t>(d.KE()) * d.KK() * d.Opad());
  return w.used;
}

template <typename T> size_t backward_workspace_bytes(const Dims& d) {
  Workspace w{nullptr, 0};
  w.take<acc_t<T>>(static_cast<size_t>(d.KE()) * d.KK() * d.Opad());
  w.take<acc_t<T>>(static_cast<size_t>(d.dw_splits()) * d.KE() * d.KK() * d.O);
  w.take<acc_t<T>>(static_cast<size_t>(d.O) * plane_sum_splits(static_cast<int64_t>(d.Ho()) * d.Wo()));
  return w.used;
}

template <typename T>
cudaError_t launch_weight_table(const T* weight, acc_t<T>* wt, const Dims& d, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(d.KE()) * d.KK() * d.Opad();
  auto kfn = onehot_weight_table_kernel<T>;
  SG_LAUNCH(kfn, dim3(static_cast<unsigned>(ceil_div64(total, 256))), dim3(256), 0, stream, weight, wt, d.O, d.KE(),
            d.KK(), d.Opad());
  return SG_LAST_ERROR();
}

// out [B,O,Ho,Wo]. extra may be null iff d.E == 0; bias may be null.
template <typename T>
cudaError_t forward(const int32_t* labels, const T* extra, const T* weight, const T* bias, T* out, const Dims& d,
                    void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (!d.valid() || (d.E > 0 && extra == nullptr)) return cudaErrorInvalidValue;
  if (workspace == nullptr || workspace_bytes < forward_workspace_bytes<T>(d)) return cudaErrorInvalidValue;
  const int n_ot = d.Opad() / OT;
  if (static_cast<int64_t>(d.B) * n_ot > 65535) return cudaErrorInvalidValue;
  Workspace w{static_cast<unsigned char*>(workspace), 0};
  acc_t<T>* wt = w.take<acc_t<T>>(static_cast<size_t>(d.KE()) * d.KK() * d.Opad());
  cudaError_t err = launch_weight_table<T>(weight, wt, d, stream);
  if (err != cudaSuccess) return err;
  auto kfn = onehot_fwd_kernel<T>;
  const dim3 grid(ceil_div(d.Wo(), FT_W), ceil_div(d.Ho(), FT_H), d.B * n_ot);
  SG_LAUNCH(kfn, grid, dim3(F_NT), 0, stream, labels, extra, wt, bias, out, d.H, d.W, d.K, d.E, d.O, d.Opad(), d.ks,
            d.stride, d.pad, d.reflect ? 1 : 0, d.Ho(), d.Wo(), n_ot);
  return SG_LAST_ERROR();
}

template <typename T> size_t dw_smem_bytes(const Dims& d, int OC) {
  const int RH = (DW_TH - 1) * d.stride + d.ks, RW = (DW_TW - 1) * d.stride + d.ks;
  return sizeof(acc_t<T>) * (static_cast<size_t>(d.KE()) * d.KK() * OC + static_cast<size_t>(OC) * DW_GS +
                             static_cast<size_t>(d.E) * RH * RW) +
         sizeof(int) * static_cast<size_t>(RH) * RW;
}

template <typename T, int ET>
cudaError_t launch_dextra(const T* grad_out, const acc_t<T>* wt, T* dextra, const Dims& d, cudaStream_t stream) {
  const int n_et = ceil_div(d.E, ET);
  if (static_cast<int64_t>(d.B) * n_et > 65535) return cudaErrorInvalidValue;
  auto kfn = onehot_dextra_kernel<T, ET>;
  SG_LAUNCH(kfn, dim3(ceil_div(d.W, FT_W), ceil_div(d.H, FT_H), d.B * n_et), dim3(F_NT), 0, stream, grad_out, wt,
            dextra, d.H, d.W, d.K, d.E, d.O, d.Opad(), d.ks, d.stride, d.pad, d.reflect ? 1 : 0, d.Ho(), d.Wo(), n_et);
  return SG_LAST_ERROR();
}

// Gradients of onehot_conv. Any of dweight [O,K+E,k,k], dbias [O], dextra [B,E,H,W] may be null.
template <typename T>
cudaError_t backward(const T* grad_out, const int32_t* labels, const T* extra, const T* weight, T* dweight, T* dbias,
                     T* dextra, const Dims& d, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  using A = acc_t<T>;
  if (!d.valid() || (d.E > 0 && extra == nullptr)) return cudaErrorInvalidValue;
  if (workspace == nullptr || workspace_bytes < backward_workspace_bytes<T>(d)) return cudaErrorInvalidValue;
  Workspace w{static_cast<unsigned char*>(workspace), 0};
  A* wt = w.take<A>(static_cast<size_t>(d.KE()) * d.KK() * d.Opad());
  const int S = d.dw_splits();
  A* partial = w.take<A>(static_cast<size_t>(S) * d.KE() * d.KK() * d.O);
  A* db_partial = w.take<A>(static_cast<size_t>(d.O) * plane_sum_splits(static_cast<int64_t>(d.Ho()) * d.Wo()));
  cudaError_t err = cudaSuccess;
  if (dextra != nullptr && d.E > 0) {
    err = launch_weight_table<T>(weight, wt, d, stream);
    if (err != cudaSuccess) return err;
    if (d.E == 1) err = launch_dextra<T, 1>(grad_out, wt, dextra, d, stream);
    else if (d.E == 2) err = launch_dextra<T, 2>(grad_out, wt, dextra, d, stream);
    else err = launch_dextra<T, 4>(grad_out, wt, dextra, d, stream);
    if (err != cudaSuccess) return err;
  }
  if (dweight != nullptr) {
    const size_t limit = max_smem_optin() < size_t(100) * 1024 ? max_smem_optin() : size_t(100) * 1024;
    int OC = 1;
    while (OC < 32 && OC < d.O) OC *= 2;
    while (OC > 1 && dw_smem_bytes<T>(d, OC) > limit) OC /= 2;
    const size_t smem = dw_smem_bytes<T>(d, OC);
    if (smem > limit) return cudaErrorInvalidValue;  // K * k * k far too large for one block's bins
    auto kfn = onehot_dw_kernel<T>;
    err = set_smem_limit(kfn, smem);
    if (err != cudaSuccess) return err;
    const int n_oc = ceil_div(d.O, OC);
    if (n_oc > 65535) return cudaErrorInvalidValue;
    SG_LAUNCH(kfn, dim3(S, n_oc), dim3(DW_NT), smem, stream, grad_out, labels, extra, partial, d.B, d.H, d.W, d.K, d.E,
              d.O, d.ks, d.stride, d.pad, d.reflect ? 1 : 0, d.Ho(), d.Wo(), d.tiles_x(), d.tiles_y(), S, OC);
    err = SG_LAST_ERROR();
    if (err != cudaSuccess) return err;
    const int64_t total = static_cast<int64_t>(d.O) * d.KE() * d.KK();
    auto kred = onehot_dw_reduce_kernel<T>;
    SG_LAUNCH(kred, dim3(static_cast<unsigned>(ceil_div64(total, 256))), dim3(256), 0, stream, partial, dweight, d.O,
              d.KE() * d.KK(), S);
    err = SG_LAST_ERROR();
    if (err != cudaSuccess) return err;
  }
  if (dbias != nullptr) {
    const T* no_tanh = nullptr;
    err = launch_plane_sum<T>(grad_out, no_tanh, dbias, db_partial, d.B, d.O, static_cast<int64_t>(d.Ho()) * d.Wo(),
                              stream);
  }
  return err;
}

}  // namespace onehot
}  // namespace kern
}  // namespace semgan
