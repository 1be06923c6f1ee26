// Torch bindings of the onehot_conv kernels (onehot_conv_kernels.cuh through the C ABI).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "torch_common.h"
#include "torch_ops.h"

namespace semgan_ext {
namespace {

struct OnehotArgs {
  int64_t B, H, W, K, E, O, ks, Ho, Wo;
  bool reflect;
};

OnehotArgs check_onehot(const char* op, const at::Tensor& labels, const std::optional<at::Tensor>& extra,
                        const at::Tensor& weight, int64_t stride, int64_t padding, const std::string& padding_mode) {
  check_labels_cuda(labels, op, "labels");
  check_float_cuda(weight, op, "weight", 4);
  TORCH_CHECK(labels.device() == weight.device(), op, ": labels is on ", labels.device(), " but weight is on ",
              weight.device());
  OnehotArgs a{labels.size(0), labels.size(1), labels.size(2), 0, 0, weight.size(0), weight.size(2), 0, 0,
               parse_padding_mode(padding_mode, op)};
  if (extra.has_value() && extra->defined()) {
    check_float_cuda(*extra, op, "extra", 4);
    check_same(weight, "weight", *extra, op, "extra");
    a.E = extra->size(1);
    TORCH_CHECK(extra->size(0) == a.B && extra->size(2) == a.H && extra->size(3) == a.W, op,
                ": extra must have shape [B, E, H, W] matching labels ", labels.sizes(), ", got ", extra->sizes());
  }
  a.K = weight.size(1) - a.E;
  TORCH_CHECK(a.K >= 1, op, ": weight.shape[1] = ", weight.size(1), " must exceed the extra channels E = ", a.E);
  TORCH_CHECK(weight.size(2) == weight.size(3) && a.ks >= 1, op, ": weight must be [O, K+E, k, k], got ",
              weight.sizes());
  TORCH_CHECK(a.O >= 1, op, ": weight must have at least one output channel, got ", weight.sizes());
  TORCH_CHECK(stride >= 1 && stride <= 64, op, ": stride must be in [1, 64], got ", stride);
  TORCH_CHECK(padding >= 0 && padding <= 1024, op, ": padding must be in [0, 1024], got ", padding);
  TORCH_CHECK(a.ks <= 64, op, ": kernel size must be <= 64, got ", a.ks);
  TORCH_CHECK(a.H + 2 * padding >= a.ks && a.W + 2 * padding >= a.ks, op, ": padded input ", a.H + 2 * padding, "x",
              a.W + 2 * padding, " is smaller than the ", a.ks, "x", a.ks, " kernel");
  if (a.reflect) {
    TORCH_CHECK(padding < a.H && padding < a.W, op, ": padding=", padding,
                " with padding_mode='reflect' needs H and W > padding, got labels of shape ", labels.sizes());
  }
  a.Ho = (a.H + 2 * padding - a.ks) / stride + 1;
  a.Wo = (a.W + 2 * padding - a.ks) / stride + 1;
  return a;
}

}  // namespace

at::Tensor onehot_conv_forward(const at::Tensor& labels, const std::optional<at::Tensor>& extra,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias, int64_t stride,
                               int64_t padding, const std::string& padding_mode) {
  const char* op = "onehot_conv_forward";
  const OnehotArgs a = check_onehot(op, labels, extra, weight, stride, padding, padding_mode);
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    check_float_cuda(*bias, op, "bias", 1);
    check_same(weight, "weight", *bias, op, "bias");
    TORCH_CHECK(bias->size(0) == a.O, op, ": bias must have shape [O] = [", a.O, "], got ", bias->sizes());
  }
  const c10::cuda::CUDAGuard guard(weight.device());
  at::Tensor out = at::empty({a.B, a.O, a.Ho, a.Wo}, weight.options());
  if (out.numel() == 0) return out;
  const int code = dtype_code(weight);
  const size_t nbytes = semgan_onehot_conv_forward_workspace_size(code, a.B, a.H, a.W, a.K, a.E, a.O, a.ks, stride,
                                                                  padding, a.reflect);
  TORCH_CHECK(nbytes > 0, op, ": unsupported sizes for the CUDA kernels: labels ", labels.sizes(), ", weight ",
              weight.sizes());
  at::Tensor workspace = at::empty({static_cast<int64_t>(nbytes)}, weight.options().dtype(at::kByte));
  const int rc = semgan_onehot_conv_forward(
      code, labels.data_ptr<int32_t>(), a.E > 0 ? extra->data_ptr() : nullptr, weight.data_ptr(),
      has_bias ? bias->data_ptr() : nullptr, out.data_ptr(), a.B, a.H, a.W, a.K, a.E, a.O, a.ks, stride, padding,
      a.reflect, workspace.data_ptr(), nbytes, at::cuda::getCurrentCUDAStream().stream());
  check_kernel_status(rc, op);
  return out;
}

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> onehot_conv_backward(
    const at::Tensor& grad_out, const at::Tensor& labels, const std::optional<at::Tensor>& extra,
    const at::Tensor& weight, int64_t stride, int64_t padding, const std::string& padding_mode,
    bool need_extra_grad) {
  const char* op = "onehot_conv_backward";
  const OnehotArgs a = check_onehot(op, labels, extra, weight, stride, padding, padding_mode);
  check_float_cuda(grad_out, op, "grad_out", 4);
  check_same(weight, "weight", grad_out, op, "grad_out");
  TORCH_CHECK(grad_out.size(0) == a.B && grad_out.size(1) == a.O && grad_out.size(2) == a.Ho &&
                  grad_out.size(3) == a.Wo,
              op, ": grad_out must have shape [B, O, Ho, Wo] = [", a.B, ", ", a.O, ", ", a.Ho, ", ", a.Wo, "], got ",
              grad_out.sizes());
  const c10::cuda::CUDAGuard guard(weight.device());
  at::Tensor dweight = at::empty_like(weight);
  at::Tensor dbias = at::empty({a.O}, weight.options());
  std::optional<at::Tensor> dextra;
  const bool want_extra = need_extra_grad && a.E > 0;
  if (want_extra) dextra = at::empty_like(*extra);
  if (a.B * a.Ho * a.Wo == 0) {
    dweight.zero_();
    dbias.zero_();
    if (dextra) dextra->zero_();
    return {dweight, dbias, dextra};
  }
  const int code = dtype_code(weight);
  const size_t nbytes = semgan_onehot_conv_backward_workspace_size(code, a.B, a.H, a.W, a.K, a.E, a.O, a.ks, stride,
                                                                   padding, a.reflect);
  TORCH_CHECK(nbytes > 0, op, ": unsupported sizes for the CUDA kernels: labels ", labels.sizes(), ", weight ",
              weight.sizes());
  at::Tensor workspace = at::empty({static_cast<int64_t>(nbytes)}, weight.options().dtype(at::kByte));
  const int rc = semgan_onehot_conv_backward(
      code, grad_out.data_ptr(), labels.data_ptr<int32_t>(), a.E > 0 ? extra->data_ptr() : nullptr,
      weight.data_ptr(), dweight.data_ptr(), dbias.data_ptr(), want_extra ? dextra->data_ptr() : nullptr, a.B, a.H,
      a.W, a.K, a.E, a.O, a.ks, stride, padding, a.reflect, workspace.data_ptr(), nbytes,
      at::cuda::getCurrentCUDAStream().stream());
  check_kernel_status(rc, op);
  return {dweight, dbias, dextra};
}

}  // namespace semgan_ext
