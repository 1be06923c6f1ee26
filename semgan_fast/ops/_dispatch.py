"""Backend selection for the ops.

Every op keeps a table ``{backend name: implementation}``. ``backend="auto"`` takes the first
available entry of the op's preference order for the input's device; an explicit name selects
that implementation (``ValueError`` if it is unknown or unavailable). The environment variable
``SEMGAN_BACKEND`` (e.g. ``reference``) overrides ``auto`` for every op, which is how a whole
model is switched to the reference formulation for parity checks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch

ENV_OVERRIDE = "SEMGAN_BACKEND"


@dataclass
class Backend:
    name: str
    fn: Callable
    # Returns True when this backend can run on the given device (e.g. CUDA ext built, GPU present).
    available: Callable[[torch.device], bool] = lambda device: True


@dataclass
class BackendTable:
    op_name: str
    backends: dict[str, Backend] = field(default_factory=dict)
    # Preference order for backend="auto", most preferred first.
    auto_order: list[str] = field(default_factory=list)

    def register(self, backend: Backend, auto_rank: int | None = None) -> None:
        self.backends[backend.name] = backend
        if auto_rank is not None and backend.name not in self.auto_order:
            self.auto_order.insert(min(auto_rank, len(self.auto_order)), backend.name)

    def resolve(self, backend: str, device: torch.device) -> Callable:
        if backend == "auto":
            override = os.environ.get(ENV_OVERRIDE, "").strip()
            if override and override != "auto":
                backend = override
            else:
                for name in self.auto_order:
                    if self.backends[name].available(device):
                        return self.backends[name].fn
                backend = "reference"
        if backend not in self.backends:
            known = ", ".join(["auto", *sorted(self.backends)])
            raise ValueError(f"backend={backend!r} is not a backend of {self.op_name}; choose one of: {known}")
        entry = self.backends[backend]
        if not entry.available(device):
            raise ValueError(f"backend={backend!r} of {self.op_name} is not available for device {device}")
        return entry.fn
