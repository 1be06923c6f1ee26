// Shared device helpers for the semgan_fast CUDA kernels. No torch dependency: the kernels and
// their launchers are reused by the torch extension (csrc/class_conv.cu, csrc/onehot_conv.cu) and
// by TensorRT plugins.
//
// Two compilation modes:
//  * nvcc (default): ordinary CUDA.
//  * SEMGAN_EMULATE (host C++ compiler, tests only): the same kernel source runs on the CPU through
//    csrc/sg_emulate.h (one OS thread per CUDA thread, std::barrier for __syncthreads), so CI
//    machines without a GPU execute the real kernel code (tests/test_csrc_build.py).
//
// Kernels therefore use only: threadIdx/blockIdx/blockDim/gridDim, dynamic shared memory
// (SG_DYN_SMEM), SG_SYNC(), sg_atomic_or on shared words and sg_ffs. No warp intrinsics.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>
#include <vector_types.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#if defined(SEMGAN_EMULATE)
#include <cmath>
#include "sg_emulate.h"
#define SG_GLOBAL
#define SG_DEVICE inline
#define SG_HD inline
#define SG_RESTRICT __restrict
#define SG_LAUNCH_BOUNDS(n)
#define SG_DYN_SMEM(name) unsigned char* name = ::sg_emu::shared_mem()
#define SG_SYNC() ::sg_emu::syncthreads()
#define SG_LAUNCH(kfn, grid, block, smem, stream, ...) ::sg_emu::launch(kfn, grid, block, smem, __VA_ARGS__)
#define SG_LAST_ERROR() cudaSuccess
#define SG_UNROLL
#define SG_UNROLL_N(n)
#else
#define SG_GLOBAL __global__
#define SG_DEVICE __device__ __forceinline__
#define SG_HD __host__ __device__ __forceinline__
#define SG_RESTRICT __restrict__
#define SG_LAUNCH_BOUNDS(n) __launch_bounds__(n)
#define SG_DYN_SMEM(name)                                          \
  extern __shared__ __align__(16) unsigned char sg_dyn_smem_[];   \
  unsigned char* name = sg_dyn_smem_
#define SG_SYNC() __syncthreads()
#define SG_LAUNCH(kfn, grid, block, smem, stream, ...) kfn<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define SG_LAST_ERROR() cudaGetLastError()
#define SG_PRAGMA_(x) _Pragma(#x)
#define SG_UNROLL SG_PRAGMA_(unroll)
#define SG_UNROLL_N(n) SG_PRAGMA_(unroll n)
#endif

