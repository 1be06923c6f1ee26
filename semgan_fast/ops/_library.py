"""Shared helpers for ops registered with ``torch.library`` and their fast backends.

Pattern (see ``class_conv.py``): each fast op is a ``torch.library.custom_op`` named
``semgan::<op>`` whose last argument is the *resolved* backend name; the op looks that name up in
a table of :class:`FastImpl` entries (lazy imports, so Triton and the CUDA extension are only
imported when used) and calls the backend's forward. The backward is a second custom op
``semgan::<op>_backward`` called from ``register_autograd``, so both directions are opaque to
``torch.compile`` / ``torch.export`` and pass ``torch.library.opcheck``.

Availability predicates for ``_dispatch.Backend(available=...)``:

* ``cpu_available``: CPU tensors.
* ``triton_available``: CUDA tensors with Triton importable, or CPU tensors when the Triton
  interpreter is on (``TRITON_INTERPRET=1``, tests only: put Triton *after* the CPU backend in the
  auto order so ``auto`` never picks the interpreter).
* ``cuda_ext_available``: CUDA tensors and ``semgan_fast.ops._cuda.cuda_ext_available()``; the
  module may not exist (then the backend is unavailable).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch

NAMESPACE = "semgan"


def triton_interpreting() -> bool:
    """True when Triton kernels run in the interpreter (set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def cpu_available(device: torch.device) -> bool:
    return torch.device(device).type == "cpu"


def triton_available(device: torch.device) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return triton_importable()
    return device.type == "cpu" and triton_interpreting() and triton_importable()


def cuda_ext_available(device: torch.device) -> bool:
    if torch.device(device).type != "cuda":
        return False
    try:
        cuda_mod = importlib.import_module("semgan_fast.ops._cuda")
    except ImportError:
        return False
    probe = getattr(cuda_mod, "cuda_ext_available", None)
    return bool(probe()) if probe is not None else False


@dataclass(frozen=True)
class FastImpl:
    """Where one fast backend's forward and backward functions live (imported on first use)."""
    module: str
    forward: str
    backward: str

    def load(self) -> tuple[Callable, Callable]:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.forward), getattr(mod, self.backward)


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 inputs (so fp64 gradcheck works), fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32
