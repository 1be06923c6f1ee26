"""Building blocks shared by the generator and the discriminator.

- ``OneHotConv2d``: the one module class for every convolution whose input is a one-hot label map
  concatenated with a few dense channels (encoder conv1, SPADE's shared conv, D's first conv).
- ``Semantics``: a label map (+ optional dense extra channels) with nearest resizing cached per
  resolution for the duration of one forward pass (replaces SPADE's per-layer interpolation of
  the one-hot map; nearest resizing commutes with one-hot encoding).
- ``instance_edges``: SPADE's instance-boundary channel, computed on the tensor's device.
- ``init_weights``: the public code's Xavier-normal initialisation (gain 0.02), spectral-norm aware.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ..ops.onehot_conv import onehot_conv
from .sync_norm import ParamFreeSyncBatchNorm


class OneHotConv2d(nn.Module):
    """Convolution over ``cat([one_hot(labels, K), extra], dim=1)``.

    Weight ``[out_channels, K + E, k, k]`` (one-hot channels first, as the public code concatenates
    them), bias ``[out_channels]`` or None. The weight is an ordinary parameter named ``weight`` so
    ``torch.nn.utils.parametrizations.spectral_norm(module)`` works on it.

    ``forward(labels [B,H,W] int, extra [B,E,H,W] float | None)`` -> [B, out_channels, H', W'] runs
    ``semgan_fast.ops.onehot_conv`` (backend="auto": exact gather, the one-hot map is never built;
    "reference" materialises one_hot + cat + conv2d). Labels must lie in [0, K) (not checked: a check
    would synchronise with the device). Stride 1 or 2.
    ``forward_dense(x [B,K+E,H,W])`` applies the same weight to an already dense (e.g. average-pooled,
    hence no longer one-hot) input: the multiscale discriminator's coarser scales need it.
    """

    def __init__(self, num_classes: int, extra_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0, padding_mode: str = "zeros", bias: bool = True):
        super().__init__()
        if padding_mode not in ("zeros", "reflect"):
            raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")
        self.num_classes = num_classes
        self.extra_channels = extra_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.padding_mode = padding_mode
        self.weight = nn.Parameter(torch.empty(out_channels, num_classes + extra_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's default initialisation.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size * self.kernel_size
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, extra_channels={self.extra_channels}, "
                f"out_channels={self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, padding_mode={self.padding_mode}, bias={self.bias is not None}")

    def forward(self, labels: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.weight  # read once: a spectral-norm parametrisation runs its power iteration here
        if extra is not None and extra.dtype != weight.dtype:
            extra = extra.to(weight.dtype)
        return onehot_conv(labels, extra, weight, self.bias, padding=self.padding, padding_mode=self.padding_mode,
                           stride=self.stride, backend="auto")

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The same convolution on a dense input [B, K+E, H, W] (e.g. an average-pooled one-hot map)."""
        padding = self.padding
        if self.padding_mode == "reflect" and padding > 0:
            x = F.pad(x, (padding,) * 4, mode="reflect")
            padding = 0
        weight = self.weight
        return F.conv2d(x.to(weight.dtype), weight, self.bias, stride=self.stride, padding=padding)


