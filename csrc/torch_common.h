// Helpers shared by the torch bindings (class_conv.cu, onehot_conv.cu).
#pragma once

#include <string>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include "semgan_kernels.h"

namespace semgan_ext {

// SEMGAN_DTYPE_* code of a floating tensor (checked by the callers).
inline int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return SEMGAN_DTYPE_F32;
    case at::kHalf: return SEMGAN_DTYPE_F16;
    case at::kBFloat16: return SEMGAN_DTYPE_BF16;
    case at::kDouble: return SEMGAN_DTYPE_F64;
    default: return -1;
  }
}

inline void check_float_cuda(const at::Tensor& t, const char* op, const char* name, int64_t dim) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(dtype_code(t) >= 0, op, ": ", name, " must be float32, float16, bfloat16 or float64, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

inline void check_labels_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kInt, op, ": ", name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 3, op, ": ", name, " must have shape [B, H, W], got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

inline void check_same(const at::Tensor& ref, const char* ref_name, const at::Tensor& t, const char* op,
                       const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
              ref_name, " has dtype ", ref.scalar_type());
}

inline bool parse_padding_mode(const std::string& mode, const char* op) {
  TORCH_CHECK(mode == "reflect" || mode == "zeros", op, ": padding_mode must be 'reflect' or 'zeros', got '", mode,
              "'");
  return mode == "reflect";
}

inline void check_kernel_status(int rc, const char* op) {
  TORCH_CHECK(rc == 0, op, ": CUDA kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(rc)),
              rc == static_cast<int>(cudaErrorInvalidValue) ? " (unsupported argument combination)" : "");
}

}  // namespace semgan_ext
