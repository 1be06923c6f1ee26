"""CUDA C++ backend of ``class_conv`` and ``onehot_conv`` (extension ``semgan_fast._C``, sources in
``csrc/``; built by ``setup.py`` when a CUDA build of torch and nvcc are present).

The wrappers below are what the ops register as their "cuda" backend. Callers pass contiguous CUDA
tensors (labels int32); every argument is checked again in C++ (``RuntimeError`` naming the
argument). Supported dtypes: float32, float16, bfloat16 (fp32 accumulation) and float64 (fp64
accumulation). All launches go to the current CUDA stream and never synchronise. Gradients are
deterministic (per-block partials reduced in a fixed order; no floating-point atomics).

Kernel design and semantics: ``csrc/class_conv_kernels.cuh``, ``csrc/onehot_conv_kernels.cuh``;
C ABI (also used by TensorRT plugins): ``csrc/semgan_kernels.h``.
"""
from __future__ import annotations

from typing import Optional

import torch

try:  # the extension is optional: absent on CPU-only installs
    from semgan_fast import _C  # type: ignore[attr-defined]

    _IMPORT_ERROR: Optional[str] = None
except ImportError as exc:  # pragma: no cover - depends on the build
    _C = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

# Kernel sizes of class_conv that the CUDA kernels implement (weight [K, O, C, k, k]).
CLASS_CONV_KERNEL_SIZES = (1, 3, 5, 7)


def cuda_ext_available() -> bool:
    """True when ``semgan_fast._C`` imported and a CUDA device is usable."""
    return _C is not None and torch.cuda.is_available()


def _ext():
    if _C is None:
        raise RuntimeError("semgan_fast._C (CUDA extension) is not built or failed to import: "
                           f"{_IMPORT_ERROR}. Build it with `pip install --no-build-isolation -e .` in an "
                           "environment with a CUDA build of torch and nvcc (see scripts/check_cuda_build.sh).")
    return _C


def _activation(activation: Optional[str]) -> str:
    return "none" if activation is None else activation


def class_conv_forward_cuda(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                            bias: Optional[torch.Tensor], padding_mode: str,
                            activation: Optional[str]) -> torch.Tensor:
    """class_conv forward on CUDA.

    Args:
        x: [B, C, H, W] float32/float16/bfloat16/float64, contiguous.
        labels: [B, H, W] int32; labels outside [0, K) belong to no class.
        weight: [K, O, C, k, k], k in {1, 3, 5, 7}, x's dtype.
        bias: [K, O] or None.
        padding_mode: "reflect" or "zeros" (padding k // 2).
        activation: None or "tanh".

    Returns:
        out [B, K, O, H, W] in x's dtype: ``out[:, i] = act(conv(pad(x * (labels == i)), weight[i]) + bias[i])``.
    """
    return _ext().class_conv_forward(x, labels, weight, bias, padding_mode, _activation(activation))


def class_conv_backward_cuda(grad_out: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                             bias: Optional[torch.Tensor], out: Optional[torch.Tensor], padding_mode: str,
                             activation: Optional[str]):
    """class_conv backward on CUDA.

    Args:
        grad_out: [B, K, O, H, W], x's dtype.
        x, labels, weight, bias, padding_mode, activation: as in :func:`class_conv_forward_cuda`.
        out: the forward output [B, K, O, H, W] (required for activation="tanh": derivative 1 - out**2).

    Returns:
        (dx [B, C, H, W], dweight [K, O, C, k, k], dbias [K, O] or None when bias is None).
    """
    return _ext().class_conv_backward(grad_out, x, labels, weight, bias, out, padding_mode, _activation(activation))


def onehot_conv_forward_cuda(labels: torch.Tensor, extra: Optional[torch.Tensor], weight: torch.Tensor,
                             bias: Optional[torch.Tensor], stride: int, padding: int,
                             padding_mode: str) -> torch.Tensor:
    """onehot_conv forward on CUDA: ``conv2d(pad(cat([one_hot(labels, K), extra])), weight, stride) + bias``.

    Args:
        labels: [B, H, W] int32; labels outside [0, K) contribute nothing.
        extra: [B, E, H, W] in weight's dtype, or None.
        weight: [O, K + E, k, k] float32/float16/bfloat16/float64 (any k).
        bias: [O] or None.
        stride: >= 1; padding: >= 0; padding_mode: "zeros" or "reflect" (padding < H, W).

    Returns:
        out [B, O, Ho, Wo], Ho = (H + 2 * padding - k) // stride + 1.
    """
    return _ext().onehot_conv_forward(labels, extra, weight, bias, int(stride), int(padding), padding_mode)


def onehot_conv_backward_cuda(grad_out: torch.Tensor, labels: torch.Tensor, extra: Optional[torch.Tensor],
                              weight: torch.Tensor, stride: int, padding: int, padding_mode: str,
                              need_extra_grad: bool):
    """onehot_conv backward on CUDA.

    Returns:
        (dweight [O, K + E, k, k], dbias [O], dextra [B, E, H, W] or None when extra is None or
        ``need_extra_grad`` is False). Labels get no gradient.
    """
    return _ext().onehot_conv_backward(grad_out, labels, extra, weight, int(stride), int(padding), padding_mode,
                                       bool(need_extra_grad))
