// Torch-side entry points of the semgan_fast._C extension (definitions: class_conv.cu,
// onehot_conv.cu; Python bindings: bindings.cpp). Shapes, dtypes and semantics: semgan_kernels.h
// and semgan_fast/ops/_cuda.py. Every argument is checked with TORCH_CHECK naming it.
#pragma once

#include <optional>
#include <string>
#include <tuple>

#include <ATen/ATen.h>

namespace semgan_ext {

at::Tensor class_conv_forward(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const std::string& padding_mode,
                              const std::optional<std::string>& activation);

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> class_conv_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& labels, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& out, const std::string& padding_mode,
    const std::optional<std::string>& activation);

at::Tensor onehot_conv_forward(const at::Tensor& labels, const std::optional<at::Tensor>& extra,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias, int64_t stride,
                               int64_t padding, const std::string& padding_mode);

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> onehot_conv_backward(
    const at::Tensor& grad_out, const at::Tensor& labels, const std::optional<at::Tensor>& extra,
    const at::Tensor& weight, int64_t stride, int64_t padding, const std::string& padding_mode,
    bool need_extra_grad);

}  // namespace semgan_ext
