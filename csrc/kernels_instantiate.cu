// Torch-free C ABI (semgan_kernels.h) over the kernel templates. The templates themselves are
// instantiated once per dtype in kernels_f32.cu, kernels_f16.cu, kernels_bf16.cu, kernels_f64.cu
// (declared `extern` here), so that the four compile in parallel. Together these files form the
// torch-free kernel library: compiled into the torch extension, into the CMake `semgan_kernels`
// library (for TensorRT plugins), by plain nvcc in tests/test_csrc_build.py, and, with
// -DSEMGAN_EMULATE and a host C++20 compiler, into the CPU emulation library of the tests.
#include "semgan_kernels.h"

#include <climits>

#include "kernels_explicit.cuh"

SEMGAN_EXTERN_KERNELS(float)
SEMGAN_EXTERN_KERNELS(__half)
SEMGAN_EXTERN_KERNELS(__nv_bfloat16)
SEMGAN_EXTERN_KERNELS(double)

namespace {

using semgan::kern::classconv::Dims;
using OnehotDims = semgan::kern::onehot::Dims;

bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

// Calls f(T{}) with T the storage type of `dtype`; unknown dtype -> cudaErrorInvalidValue.
template <typename F> int dispatch_dtype(int dtype, F&& f) {
  switch (dtype) {
    case SEMGAN_DTYPE_F32: return f(float{});
    case SEMGAN_DTYPE_F16: return f(__half{});
    case SEMGAN_DTYPE_BF16: return f(__nv_bfloat16{});
    case SEMGAN_DTYPE_F64: return f(double{});
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

template <typename F> size_t dispatch_dtype_size(int dtype, F&& f) {
  switch (dtype) {
    case SEMGAN_DTYPE_F32: return f(float{});
    case SEMGAN_DTYPE_F16: return f(__half{});
    case SEMGAN_DTYPE_BF16: return f(__nv_bfloat16{});
    case SEMGAN_DTYPE_F64: return f(double{});
    default: return 0;
  }
}

bool make_class_conv_dims(int64_t B, int64_t C, int64_t H, int64_t W, int64_t K, int64_t O, int64_t ks, int reflect,
                          int act_tanh, Dims* d) {
  if (!fits_int(B) || !fits_int(C) || !fits_int(H) || !fits_int(W) || !fits_int(K) || !fits_int(O)) return false;
  if (!fits_int(H * W) || !semgan::kern::classconv::supported_kernel_size(static_cast<int>(ks))) return false;
  if (B < 1 || C < 1 || H < 1 || W < 1 || K < 1 || O < 1) return false;
  *d = Dims{static_cast<int>(B), static_cast<int>(C), static_cast<int>(H), static_cast<int>(W), static_cast<int>(K),
            static_cast<int>(O), static_cast<int>(ks), reflect != 0, act_tanh != 0};
  return true;
}

bool make_onehot_dims(int64_t B, int64_t H, int64_t W, int64_t K, int64_t E, int64_t O, int64_t ks, int64_t stride,
                      int64_t padding, int reflect, OnehotDims* d) {
  if (!fits_int(B) || !fits_int(H) || !fits_int(W) || !fits_int(K) || !fits_int(E) || !fits_int(O)) return false;
  if (!fits_int(ks) || !fits_int(stride) || !fits_int(padding) || !fits_int(H * W) || !fits_int(K + E)) return false;
  if (ks > 64 || stride > 64 || padding > 1024) return false;
  *d = OnehotDims{static_cast<int>(B), static_cast<int>(H), static_cast<int>(W), static_cast<int>(K),
                  static_cast<int>(E), static_cast<int>(O), static_cast<int>(ks), static_cast<int>(stride),
                  static_cast<int>(padding), reflect != 0};
  if (!d->valid()) return false;
  return fits_int(static_cast<int64_t>(d->Ho()) * d->Wo());
}

}  // namespace

extern "C" {

int semgan_class_conv_supported(int64_t kernel_size) {
  return semgan::kern::classconv::supported_kernel_size(static_cast<int>(kernel_size)) ? 1 : 0;
}

int semgan_class_conv_forward(int dtype, const void* x, const int32_t* labels, const void* weight, const void* bias,
                              void* out, int64_t B, int64_t C, int64_t H, int64_t W, int64_t K, int64_t O,
                              int64_t kernel_size, int reflect, int act_tanh, cudaStream_t stream) {
  Dims d;
  if (!make_class_conv_dims(B, C, H, W, K, O, kernel_size, reflect, act_tanh, &d))
    return static_cast<int>(cudaErrorInvalidValue);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return static_cast<int>(semgan::kern::classconv::forward<T>(
        static_cast<const T*>(x), labels, static_cast<const T*>(weight), static_cast<const T*>(bias),
        static_cast<T*>(out), d, stream));
  });
}

size_t semgan_class_conv_backward_workspace_size(int dtype, int64_t B, int64_t C, int64_t H, int64_t W, int64_t K,
                                                 int64_t O, int64_t kernel_size) {
  Dims d;
  if (!make_class_conv_dims(B, C, H, W, K, O, kernel_size, 0, 0, &d)) return 0;
  return dispatch_dtype_size(dtype, [&](auto tag) {
    using T = decltype(tag);
    return semgan::kern::classconv::backward_workspace_bytes<T>(d);
  });
}

int semgan_class_conv_backward(int dtype, const void* grad_out, const void* x, const int32_t* labels,
                               const void* weight, const void* out, void* dx, void* dweight, void* dbias, int64_t B,
                               int64_t C, int64_t H, int64_t W, int64_t K, int64_t O, int64_t kernel_size,
                               int reflect, int act_tanh, void* workspace, size_t workspace_bytes,
                               cudaStream_t stream) {
  Dims d;
  if (!make_class_conv_dims(B, C, H, W, K, O, kernel_size, reflect, act_tanh, &d))
    return static_cast<int>(cudaErrorInvalidValue);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return static_cast<int>(semgan::kern::classconv::backward<T>(
        static_cast<const T*>(grad_out), static_cast<const T*>(x), labels, static_cast<const T*>(weight),
        static_cast<const T*>(out), static_cast<T*>(dx), static_cast<T*>(dweight), static_cast<T*>(dbias), d,
        workspace, workspace_bytes, stream));
  });
}

