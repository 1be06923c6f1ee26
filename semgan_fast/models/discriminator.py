"""SPADE's multiscale conditional PatchGAN discriminator (``MultiscaleDiscriminator`` of
``NLayerDiscriminator``s, norm_D "spectralinstance"), used unchanged by LGGAN.

One scale (n_layers_d = 4, ndf = 64):
  conv0: OneHotConv2d over [one-hot K | instance edge | image 3], 4x4 s2 pad 2, bias, leaky 0.2
         (no norm, no spectral norm: SPADE's first layer)
  n = 1..n_layers-1: spectral-norm conv 4x4 (stride 2, last one stride 1) pad 2, no bias,
         InstanceNorm (no affine), leaky 0.2; width doubles up to 512
  final: conv 4x4 s1 pad 2 -> 1 channel (no norm)
  returns every block's output: n_layers intermediate features + the prediction (last).
Scales: scale s sees the input average-pooled s times (3x3, stride 2, pad 1, count_include_pad=False).
The pooled one-hot map is no longer one-hot, so coarser scales apply their conv0 to the dense pooled
map (``OneHotConv2d.forward_dense``); its semantic part is pooled once per call for the B label maps
and shared by all N images of the call.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import OneHotConv2d, spectral_norm


def _downsample(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)


class NLayerDiscriminator(nn.Module):
    """One PatchGAN scale. Input either (labels [M,H,W], extra [M,E+3,H,W]) or dense [M,K+E+3,H,W]."""

    def __init__(self, num_classes: int, extra_channels: int, ndf: int, n_layers: int, use_spectral_norm: bool):
        super().__init__()
        self.conv0 = OneHotConv2d(num_classes, extra_channels, ndf, 4, stride=2, padding=2)
        blocks = []
        nf = ndf
        for n in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == n_layers - 1 else 2
            conv = spectral_norm(nn.Conv2d(nf_prev, nf, 4, stride=stride, padding=2, bias=False), use_spectral_norm)
            blocks.append(nn.Sequential(conv, nn.InstanceNorm2d(nf), nn.LeakyReLU(0.2)))
        self.blocks = nn.ModuleList(blocks)
        self.final = nn.Conv2d(nf, 1, 4, stride=1, padding=2)

    def forward(self, labels: torch.Tensor | None = None, extra: torch.Tensor | None = None,
                dense: torch.Tensor | None = None) -> list[torch.Tensor]:
        x = self.conv0(labels, extra) if dense is None else self.conv0.forward_dense(dense)
        x = F.leaky_relu(x, 0.2)
        features = [x]
        for block in self.blocks:
            x = block(x)
            features.append(x)
        features.append(self.final(x))
        return features


class MultiscaleDiscriminator(nn.Module):
    """D_s over (semantic map, image) at ``num_d`` scales.

    forward(labels [B,H,W] int, edge [B,1,H,W] | None, images [N*B,3,H,W]) with images ordered
    output-major (image n*B + b belongs to sample b) -> list over scales of lists of features
    (each [N*B, C, h, w]; the last is the patch prediction). The B label maps are shared by the N
    image sets (no repeated one-hot work at the coarser scales).
    """

    def __init__(self, num_classes: int, use_edge: bool, ndf: int = 64, num_d: int = 2, n_layers: int = 4,
                 use_spectral_norm: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.use_edge = use_edge
        extra = (1 if use_edge else 0) + 3
        self.scales = nn.ModuleList([NLayerDiscriminator(num_classes, extra, ndf, n_layers, use_spectral_norm)
                                     for _ in range(num_d)])

    def forward(self, labels: torch.Tensor, edge: torch.Tensor | None, images: torch.Tensor):
        batch = labels.shape[0]
        reps = images.shape[0] // batch
        if reps * batch != images.shape[0]:
            raise ValueError(f"images batch {images.shape[0]} must be a multiple of labels batch {batch}")
        if self.use_edge and edge is None:
            raise ValueError("this discriminator was built with an instance-edge channel: pass edge [B,1,H,W]")
        edge = edge if self.use_edge else None
        results = []
        sem_pooled = None   # [B, K(+1), h, w]: average-pooled one-hot (+ edge), built lazily for scale 1
        img = images
        for scale, disc in enumerate(self.scales):
            if scale == 0:
                labels_rep = labels.repeat(reps, 1, 1) if reps > 1 else labels
                extra = img if edge is None else torch.cat([edge.repeat(reps, 1, 1, 1).to(img.dtype), img], dim=1)
                results.append(disc(labels_rep, extra))
            else:
                if sem_pooled is None:
                    classes = torch.arange(self.num_classes, device=labels.device).view(1, -1, 1, 1)
                    sem = (labels.unsqueeze(1) == classes).to(img.dtype)
                    if edge is not None:
                        sem = torch.cat([sem, edge.to(img.dtype)], dim=1)
                    sem_pooled = sem
                sem_pooled = _downsample(sem_pooled)
                img = _downsample(img)
                sem_rep = sem_pooled.repeat(reps, 1, 1, 1) if reps > 1 else sem_pooled
                results.append(disc(dense=torch.cat([sem_rep, img], dim=1)))
        return results