namespace semgan {
namespace kern {

// ---------------------------------------------------------------------------------------------
// Scalar types: storage T, accumulation acc_t<T> (fp32 for fp32/fp16/bf16, fp64 for fp64 so that
// fp64 gradcheck through the CUDA backend is meaningful).
// ---------------------------------------------------------------------------------------------
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_t = typename AccType<T>::type;

SG_HD float to_acc(float v) { return v; }
SG_HD double to_acc(double v) { return v; }
SG_HD float to_acc(__half v) { return __half2float(v); }
SG_HD float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> struct FromAcc;
template <> struct FromAcc<float> { SG_HD static float cvt(float v) { return v; } };
template <> struct FromAcc<double> { SG_HD static double cvt(double v) { return v; } };
template <> struct FromAcc<__half> { SG_HD static __half cvt(float v) { return __float2half_rn(v); } };
template <> struct FromAcc<__nv_bfloat16> {
  SG_HD static __nv_bfloat16 cvt(float v) { return __float2bfloat16_rn(v); }
};
template <typename T, typename A> SG_HD T from_acc(A v) { return FromAcc<T>::cvt(v); }

SG_HD float sg_fma(float a, float b, float c) { return fmaf(a, b, c); }
SG_HD double sg_fma(double a, double b, double c) { return fma(a, b, c); }
SG_HD float sg_tanh(float v) { return tanhf(v); }
SG_HD double sg_tanh(double v) { return tanh(v); }

// ---------------------------------------------------------------------------------------------
// Index helpers
// ---------------------------------------------------------------------------------------------
SG_HD int sg_min(int a, int b) { return a < b ? a : b; }
SG_HD int sg_max(int a, int b) { return a > b ? a : b; }
SG_HD int sg_clamp(int v, int lo, int hi) { return sg_min(sg_max(v, lo), hi); }

// torch's 'reflect' padding index map for i in [-(n-1), 2(n-1)] (one reflection).
SG_HD int reflect_index(int i, int n) {
  i = i < 0 ? -i : i;
  return i >= n ? 2 * (n - 1) - i : i;
}

// Offset gy * W + gx of the image pixel that padded position (gy, gx) reads, or -1 when it reads
// zero padding. Positions farther out than one reflection only feed outputs outside the image
// (tile overhang); they are clamped into the image so that every load stays in bounds.
SG_HD int padded_offset(int gy, int gx, int H, int W, bool reflect) {
  if (reflect) {
    gy = sg_clamp(reflect_index(gy, H), 0, H - 1);
    gx = sg_clamp(reflect_index(gx, W), 0, W - 1);
    return gy * W + gx;
  }
  return (gy >= 0 && gy < H && gx >= 0 && gx < W) ? gy * W + gx : -1;
}

// Rounds v up to a multiple of m.
SG_HD constexpr int round_up(int v, int m) { return (v + m - 1) / m * m; }
SG_HD constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }
SG_HD int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Atomics and bit tricks on shared memory words (emulated in SEMGAN_EMULATE mode).
#if defined(SEMGAN_EMULATE)
inline void sg_atomic_or(unsigned* p, unsigned v) { __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }
inline int sg_ffs(unsigned v) { return __builtin_ffs(static_cast<int>(v)); }
#else
SG_DEVICE void sg_atomic_or(unsigned* p, unsigned v) { atomicOr(p, v); }
SG_DEVICE int sg_ffs(unsigned v) { return __ffs(static_cast<int>(v)); }
#endif

// Compacts the set bits of words[0..nwords) into list[0..n) in increasing order; returns n.
// Called by one thread (K <= a few hundred classes: a short serial scan, deterministic order).
SG_DEVICE int bits_to_list(const unsigned* words, int nwords, int* list) {
  int n = 0;
  for (int w = 0; w < nwords; ++w) {
    unsigned bits = words[w];
    while (bits) {
      const int bit = sg_ffs(bits) - 1;
      list[n++] = w * 32 + bit;
      bits &= bits - 1;
    }
  }
  return n;
}

// Vector load of N consecutive accumulators from shared memory (N in {1, 2, 4}, 16-byte aligned for
// N = 4 floats): one LDS.64/128 instead of N scalar loads.
template <int N, typename A> SG_DEVICE void load_vec(const A* p, A (&v)[N]) {
  SG_UNROLL
  for (int i = 0; i < N; ++i) v[i] = p[i];
}
#if !defined(SEMGAN_EMULATE)
template <> SG_DEVICE void load_vec<4, float>(const float* p, float (&v)[4]) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
template <> SG_DEVICE void load_vec<2, float>(const float* p, float (&v)[2]) {
  const float2 t = *reinterpret_cast<const float2*>(p);
  v[0] = t.x; v[1] = t.y;
}
#endif

// ---------------------------------------------------------------------------------------------
// Deterministic per-plane sums (bias gradients): src is [B, NP, HW]; plane p's sum over (b, hw)
// optionally weighted by (1 - out^2) (tanh derivative). Pass 1 writes partial[p * S + s] for S
// contiguous hw-splits with a fixed-order tree reduction; pass 2 sums the S partials in order.
// ---------------------------------------------------------------------------------------------
constexpr int kPlaneThreads = 256;

template <typename T>
SG_GLOBAL void SG_LAUNCH_BOUNDS(kPlaneThreads)
plane_sum_partial_kernel(const T* SG_RESTRICT src, const T* SG_RESTRICT tanh_out, acc_t<T>* SG_RESTRICT partial,
                         int B, int NP, int64_t HW, int S) {
  using A = acc_t<T>;
  SG_DYN_SMEM(smem_raw);
  A* red = reinterpret_cast<A*>(smem_raw);
  const int plane = blockIdx.x, split = blockIdx.y, tid = threadIdx.x;
  const int64_t len = ceil_div64(HW, S);
  const int64_t lo = split * len;
  const int64_t hi = lo + len < HW ? lo + len : HW;
  A s = 0;
  for (int b = 0; b < B; ++b) {
    const int64_t base = (static_cast<int64_t>(b) * NP + plane) * HW;
    for (int64_t i = lo + tid; i < hi; i += kPlaneThreads) {
      A v = to_acc(src[base + i]);
      if (tanh_out != nullptr) {
        const A t = to_acc(tanh_out[base + i]);
        v *= A(1) - t * t;
      }
      s += v;
    }
  }
  red[tid] = s;
  SG_SYNC();
  for (int w = kPlaneThreads / 2; w > 0; w >>= 1) {
    if (tid < w) red[tid] += red[tid + w];
    SG_SYNC();
  }
  if (tid == 0) partial[static_cast<int64_t>(plane) * S + split] = red[0];
}

template <typename T>
SG_GLOBAL void SG_LAUNCH_BOUNDS(256)
plane_sum_final_kernel(const acc_t<T>* SG_RESTRICT partial, T* SG_RESTRICT dst, int NP, int S) {
  const int plane = blockIdx.x * 256 + threadIdx.x;
  if (plane >= NP) return;
  acc_t<T> s = 0;
  for (int i = 0; i < S; ++i) s += partial[static_cast<int64_t>(plane) * S + i];
  dst[plane] = from_acc<T>(s);
}

// Number of hw-splits for plane sums: ~8k elements per block and split, at most 64.
inline int plane_sum_splits(int64_t HW) {
  int64_t s = ceil_div64(HW, 8192);
  return static_cast<int>(s < 1 ? 1 : (s > 64 ? 64 : s));
}

template <typename T>
cudaError_t launch_plane_sum(const T* src, const T* tanh_out, T* dst, acc_t<T>* partial, int B, int NP, int64_t HW,
                             cudaStream_t stream) {
  const int S = plane_sum_splits(HW);
  auto k1 = plane_sum_partial_kernel<T>;
  SG_LAUNCH(k1, dim3(NP, S), dim3(kPlaneThreads), kPlaneThreads * sizeof(acc_t<T>), stream, src, tanh_out, partial,
            B, NP, HW, S);
  cudaError_t err = SG_LAST_ERROR();
  if (err != cudaSuccess) return err;
  auto k2 = plane_sum_final_kernel<T>;
  SG_LAUNCH(k2, dim3(ceil_div(NP, 256)), dim3(256), 0, stream, partial, dst, NP, S);
  return SG_LAST_ERROR();
}

// Opt a kernel into more than 48 KiB of dynamic shared memory when it needs it.
template <typename K> inline cudaError_t set_smem_limit(K kfn, size_t bytes) {
#if defined(SEMGAN_EMULATE)
  (void)kfn; (void)bytes;
  return cudaSuccess;
#else
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kfn), cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
#endif
}

// Largest dynamic shared memory per block that the current device grants with opt-in.
inline size_t max_smem_optin() {
#if defined(SEMGAN_EMULATE)
  return 99 * 1024;
#else
  int dev = 0, bytes = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 48 * 1024;
  if (cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return 48 * 1024;
  return static_cast<size_t>(bytes);
#endif
}

// Bump allocator over a caller-provided workspace (256-byte aligned chunks).
struct Workspace {
  unsigned char* base;
  size_t used;
  template <typename U> U* take(size_t count) {
    U* p = base == nullptr ? nullptr : reinterpret_cast<U*>(base + used);
    used += (count * sizeof(U) + 255) / 256 * 256;
    return p;
  }
};

}  // namespace kern
}  // namespace semgan