size_t semgan_onehot_conv_forward_workspace_size(int dtype, int64_t B, int64_t H, int64_t W, int64_t K, int64_t E,
                                                 int64_t O, int64_t kernel_size, int64_t stride, int64_t padding,
                                                 int reflect) {
  OnehotDims d;
  if (!make_onehot_dims(B, H, W, K, E, O, kernel_size, stride, padding, reflect, &d)) return 0;
  return dispatch_dtype_size(dtype, [&](auto tag) {
    using T = decltype(tag);
    return semgan::kern::onehot::forward_workspace_bytes<T>(d);
  });
}

int semgan_onehot_conv_forward(int dtype, const int32_t* labels, const void* extra, const void* weight,
                               const void* bias, void* out, int64_t B, int64_t H, int64_t W, int64_t K, int64_t E,
                               int64_t O, int64_t kernel_size, int64_t stride, int64_t padding, int reflect,
                               void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  OnehotDims d;
  if (!make_onehot_dims(B, H, W, K, E, O, kernel_size, stride, padding, reflect, &d))
    return static_cast<int>(cudaErrorInvalidValue);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return static_cast<int>(semgan::kern::onehot::forward<T>(
        labels, static_cast<const T*>(extra), static_cast<const T*>(weight), static_cast<const T*>(bias),
        static_cast<T*>(out), d, workspace, workspace_bytes, stream));
  });
}

size_t semgan_onehot_conv_backward_workspace_size(int dtype, int64_t B, int64_t H, int64_t W, int64_t K, int64_t E,
                                                  int64_t O, int64_t kernel_size, int64_t stride, int64_t padding,
                                                  int reflect) {
  OnehotDims d;
  if (!make_onehot_dims(B, H, W, K, E, O, kernel_size, stride, padding, reflect, &d)) return 0;
  return dispatch_dtype_size(dtype, [&](auto tag) {
    using T = decltype(tag);
    return semgan::kern::onehot::backward_workspace_bytes<T>(d);
  });
}

int semgan_onehot_conv_backward(int dtype, const void* grad_out, const int32_t* labels, const void* extra,
                                const void* weight, void* dweight, void* dbias, void* dextra, int64_t B, int64_t H,
                                int64_t W, int64_t K, int64_t E, int64_t O, int64_t kernel_size, int64_t stride,
                                int64_t padding, int reflect, void* workspace, size_t workspace_bytes,
                                cudaStream_t stream) {
  OnehotDims d;
  if (!make_onehot_dims(B, H, W, K, E, O, kernel_size, stride, padding, reflect, &d))
    return static_cast<int>(cudaErrorInvalidValue);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return static_cast<int>(semgan::kern::onehot::backward<T>(
        static_cast<const T*>(grad_out), labels, static_cast<const T*>(extra), static_cast<const T*>(weight),
        static_cast<T*>(dweight), static_cast<T*>(dbias), static_cast<T*>(dextra), d, workspace, workspace_bytes,
        stream));
  });
}

}  // extern "C"