def resize_labels_nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of an integer map [B,H,W] -> [B,h,w] with F.interpolate(mode="nearest") semantics.

    Integer downsampling factors (the only case SPADE meets) are a strided slice; other sizes go
    through a float interpolation (exact for label values < 2**24).
    """
    height, width = labels.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (height, width):
        return labels
    if height % out_h == 0 and width % out_w == 0:
        return labels[..., :: height // out_h, :: width // out_w]
    resized = F.interpolate(labels.unsqueeze(1).float(), size=(out_h, out_w), mode="nearest")
    return resized.squeeze(1).to(labels.dtype)


class Semantics:
    """Label map [B,H,W] (int) and optional extra channels [B,E,H,W] (e.g. the instance edge) at full
    resolution, with nearest-resized copies cached per resolution. Created per forward call (never
    stored on a module), so no state outlives the call."""

    def __init__(self, labels: torch.Tensor, extra: torch.Tensor | None = None):
        self.labels = labels
        self.extra = extra
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def at(self, size) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = (int(size[0]), int(size[1]))
        if key not in self._cache:
            labels = resize_labels_nearest(self.labels, key)
            extra = None
            if self.extra is not None:
                extra = self.extra if tuple(self.extra.shape[-2:]) == key else \
                    F.interpolate(self.extra, size=key, mode="nearest")
            self._cache[key] = (labels, extra)
        return self._cache[key]


def instance_edges(instance: torch.Tensor) -> torch.Tensor:
    """SPADE's instance-boundary map: 1 where a 4-neighbour has a different instance id.

    Args:
        instance: instance ids [B, H, W] (any dtype; compared for equality).

    Returns:
        float32 [B, 1, H, W] with values in {0, 1}, on instance's device (no host sync).
    """
    if not isinstance(instance, torch.Tensor) or instance.dim() != 3:
        raise ValueError(f"instance must be a [B, H, W] tensor, got "
                         f"{tuple(instance.shape) if isinstance(instance, torch.Tensor) else type(instance).__name__}")
    dx = (instance[:, :, 1:] != instance[:, :, :-1]).float()   # [B, H, W-1]: pair (w, w+1) differs
    dy = (instance[:, 1:, :] != instance[:, :-1, :]).float()   # [B, H-1, W]
    # Each differing pair marks both of its pixels (SPADE's get_edges).
    edge_x = torch.maximum(F.pad(dx, (1, 0)), F.pad(dx, (0, 1)))
    edge_y = torch.maximum(F.pad(dy, (0, 0, 1, 0)), F.pad(dy, (0, 0, 0, 1)))
    return torch.maximum(edge_x, edge_y).unsqueeze(1)


def param_free_norm(kind: str, channels: int) -> nn.Module:
    """SPADE's parameter-free normalisation, all without affine parameters: batch; syncbatch
    (``ParamFreeSyncBatchNorm``: global batch statistics across ranks on any device/backend, plain
    batch norm outside a multi-rank process group); instance."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    if kind == "syncbatch":
        return ParamFreeSyncBatchNorm(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    raise ValueError(f"param_free_norm must be 'batch', 'syncbatch' or 'instance', got {kind!r}")


def spectral_norm(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Spectral norm (parametrisation API) on ``module.weight`` when enabled."""
    if enabled:
        return nn.utils.parametrizations.spectral_norm(module)
    return module


def _weight_tensor(module: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


@torch.no_grad()
def init_weights(root: nn.Module, init_type: str = "xavier", gain: float = 0.02) -> None:
    """The public code's ``init_weights``: Xavier-normal(gain) on every conv / transposed conv /
    linear / one-hot conv weight, zero biases; per-class weights (``class_weight`` [G,O,C,k,k])
    get the same Xavier std per class. ``init_type="default"`` keeps PyTorch's initialisation.

    Spectral-normed weights are initialised through their ``original`` tensor, then the power
    iteration is re-run (15 steps) so the stored singular vectors match the new weight.
    """
    if init_type == "default":
        return
    if init_type != "xavier":
        raise ValueError(f"init_type must be 'xavier' or 'default', got {init_type!r}")
    for module in root.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, OneHotConv2d)):
            nn.init.xavier_normal_(_weight_tensor(module), gain=gain)
            if module.bias is not None:
                module.bias.zero_()
        class_weight = getattr(module, "class_weight", None)
        if isinstance(class_weight, nn.Parameter) and class_weight.dim() == 5:
            _, out_ch, in_ch, kh, kw = class_weight.shape
            std = gain * math.sqrt(2.0 / (in_ch * kh * kw + out_ch * kh * kw))
            class_weight.normal_(0.0, std)
            class_bias = getattr(module, "class_bias", None)
            if class_bias is not None:
                class_bias.zero_()
    for module in root.modules():
        if parametrize.is_parametrized(module, "weight") and hasattr(module.parametrizations.weight[0], "_u"):
            was_training = module.training
            module.train()
            for _ in range(15):   # each read in training mode runs one power iteration
                _ = module.weight
            module.train(was_training)
