"""``class_l1``: LGGAN's semantic-mask guided local L1 loss (Eq. 2).

``loss = sum_i mean |image * M_i - per_class_out[:, i]|`` where ``M_i = [labels == i]`` and each
mean runs over the batch, the channels and the pixels (the public code's per-class ``L1Loss``).
"""
from __future__ import annotations

import torch

from ._checks import (check_finite, check_float, check_label_range, check_labels, check_same_device,
                      check_same_dtype)
from ._dispatch import Backend, BackendTable


def class_l1_reference(per_class_out: torch.Tensor, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Naive formulation: one masked copy of the image and one L1 per class. See ``class_l1``."""
    acc_dtype = torch.promote_types(image.dtype, torch.float32)  # fp32 for half inputs, fp64 stays fp64
    total = per_class_out.new_zeros((), dtype=acc_dtype)
    for i in range(per_class_out.shape[1]):
        masked_real = image * (labels == i).unsqueeze(1).to(image.dtype)
        total = total + (masked_real - per_class_out[:, i]).abs().to(acc_dtype).mean()
    return total


CLASS_L1_BACKENDS = BackendTable("class_l1")
CLASS_L1_BACKENDS.register(Backend("reference", class_l1_reference))


def class_l1(per_class_out: torch.Tensor, image: torch.Tensor, labels: torch.Tensor, backend: str = "auto",
             check_values: bool = False) -> torch.Tensor:
    """Sum over classes of the L1 distance between each class output and the class-masked image.

    Args:
        per_class_out: class generator outputs [B, K, C, H, W], floating point.
        image: real image [B, C, H, W], same dtype.
        labels: class map [B, H, W], integer, values in [0, K).
        backend: "auto", "reference", or a fast backend name.
        check_values: also verify label range and finiteness (synchronises with the device).

    Returns:
        scalar tensor, float32 (float64 for float64 inputs).
    """
    check_float("per_class_out", per_class_out, 5)
    check_float("image", image, 4)
    check_labels("labels", labels, 3)
    check_same_device("per_class_out", per_class_out, image=image, labels=labels)
    check_same_dtype("per_class_out", per_class_out, image=image)
    batch, num_classes, channels, height, width = per_class_out.shape
    if tuple(image.shape) != (batch, channels, height, width):
        raise ValueError(f"image must have shape [B, C, H, W] = {[batch, channels, height, width]} "
                         f"matching per_class_out, got {list(image.shape)}")
    if tuple(labels.shape) != (batch, height, width):
        raise ValueError(f"labels must have shape [B, H, W] = {[batch, height, width]}, got {list(labels.shape)}")
    if check_values:
        check_label_range("labels", labels, num_classes)
        check_finite("per_class_out", per_class_out)
        check_finite("image", image)
    impl = CLASS_L1_BACKENDS.resolve(backend, image.device)
    return impl(per_class_out, image, labels)
