"""Parameter-free batch normalisation whose batch statistics span every rank of the process group,
and the other cross-rank reductions the models need under DDP.

``torch.nn.SyncBatchNorm`` only synchronises CUDA tensors; this version works with any device and
backend (NCCL on GPU, gloo on CPU), which makes a multi-process CPU run numerically equivalent to one
process over the global batch. Outside a multi-rank process group it is plain batch norm.

``sum_over_ranks`` (a global loss normaliser, no grad) and ``gather_over_ranks`` (every rank's batch,
no grad; ECGAN's memory bank) are no-ops outside a multi-rank process group. All of them are
collectives: every rank must reach them, in the same order.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed_world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def sum_over_ranks(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of ``x`` over all ranks, world size), detached; (``x`` detached, 1) in one process."""
    world = _distributed_world()
    total = x.detach().clone()
    if world > 1:
        dist.all_reduce(total)
    return total, world


def gather_over_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor [B, ...] -> [world * B, ...]: every rank's tensor concatenated in rank order (detached,
    the same on every rank). Needs equal shapes on every rank. The inputs themselves in one process."""
    world = _distributed_world()
    if world == 1:
        return tuple(t.detach() for t in tensors)
    gathered = []
    for t in tensors:
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.detach().contiguous())
        gathered.append(torch.cat(parts))
    return tuple(gathered)


class ParamFreeSyncBatchNorm(nn.Module):
    """Batch norm without affine parameters over [B, C, H, W]; global statistics under DDP.

    Statistics are reduced in fp32 (fp64 for float64 inputs) with differentiable all-reduces (the mean,
    then the centred second moment), so gradients flow through the global mean and variance as in a
    single process.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, None, None, False, 0.0, self.eps)
        self.num_batches_tracked.add_(1)
        if _distributed_world() == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, None, None, True, self.momentum, self.eps)
        from torch.distributed.nn.functional import all_reduce

        # Two passes (mean, then centred second moment): as accurate as single-process batch norm.
        xf = x if x.dtype == torch.float64 else x.float()   # fp32 statistics (fp64 under the "fp64" precision)
        shape = (1, -1, 1, 1)
        count = torch.full((self.num_features,), xf.numel() / self.num_features, device=x.device, dtype=xf.dtype)
        sums = all_reduce(torch.stack([xf.sum(dim=(0, 2, 3)), count]))
        total = sums[1]
        mean = sums[0] / total
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / total
        with torch.no_grad():
            unbiased = var * total / (total - 1).clamp_min(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
