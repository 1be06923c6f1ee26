// Explicit instantiation (and matching `extern template` declarations) of the kernel launchers for
// one storage type. kernels_<dtype>.cu instantiate one dtype each, so that builds compile the four
// dtypes in parallel; kernels_instantiate.cu (the C ABI) declares them extern and instantiates
// nothing itself.
#pragma once

#include "class_conv_kernels.cuh"
#include "onehot_conv_kernels.cuh"

// PREFIX is empty (explicit instantiation definition) or `extern` (declaration).
#define SEMGAN_KERNELS_FOR_DTYPE(PREFIX, T)                                                                  \
  PREFIX template cudaError_t semgan::kern::classconv::forward<T>(                                          \
      const T*, const int32_t*, const T*, const T*, T*, const semgan::kern::classconv::Dims&, cudaStream_t); \
  PREFIX template cudaError_t semgan::kern::classconv::backward<T>(                                         \
      const T*, const T*, const int32_t*, const T*, const T*, T*, T*, T*, const semgan::kern::classconv::Dims&, \
      void*, size_t, cudaStream_t);                                                                          \
  PREFIX template cudaError_t semgan::kern::onehot::forward<T>(                                             \
      const int32_t*, const T*, const T*, const T*, T*, const semgan::kern::onehot::Dims&, void*, size_t,    \
      cudaStream_t);                                                                                         \
  PREFIX template cudaError_t semgan::kern::onehot::backward<T>(                                            \
      const T*, const int32_t*, const T*, const T*, T*, T*, T*, const semgan::kern::onehot::Dims&, void*,    \
      size_t, cudaStream_t);

#define SEMGAN_EXTERN_KERNELS(T) SEMGAN_KERNELS_FOR_DTYPE(extern, T)
#define SEMGAN_INSTANTIATE_KERNELS(T) SEMGAN_KERNELS_FOR_DTYPE(, T)
