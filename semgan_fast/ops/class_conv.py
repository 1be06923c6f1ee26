"""``class_conv``: LGGAN's masked per-class feature filtering (Eq. 1) followed by each class's conv.

For every class i: ``out[:, i] = act(conv(pad(x * (labels == i)), weight[i]) + bias[i])``.

The reference below follows the public formulation literally (K masked copies, K convolutions).
Fast backends (exact gather formulation, cost independent of K) register themselves in
``CLASS_CONV_BACKENDS``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import (check_dim, check_finite, check_float, check_label_range, check_labels,
                      check_same_device, check_same_dtype)
from ._dispatch import Backend, BackendTable

PADDING_MODES = ("reflect", "zeros")
ACTIVATIONS = (None, "tanh")


def class_conv_reference(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         padding_mode: str = "reflect", activation: str | None = None) -> torch.Tensor:
    """Naive per-class loop: K masked copies of ``x``, K padded convolutions. See ``class_conv``."""
    num_classes, kernel = weight.shape[0], weight.shape[-1]
    pad = kernel // 2
    outputs = []
    for i in range(num_classes):
        masked = x * (labels == i).unsqueeze(1).to(x.dtype)
        if padding_mode == "reflect":
            masked = F.pad(masked, (pad, pad, pad, pad), mode="reflect")
        else:
            masked = F.pad(masked, (pad, pad, pad, pad))
        outputs.append(F.conv2d(masked, weight[i], None if bias is None else bias[i]))
    out = torch.stack(outputs, dim=1)
    return torch.tanh(out) if activation == "tanh" else out


CLASS_CONV_BACKENDS = BackendTable("class_conv")
CLASS_CONV_BACKENDS.register(Backend("reference", class_conv_reference))


def validate_class_conv(x, labels, weight, bias, padding_mode, activation, check_values=False) -> None:
    check_float("x", x, 4)
    check_labels("labels", labels, 3)
    check_float("weight", weight, 5)
    check_same_device("x", x, labels=labels, weight=weight, bias=bias)
    check_same_dtype("x", x, weight=weight, bias=bias)
    batch, channels, height, width = x.shape
    num_classes, _, in_channels, kh, kw = weight.shape
    if labels.shape != (batch, height, width):
        raise ValueError(f"labels must have shape [B, H, W] = {[batch, height, width]} matching x, "
                         f"got {list(labels.shape)}")
    check_dim("weight", weight, 2, channels, "x.shape[1] (input channels)")
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"weight must have a square, odd kernel [K, O, C, k, k], got shape {tuple(weight.shape)}")
    if bias is not None:
        check_float("bias", bias, 2)
        if tuple(bias.shape) != tuple(weight.shape[:2]):
            raise ValueError(f"bias must have shape [K, O] = {list(weight.shape[:2])}, got {list(bias.shape)}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if padding_mode == "reflect" and (kh // 2 >= height or kh // 2 >= width):
        raise ValueError(f"padding_mode='reflect' needs H and W > kernel//2 = {kh // 2}, got x of shape {tuple(x.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if num_classes < 1:
        raise ValueError("weight.shape[0] (number of classes K) must be >= 1")
    if check_values:
        check_label_range("labels", labels, num_classes)
        check_finite("x", x)


def class_conv(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               padding_mode: str = "reflect", activation: str | None = None, backend: str = "auto",
               check_values: bool = False) -> torch.Tensor:
    """Masked per-class filtering + per-class convolution (LGGAN Eq. 1 and the local branch).

    Args:
        x: features [B, C, H, W], float16/bfloat16/float32/float64.
        labels: class map [B, H, W], any integer dtype, values in [0, K).
        weight: per-class conv weights [K, O, C, k, k] (k odd), same dtype as x.
        bias: per-class bias [K, O] or None.
        padding_mode: "reflect" (LGGAN) or "zeros"; padding is k // 2 so H, W are kept.
        activation: None or "tanh" (applied per class, as LGGAN's class generators do).
        backend: "auto", "reference", or a fast backend name (see ``CLASS_CONV_BACKENDS``).
        check_values: also verify label range and finiteness of x (synchronises with the device).

    Returns:
        [B, K, O, H, W] in x's dtype: ``out[:, i] = act(conv(pad(x * (labels == i)), weight[i]) + bias[i])``.
    """
    validate_class_conv(x, labels, weight, bias, padding_mode, activation, check_values)
    impl = CLASS_CONV_BACKENDS.resolve(backend, x.device)
    return impl(x, labels, weight, bias, padding_mode, activation)
