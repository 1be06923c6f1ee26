"""``weight_map_fusion``: LGGAN Eq. 6-7, pixel-wise softmax fusion of the global and local results."""
from __future__ import annotations

import torch

from ._checks import check_float, check_same_device, check_same_dtype


def weight_map_fusion(global_image: torch.Tensor, local_image: torch.Tensor, logits: torch.Tensor):
    """Fuse two generations with a learned two-channel weight map.

    Args:
        global_image: I_g^G [B, C, H, W], floating point.
        local_image: I_g^L [B, C, H, W], same dtype.
        logits: G_w output [B, 2, H, W]; channel 0 weighs the local result, channel 1 the global one
            (the public code's order).

    Returns:
        fused [B, C, H, W] = W_l * local + W_g * global, and weights [B, 2, H, W] = softmax(logits, dim=1).
    """
    check_float("global_image", global_image, 4)
    check_float("local_image", local_image, 4)
    check_float("logits", logits, 4)
    check_same_device("global_image", global_image, local_image=local_image, logits=logits)
    check_same_dtype("global_image", global_image, local_image=local_image)
    if global_image.shape != local_image.shape:
        raise ValueError(f"local_image shape {list(local_image.shape)} must equal global_image shape "
                         f"{list(global_image.shape)}")
    batch, _, height, width = global_image.shape
    if tuple(logits.shape) != (batch, 2, height, width):
        raise ValueError(f"logits must have shape [B, 2, H, W] = {[batch, 2, height, width]}, got {list(logits.shape)}")
    weights = torch.softmax(logits, dim=1).to(global_image.dtype)
    fused = weights[:, 0:1] * local_image + weights[:, 1:2] * global_image
    return fused, weights
