"""torchrun integration: process-group set-up from the environment and rank helpers."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> DistInfo:
    """Joins the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); no-op when absent.

    NCCL on GPU, gloo on CPU. Returns the rank information.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def all_reduce_mean_(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place mean across ranks (for logging)."""
    if info.enabled:
        dist.all_reduce(tensor)
        tensor /= info.world_size
    return tensor


def broadcast_(tensor: torch.Tensor, info: DistInfo, src: int = 0) -> torch.Tensor:
    """In-place broadcast from rank ``src`` (no-op in one process). A collective: every rank must call it."""
    if info.enabled:
        dist.broadcast(tensor, src=src)
    return tensor


def all_reduce_grads_mean_(params, info: DistInfo) -> None:
    """Averages the gradients of ``params`` (those that have one) across ranks in place, as DDP does for the
    modules it wraps; for trainable parameters outside the DDP-wrapped modules (ECGAN's trained-alongside
    segmenter). One flattened all-reduce per dtype. Every rank must pass the same parameters with
    gradients in the same order (true when the same loss code runs on every rank)."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for grad in grads:
        by_dtype.setdefault(grad.dtype, []).append(grad)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat /= info.world_size
        offset = 0
        for grad in group:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()
