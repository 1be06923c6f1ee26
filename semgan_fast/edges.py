"""Canny edge detector for ECGAN's ground-truth edge maps, vectorised in PyTorch (runs on the device).

Pipeline = the public ECGAN/EdgeGAN ``scripts/canny.m`` (the script that made the papers' edge maps):

1. grey = MATLAB ``rgb2gray`` (0.298936021293775 R + 0.587043074451121 G + 0.114020904255103 B, rounded
   to an integer for 8-bit input: ``quantize=True``);
2. A = conv2(grey, B, 'same') with the 5x5 Gaussian B = [2 4 5 4 2; 4 9 12 9 4; 5 12 15 12 5; ...] / 159;
3. X = conv2(A, [-1 0 1; -2 0 2; -1 0 1], 'same'), Y = conv2(A, [1 2 1; 0 0 0; -1 -2 -1], 'same')
   (true convolutions with zero padding, as MATLAB's conv2);
4. direction = atan2(Y, X) in degrees, mapped to [0, 360) and quantised to 0 / 45 / 90 / 135 by the
   script's sectors; magnitude = sqrt(X^2 + Y^2);
5. non-maximum suppression on the interior pixels (the one-pixel border is 0): a pixel is kept when its
   magnitude equals the maximum of itself and its two neighbours along the quantised direction
   (0: (i, j+-1); 45: (i+1, j-1), (i-1, j+1); 90: (i+-1, j); 135: (i+1, j+1), (i-1, j-1); ties keep
   both); BW = kept * magnitude;
6. hysteresis with T_low = 0.075 * max(BW), T_high = 0.175 * max(BW) per image, 8-connectivity:
   strong = BW > T_high, weak = BW >= T_low.
   ``hysteresis="public"`` (default): canny.m's rule, ONE step: edge = strong, or weak with a strong
   8-neighbour. (The script does not propagate along chains of weak pixels.)
   ``hysteresis="connected"``: the classic rule: every weak pixel 8-connected to a strong pixel through
   weak pixels, computed by iterated 3x3 dilation restricted to weak pixels until nothing changes.
   The loop has no host synchronisation per iteration: convergence is tested (one ``torch.equal``, a
   sync) every ``check_every`` dilations, and at most ``max_iterations`` dilations run (default H*W,
   the longest possible chain). ``check_every=0`` never tests: exactly ``max_iterations`` dilations run
   with no synchronisation at all (use a bound such as 64 for training-time use).
   The last step of canny.m (``imresize`` of the 0/255 map to 256x512, which makes it non-binary) is
   not part of ``canny``; ``semgan edges --native-resolution`` reproduces it (PIL bicubic).

Choices that keep the result exact and device independent: the Gaussian's 1/159 is dropped (every later
step - NMS comparisons, thresholds relative to the maximum - is invariant to a positive scale), so for
integer grey levels (``quantize=True``) the Gaussian and Sobel sums are exact integers (< 2^24, exact in
fp32 too) and do not depend on summation order. The magnitude, angle and thresholds are computed in
``dtype`` (default: float32; pass float64 to match a float64 reference bit for bit). MATLAB's rounding
(half away from zero) is ``floor(x + 0.5)`` on these non-negative values.

``canny`` runs with autocast disabled (bf16 convolutions would break the exactness above).
"""
from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
import torch.nn.functional as F

RGB_TO_GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)   # MATLAB rgb2gray
GAUSSIAN_5X5 = ((2, 4, 5, 4, 2), (4, 9, 12, 9, 4), (5, 12, 15, 12, 5), (4, 9, 12, 9, 4), (2, 4, 5, 4, 2))  # / 159
SOBEL_X = ((-1, 0, 1), (-2, 0, 2), (-1, 0, 1))
SOBEL_Y = ((1, 2, 1), (0, 0, 0), (-1, -2, -1))
# Neighbour offsets (di, dj) compared by NMS for the sectors 0, 45, 90, 135 degrees (canny.m).
NMS_NEIGHBOURS = (((0, 1), (0, -1)), ((1, -1), (-1, 1)), ((1, 0), (-1, 0)), ((1, 1), (-1, -1)))


