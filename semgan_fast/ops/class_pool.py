"""``class_pool``: LGGAN's semantic-guided average pooling of the class-filtered features.

``pooled[b, k] = sum_p x[b, :, p] * [labels[b, p] == k] / divisor`` and the class-presence
indicator ``present[b, k] = any_p labels[b, p] == k`` (the void-class filter of LGGAN Eq. 5).
The public code pools each masked copy with a global average, i.e. divides by H*W
(``divisor="image"``, the default); ``divisor="area"`` divides by the class's pixel count instead.
"""
from __future__ import annotations

import torch

from ._checks import check_finite, check_float, check_label_range, check_labels, check_same_device
from ._dispatch import Backend, BackendTable

DIVISORS = ("image", "area")


def class_pool_reference(x: torch.Tensor, labels: torch.Tensor, num_classes: int, divisor: str = "image"):
    """Naive formulation: K masked copies of x, each globally averaged. See ``class_pool``."""
    pooled, present = [], []
    for k in range(num_classes):
        mask = (labels == k).unsqueeze(1).to(x.dtype)
        masked_sum = (x * mask).sum(dim=(2, 3))
        count = mask.sum(dim=(1, 2, 3))
        denom = count.clamp_min(1).unsqueeze(1) if divisor == "area" else x.shape[2] * x.shape[3]
        pooled.append(masked_sum / denom)
        present.append(count > 0)
    return torch.stack(pooled, dim=1), torch.stack(present, dim=1)


CLASS_POOL_BACKENDS = BackendTable("class_pool")
CLASS_POOL_BACKENDS.register(Backend("reference", class_pool_reference))


def class_pool(x: torch.Tensor, labels: torch.Tensor, num_classes: int, divisor: str = "image",
               backend: str = "auto", check_values: bool = False):
    """Semantic-guided average pooling.

    Args:
        x: features [B, C, H, W], floating point.
        labels: class map [B, H, W], integer, values in [0, num_classes).
        num_classes: K.
        divisor: "image" (divide by H*W, as the public LGGAN code) or "area" (by the class's pixel count;
            absent classes give 0).
        backend: "auto", "reference", or a fast backend name.
        check_values: also verify label range and finiteness of x (synchronises with the device).

    Returns:
        pooled [B, K, C] in x's dtype, present [B, K] bool. Computed on x's device, no host sync.
    """
    check_float("x", x, 4)
    check_labels("labels", labels, 3)
    check_same_device("x", x, labels=labels)
    if labels.shape != (x.shape[0], x.shape[2], x.shape[3]):
        raise ValueError(f"labels must have shape [B, H, W] = {[x.shape[0], *x.shape[2:]]} matching x, "
                         f"got {list(labels.shape)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if divisor not in DIVISORS:
        raise ValueError(f"divisor must be one of {DIVISORS}, got {divisor!r}")
    if check_values:
        check_label_range("labels", labels, num_classes)
        check_finite("x", x)
    impl = CLASS_POOL_BACKENDS.resolve(backend, x.device)
    return impl(x, labels, num_classes, divisor)
