/* C ABI of the semgan_fast CUDA kernels (no torch, no C++ templates in the interface).
 *
 * Used by the torch extension (csrc/class_conv.cu, csrc/onehot_conv.cu), by TensorRT plugins, and
 * by the CPU emulation tests (ctypes, tests/test_csrc_build.py). Definitions:
 * csrc/kernels_instantiate.cu. All tensors are contiguous, row-major, on the current device;
 * labels are int32. Every entry point returns 0 on success or a cudaError_t value
 * (cudaErrorInvalidValue = 1 for unsupported or inconsistent arguments). Launches are asynchronous
 * on `stream`; nothing synchronises.
 *
 * dtype: SEMGAN_DTYPE_F32 / F16 / BF16 / F64. Accumulation is fp32 (fp64 for F64).
 */
#ifndef SEMGAN_KERNELS_H_
#define SEMGAN_KERNELS_H_

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { SEMGAN_DTYPE_F32 = 0, SEMGAN_DTYPE_F16 = 1, SEMGAN_DTYPE_BF16 = 2, SEMGAN_DTYPE_F64 = 3 };

/* ---- class_conv: x [B,C,H,W], labels [B,H,W], weight [K,O,C,ks,ks], bias [K,O] or NULL,
 *      out [B,K,O,H,W]; ks in {1,3,5,7}; padding ks/2, reflect (needs ks/2 < H, W) or zeros. */
int semgan_class_conv_supported(int64_t kernel_size);

int semgan_class_conv_forward(int dtype, const void* x, const int32_t* labels, const void* weight,
                              const void* bias, void* out, int64_t B, int64_t C, int64_t H, int64_t W,
                              int64_t K, int64_t O, int64_t kernel_size, int reflect, int act_tanh,
                              cudaStream_t stream);

size_t semgan_class_conv_backward_workspace_size(int dtype, int64_t B, int64_t C, int64_t H, int64_t W,
                                                 int64_t K, int64_t O, int64_t kernel_size);

/* out = forward output (needed when act_tanh). dx [B,C,H,W], dweight [K,O,C,ks,ks], dbias [K,O]:
 * each may be NULL (not computed). Deterministic (no atomics on gradients). */
int semgan_class_conv_backward(int dtype, const void* grad_out, const void* x, const int32_t* labels,
                               const void* weight, const void* out, void* dx, void* dweight, void* dbias,
                               int64_t B, int64_t C, int64_t H, int64_t W, int64_t K, int64_t O,
                               int64_t kernel_size, int reflect, int act_tanh, void* workspace,
                               size_t workspace_bytes, cudaStream_t stream);

/* ---- onehot_conv: labels [B,H,W], extra [B,E,H,W] or NULL (E = 0), weight [O,K+E,ks,ks],
 *      bias [O] or NULL, out [B,O,Ho,Wo], Ho = (H + 2*padding - ks) / stride + 1. */
size_t semgan_onehot_conv_forward_workspace_size(int dtype, int64_t B, int64_t H, int64_t W, int64_t K,
                                                 int64_t E, int64_t O, int64_t kernel_size, int64_t stride,
                                                 int64_t padding, int reflect);

int semgan_onehot_conv_forward(int dtype, const int32_t* labels, const void* extra, const void* weight,
                               const void* bias, void* out, int64_t B, int64_t H, int64_t W, int64_t K,
                               int64_t E, int64_t O, int64_t kernel_size, int64_t stride, int64_t padding,
                               int reflect, void* workspace, size_t workspace_bytes, cudaStream_t stream);

size_t semgan_onehot_conv_backward_workspace_size(int dtype, int64_t B, int64_t H, int64_t W, int64_t K,
                                                  int64_t E, int64_t O, int64_t kernel_size, int64_t stride,
                                                  int64_t padding, int reflect);

/* dweight [O,K+E,ks,ks], dbias [O], dextra [B,E,H,W]: each may be NULL. Deterministic. */
int semgan_onehot_conv_backward(int dtype, const void* grad_out, const int32_t* labels, const void* extra,
                                const void* weight, void* dweight, void* dbias, void* dextra, int64_t B,
                                int64_t H, int64_t W, int64_t K, int64_t E, int64_t O, int64_t kernel_size,
                                int64_t stride, int64_t padding, int reflect, void* workspace,
                                size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* SEMGAN_KERNELS_H_ */