def rgb_to_gray(image: torch.Tensor, input_range: Literal["[-1,1]", "[0,255]"] = "[-1,1]",
                quantize: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Grey levels in [0, 255] as MATLAB's rgb2gray.

    Args:
        image: [B, 3, H, W] RGB or [B, 1, H, W] grey, float or uint8; values in ``input_range``.
        input_range: "[-1,1]" (the models' images: v = (x + 1) * 127.5) or "[0,255]".
        quantize: round to integer levels (rgb2gray of a uint8 image returns uint8).
        dtype: output dtype.

    Returns:
        [B, 1, H, W] in ``dtype``.
    """
    if image.dim() != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"image must be [B, 3, H, W] or [B, 1, H, W], got shape {tuple(image.shape)}")
    if input_range not in ("[-1,1]", "[0,255]"):
        raise ValueError(f"input_range must be '[-1,1]' or '[0,255]', got {input_range!r}")
    x = image.to(dtype)
    if input_range == "[-1,1]":
        x = (x + 1) * 127.5
    if x.shape[1] == 3:
        x = x[:, 0:1] * RGB_TO_GRAY[0] + x[:, 1:2] * RGB_TO_GRAY[1] + x[:, 2:3] * RGB_TO_GRAY[2]
    if quantize:
        x = torch.floor(x.clamp(0, 255) + 0.5)
    return x


def _conv_same(x: torch.Tensor, kernel, dtype) -> torch.Tensor:
    """MATLAB conv2(x, kernel, 'same') with zero padding: a true convolution (flipped kernel)."""
    k = torch.tensor(kernel, dtype=dtype, device=x.device).flip(0, 1)
    pad = k.shape[0] // 2
    return F.conv2d(x, k.view(1, 1, *k.shape), padding=pad)


def _shift(x: torch.Tensor, di: int, dj: int) -> torch.Tensor:
    """out[..., i, j] = x[..., i + di, j + dj] (zero outside)."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    return padded[..., 1 + di:1 + di + height, 1 + dj:1 + dj + width]


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """8-connected (3x3) dilation of a bool map [B, 1, H, W]."""
    return F.max_pool2d(mask.to(torch.float32), 3, stride=1, padding=1) > 0


def gradient_nms(gray: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Steps 2-5: Gaussian, Sobel, direction sectors, NMS. gray [B, 1, H, W] -> BW [B, 1, H, W] in ``dtype``
    (the suppressed magnitude, 159x the canny.m value)."""
    a = _conv_same(gray.to(dtype), GAUSSIAN_5X5, dtype)
    gx = _conv_same(a, SOBEL_X, dtype)
    gy = _conv_same(a, SOBEL_Y, dtype)
    angle = torch.atan2(gy, gx) * 180 / math.pi
    angle = torch.where(angle < 0, angle + 360, angle)
    half = torch.where(angle >= 180, angle - 180, angle)   # exact (Sterbenz): same sectors as canny.m's [0, 360)
    sector = torch.where((half < 22.5) | (half >= 157.5), 0,
                         torch.where(half < 67.5, 1, torch.where(half < 112.5, 2, 3)))
    magnitude = torch.sqrt(gx * gx + gy * gy)
    first = torch.zeros_like(magnitude)
    second = torch.zeros_like(magnitude)
    for s, ((di1, dj1), (di2, dj2)) in enumerate(NMS_NEIGHBOURS):
        here = sector == s
        first = torch.where(here, _shift(magnitude, di1, dj1), first)
        second = torch.where(here, _shift(magnitude, di2, dj2), second)
    keep = (magnitude >= first) & (magnitude >= second)
    height, width = gray.shape[-2:]
    interior = torch.zeros(height, width, dtype=torch.bool, device=gray.device)
    interior[1:-1, 1:-1] = True
    return torch.where(keep & interior, magnitude, torch.zeros_like(magnitude))


def hysteresis(bw: torch.Tensor, low: float = 0.075, high: float = 0.175,
               mode: Literal["public", "connected"] = "public", max_iterations: int | None = None,
               check_every: int = 8) -> torch.Tensor:
    """Step 6 on the NMS map bw [B, 1, H, W] -> bool [B, 1, H, W]; thresholds relative to each image's max."""
    if mode not in ("public", "connected"):
        raise ValueError(f"hysteresis mode must be 'public' or 'connected', got {mode!r}")
    peak = bw.amax(dim=(-2, -1), keepdim=True)
    strong = bw > high * peak
    weak = bw >= low * peak
    if mode == "public":
        return strong | (weak & _dilate(strong))
    if max_iterations is None:
        max_iterations = bw.shape[-2] * bw.shape[-1]
    if max_iterations < 0 or check_every < 0:
        raise ValueError(f"max_iterations and check_every must be >= 0, got {max_iterations}, {check_every}")
    edges = strong
    for step in range(1, max_iterations + 1):
        grown = edges | (weak & _dilate(edges))
        if check_every and step % check_every == 0 and torch.equal(grown, edges):
            break
        edges = grown
    return edges


def canny(image: torch.Tensor, low: float = 0.075, high: float = 0.175,
          hysteresis_mode: Literal["public", "connected"] = "public",
          input_range: Literal["[-1,1]", "[0,255]"] = "[-1,1]", quantize: bool = True,
          dtype: torch.dtype = torch.float32, max_iterations: int | None = None, check_every: int = 8) -> torch.Tensor:
    """Binary Canny edges of a batch (see the module docstring for the exact pipeline).

    Args:
        image: [B, 3, H, W] RGB or [B, 1, H, W] grey (float or uint8), values in ``input_range``; H, W >= 3.
        low, high: hysteresis thresholds relative to each image's maximum suppressed magnitude.
        hysteresis_mode: "public" (canny.m: one neighbour step) or "connected" (8-connected propagation).
        quantize: round grey levels to integers (as rgb2gray on 8-bit images).
        dtype: computation dtype (float32 or float64).
        max_iterations, check_every: bounds of the "connected" propagation (module docstring).

    Returns:
        bool [B, 1, H, W] on the image's device.
    """
    if image.dim() != 4 or image.shape[-1] < 3 or image.shape[-2] < 3:
        raise ValueError(f"image must be [B, C, H, W] with H, W >= 3, got shape {tuple(image.shape)}")
    if not 0 <= low <= high:
        raise ValueError(f"thresholds must satisfy 0 <= low <= high, got low={low}, high={high}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    # Autocast off (exact integer sums); devices without autocast (e.g. meta) need no context.
    no_autocast = (torch.autocast(image.device.type, enabled=False) if image.device.type in ("cpu", "cuda")
                   else contextlib.nullcontext())
    with no_autocast:
        gray = rgb_to_gray(image, input_range, quantize, dtype)
        bw = gradient_nms(gray, dtype)
        return hysteresis(bw, low, high, hysteresis_mode, max_iterations, check_every)


def edge_image(edges: torch.Tensor) -> torch.Tensor:
    """Binary edges [B, 1, H, W] -> the 3-channel edge image the models see, [B, 3, H, W] float32 in {-1, 1}
    (the public code reads the 0/255 edge PNG as RGB and normalises it to [-1, 1])."""
    return (edges.to(torch.float32) * 2 - 1).expand(-1, 3, -1, -1).contiguous()
