"""Input validation shared by every op. Errors are ``ValueError`` naming the offending argument.

Structural checks (dtype, device, shape) never synchronise with the device. Value checks (label
range, NaN) read device memory and therefore synchronise; ops run them only when asked
(``check_values=True``) so that training steps stay free of host synchronisation.
"""
from __future__ import annotations

from typing import Sequence

import torch

INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, t, ndim: int | None = None, dtypes: Sequence[torch.dtype] | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must have dtype in ({allowed}), got {str(t.dtype).replace('torch.', '')}")


def check_float(name: str, t, ndim: int | None = None) -> None:
    check_tensor(name, t, ndim, FLOAT_DTYPES)


def check_labels(name: str, labels, ndim: int = 3) -> None:
    check_tensor(name, labels, ndim, INT_DTYPES)


def check_same_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def check_same_dtype(ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t is not None and t.dtype != ref.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")


def check_dim(name: str, t: torch.Tensor, dim: int, expected: int, what: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(f"{name}.shape[{dim}] must equal {what} = {expected}, got shape {tuple(t.shape)}")


def check_label_range(name: str, labels: torch.Tensor, num_classes: int) -> None:
    """Raises if any label is outside [0, num_classes). Synchronises with the device."""
    if labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} values must lie in [0, {num_classes}), found range [{lo}, {hi}]")


def check_finite(name: str, t: torch.Tensor) -> None:
    """Raises if t holds NaN or infinity. Synchronises with the device."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinity")
