"""LGGAN's parameter-sharing encoder E (public generator l.67-76, fwd 182-188).

conv1: reflect-pad 3, 7x7, (K one-hot + E extra) -> ngf    [B, ngf,    H,    W]
conv2: 3x3 s2 -> 2 ngf                                      [B, 2 ngf,  H/2,  W/2]
conv3: 3x3 s2 -> 4 ngf = x_encode (local branch, weight map) [B, 4 ngf,  H/4,  W/4]
conv4: 3x3 s2 -> 8 ngf                                      [B, 8 ngf,  H/8,  W/8]
conv5: 3x3 s2 -> 16 ngf, then nearest resize to the SPADE latent size (global branch)
every conv followed by InstanceNorm (no affine) + ReLU.

The convs feeding an affine-free InstanceNorm carry no bias: a per-channel constant is removed by
the norm exactly, so outputs and all other gradients are unchanged (the public code has the bias).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import OneHotConv2d


class Encoder(nn.Module):
    """labels [B,H,W] int + extra [B,E,H,W] | None -> (x_encode [B,4ngf,H/4,W/4], latent [B,16ngf,sh,sw])."""

    def __init__(self, num_classes: int, extra_channels: int, ngf: int, latent_size: tuple[int, int]):
        super().__init__()
        self.latent_size = (int(latent_size[0]), int(latent_size[1]))
        self.conv1 = OneHotConv2d(num_classes, extra_channels, ngf, 7, padding=3, padding_mode="reflect", bias=False)
        self.norm1 = nn.InstanceNorm2d(ngf)
        self.down = nn.ModuleList()
        channels = ngf
        for _ in range(4):
            self.down.append(nn.Sequential(
                nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1, bias=False),
                nn.InstanceNorm2d(2 * channels),
                nn.ReLU(inplace=True),
            ))
            channels *= 2

    def forward(self, labels: torch.Tensor, extra: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.norm1(self.conv1(labels, extra)))
        x = self.down[0](x)
        x_encode = self.down[1](x)
        x = self.down[2](x_encode)
        x = self.down[3](x)
        latent = F.interpolate(x, size=self.latent_size, mode="nearest")
        return x_encode, latent
