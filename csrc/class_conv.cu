// Torch bindings of the class_conv kernels (class_conv_kernels.cuh through the C ABI).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "torch_common.h"
#include "torch_ops.h"

namespace semgan_ext {
namespace {

struct ClassConvArgs {
  int64_t B, C, H, W, K, O, ks;
  bool reflect, tanh;
};

ClassConvArgs check_class_conv(const char* op, const at::Tensor& x, const at::Tensor& labels, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const std::string& padding_mode,
                               const std::optional<std::string>& activation) {
  check_float_cuda(x, op, "x", 4);
  check_labels_cuda(labels, op, "labels");
  check_float_cuda(weight, op, "weight", 5);
  check_same(x, "x", weight, op, "weight");
  TORCH_CHECK(labels.device() == x.device(), op, ": labels is on ", labels.device(), " but x is on ", x.device());
  ClassConvArgs a{x.size(0), x.size(1), x.size(2), x.size(3), weight.size(0), weight.size(1), weight.size(3),
                  parse_padding_mode(padding_mode, op), false};
  TORCH_CHECK(labels.size(0) == a.B && labels.size(1) == a.H && labels.size(2) == a.W, op,
              ": labels must have shape [B, H, W] = [", a.B, ", ", a.H, ", ", a.W, "], got ", labels.sizes());
  TORCH_CHECK(weight.size(2) == a.C, op, ": weight.shape[2] must equal x.shape[1] = ", a.C, ", got ", weight.sizes());
  TORCH_CHECK(weight.size(3) == weight.size(4) && weight.size(3) % 2 == 1, op,
              ": weight must be [K, O, C, k, k] with k odd, got ", weight.sizes());
  TORCH_CHECK(semgan_class_conv_supported(a.ks), op, ": weight kernel size ", a.ks,
              " is not supported by the CUDA kernels (k in {1, 3, 5, 7})");
  TORCH_CHECK(a.K >= 1 && a.O >= 1, op, ": weight must have K >= 1 classes and O >= 1 outputs, got ", weight.sizes());
  if (bias.has_value() && bias->defined()) {
    check_float_cuda(*bias, op, "bias", 2);
    check_same(x, "x", *bias, op, "bias");
    TORCH_CHECK(bias->size(0) == a.K && bias->size(1) == a.O, op, ": bias must have shape [K, O] = [", a.K, ", ", a.O,
                "], got ", bias->sizes());
  }
  if (activation.has_value()) {
    TORCH_CHECK(*activation == "tanh" || *activation == "none", op,
                ": activation must be None, 'none' or 'tanh', got '", *activation, "'");
    a.tanh = *activation == "tanh";
  }
  if (a.reflect && a.B * a.C > 0) {
    TORCH_CHECK(a.ks / 2 < a.H && a.ks / 2 < a.W, op, ": padding_mode='reflect' needs H and W > kernel//2 = ",
                a.ks / 2, ", got x of shape ", x.sizes());
  }
  return a;
}

const void* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr() : nullptr;
}

}  // namespace

at::Tensor class_conv_forward(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const std::string& padding_mode,
                              const std::optional<std::string>& activation) {
  const char* op = "class_conv_forward";
  const ClassConvArgs a = check_class_conv(op, x, labels, weight, bias, padding_mode, activation);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({a.B, a.K, a.O, a.H, a.W}, x.options());
  if (out.numel() == 0) return out;
  TORCH_CHECK(a.C > 0, op, ": x must have at least one channel");
  const int rc = semgan_class_conv_forward(dtype_code(x), x.data_ptr(), labels.data_ptr<int32_t>(), weight.data_ptr(),
                                           opt_ptr(bias), out.data_ptr(), a.B, a.C, a.H, a.W, a.K, a.O, a.ks,
                                           a.reflect, a.tanh, at::cuda::getCurrentCUDAStream().stream());
  check_kernel_status(rc, op);
  return out;
}

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> class_conv_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& labels, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& out, const std::string& padding_mode,
    const std::optional<std::string>& activation) {
  const char* op = "class_conv_backward";
  const ClassConvArgs a = check_class_conv(op, x, labels, weight, bias, padding_mode, activation);
  check_float_cuda(grad_out, op, "grad_out", 5);
  check_same(x, "x", grad_out, op, "grad_out");
  const std::vector<int64_t> out_shape{a.B, a.K, a.O, a.H, a.W};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_shape), op, ": grad_out must have shape [B, K, O, H, W] = ",
              at::IntArrayRef(out_shape), ", got ", grad_out.sizes());
  if (a.tanh) {  // the tanh derivative is 1 - out^2
    TORCH_CHECK(out.has_value() && out->defined(), op, ": out (the forward output) is required with activation='tanh'");
    check_float_cuda(*out, op, "out", 5);
    check_same(x, "x", *out, op, "out");
    TORCH_CHECK(out->sizes() == at::IntArrayRef(out_shape), op,
                ": out (the forward output) must have shape [B, K, O, H, W] = ", at::IntArrayRef(out_shape), ", got ",
                out->sizes());
  }
  const bool has_bias = bias.has_value() && bias->defined();
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = at::empty_like(x);
  at::Tensor dweight = at::empty_like(weight);
  std::optional<at::Tensor> dbias;
  if (has_bias) dbias = at::empty_like(*bias);
  if (a.B * a.H * a.W == 0 || a.C == 0) {  // nothing to reduce: zero gradients
    dweight.zero_();
    if (dbias) dbias->zero_();
    return {dx.zero_(), dweight, dbias};
  }
  const int code = dtype_code(x);
  const size_t nbytes = semgan_class_conv_backward_workspace_size(code, a.B, a.C, a.H, a.W, a.K, a.O, a.ks);
  TORCH_CHECK(nbytes > 0, op, ": unsupported sizes for the CUDA kernels: x ", x.sizes(), ", weight ", weight.sizes());
  at::Tensor workspace = at::empty({static_cast<int64_t>(nbytes)}, x.options().dtype(at::kByte));
  const int rc = semgan_class_conv_backward(
      code, grad_out.data_ptr(), x.data_ptr(), labels.data_ptr<int32_t>(), weight.data_ptr(),
      a.tanh ? out->data_ptr() : nullptr, dx.data_ptr(), dweight.data_ptr(), dbias ? dbias->data_ptr() : nullptr, a.B,
      a.C, a.H, a.W, a.K, a.O, a.ks, a.reflect, a.tanh, workspace.data_ptr(), nbytes,
      at::cuda::getCurrentCUDAStream().stream());
  check_kernel_status(rc, op);
  return {dx, dweight, dbias};
}

}  // namespace semgan_ext
