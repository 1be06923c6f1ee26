"""SPADE global generator (Park et al. 2019), as used unchanged by LGGAN's global branch.

Layout (NVlabs/SPADE ``SPADEGenerator``; LGGAN replaces its ``fc`` input layer by the shared
encoder): head_0 (16 nf) -> up -> G_middle_0 -> [up if "more"/"most"] -> G_middle_1 -> up -> up_0
(8 nf) -> up -> up_1 (4 nf) -> up -> up_2 (2 nf) -> up -> up_3 (nf) [-> up -> up_4 (nf/2) if "most"]
-> leaky 0.2 -> 3x3 conv -> tanh. Blocks: SPADE residual blocks with spectral norm on conv_0,
conv_1, conv_s; SPADE modulation with a parameter-free norm and a shared one-hot conv
(``OneHotConv2d``, hidden ``spade_hidden``) -> 3x3 gamma / beta convs.
"""
from __future__ import annotations

from types import MappingProxyType

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import OneHotConv2d, Semantics, param_free_norm, spectral_norm

# Number of 2x upsamplings from the latent to the image (read-only mapping).
UPSAMPLING_LAYERS = MappingProxyType({"normal": 5, "more": 6, "most": 7})


class SPADE(nn.Module):
    """out = norm(x) * (1 + gamma(seg)) + beta(seg); seg = one-hot labels (+ extra) resized to x.

    x: [B, norm_nc, h, w] float; semantics: ``Semantics`` at any resolution.
    """

    def __init__(self, norm_nc: int, num_classes: int, extra_channels: int, hidden: int, norm: str,
                 kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.param_free_norm = param_free_norm(norm, norm_nc)
        self.mlp_shared = OneHotConv2d(num_classes, extra_channels, hidden, kernel_size, padding=pad)
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size, padding=pad)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size, padding=pad)

    def forward(self, x: torch.Tensor, semantics: Semantics) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        labels, extra = semantics.at(x.shape[-2:])
        actv = F.relu(self.mlp_shared(labels, extra))
        gamma = self.mlp_gamma(actv)
        beta = self.mlp_beta(actv)
        return normalized * (1 + gamma) + beta


class SPADEResnetBlock(nn.Module):
    """SPADE residual block: x_s + conv_1(lrelu(SPADE(conv_0(lrelu(SPADE(x)))))), learned 1x1
    shortcut (no bias) with its own SPADE when fin != fout. [B,fin,h,w] -> [B,fout,h,w]."""

    def __init__(self, fin: int, fout: int, num_classes: int, extra_channels: int, hidden: int, norm: str,
                 use_spectral_norm: bool):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        # conv_0 feeds norm_1's parameter-free norm, which removes any per-channel constant: its bias
        # (present in SPADE) would only receive zero gradients plus rounding noise, so it is omitted.
        self.conv_0 = spectral_norm(nn.Conv2d(fin, fmiddle, 3, padding=1, bias=False), use_spectral_norm)
        self.conv_1 = spectral_norm(nn.Conv2d(fmiddle, fout, 3, padding=1), use_spectral_norm)
        self.norm_0 = SPADE(fin, num_classes, extra_channels, hidden, norm)
        self.norm_1 = SPADE(fmiddle, num_classes, extra_channels, hidden, norm)
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False), use_spectral_norm)
            self.norm_s = SPADE(fin, num_classes, extra_channels, hidden, norm)

    def forward(self, x: torch.Tensor, semantics: Semantics) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, semantics)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, semantics), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, semantics), 0.2))
        return x_s + dx


class SPADEGlobalGenerator(nn.Module):
    """G_g: latent [B, 16 ngf, H/2^n, W/2^n] (n = 5/6/7 for normal/more/most) -> image [B,3,H,W] in [-1,1]."""

    def __init__(self, ngf: int, num_classes: int, extra_channels: int, hidden: int, norm: str,
                 use_spectral_norm: bool, num_upsampling_layers: str):
        super().__init__()
        if num_upsampling_layers not in UPSAMPLING_LAYERS:
            raise ValueError(f"num_upsampling_layers must be one of {sorted(UPSAMPLING_LAYERS)}, "
                             f"got {num_upsampling_layers!r}")
        self.num_upsampling_layers = num_upsampling_layers
        nf = ngf

        def block(fin, fout):
            return SPADEResnetBlock(fin, fout, num_classes, extra_channels, hidden, norm, use_spectral_norm)

        self.head_0 = block(16 * nf, 16 * nf)
        self.G_middle_0 = block(16 * nf, 16 * nf)
        self.G_middle_1 = block(16 * nf, 16 * nf)
        self.up_0 = block(16 * nf, 8 * nf)
        self.up_1 = block(8 * nf, 4 * nf)
        self.up_2 = block(4 * nf, 2 * nf)
        self.up_3 = block(2 * nf, 1 * nf)
        final_nc = nf
        if num_upsampling_layers == "most":
            self.up_4 = block(1 * nf, nf // 2)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, 3, 3, padding=1)

    @staticmethod
    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor, semantics: Semantics) -> torch.Tensor:
        x = self.head_0(x, semantics)
        x = self.up(x)
        x = self.G_middle_0(x, semantics)
        if self.num_upsampling_layers in ("more", "most"):
            x = self.up(x)
        x = self.G_middle_1(x, semantics)
        x = self.up(x)
        x = self.up_0(x, semantics)
        x = self.up(x)
        x = self.up_1(x, semantics)
        x = self.up(x)
        x = self.up_2(x, semantics)
        x = self.up(x)
        x = self.up_3(x, semantics)
        if self.num_upsampling_layers == "most":
            x = self.up(x)
            x = self.up_4(x, semantics)
        x = self.conv_img(F.leaky_relu(x, 0.2))
        return torch.tanh(x)
