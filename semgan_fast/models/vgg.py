"""VGG19 feature stack for the perceptual loss, defined in-project (torchvision is not importable on
the CPU build of torch) with torchvision's exact layer layout, so torchvision's ``vgg19`` state dict
(keys ``features.<index>.weight`` / ``.bias``) loads unchanged.

Only ``features[0:30]`` (up to relu5_1) is built; the loss taps relu1_1, relu2_1, relu3_1, relu4_1,
relu5_1 = outputs of ``features`` indices 1, 6, 11, 20, 29 (SPADE's ``VGG19`` slices 0:2, 2:7, 7:12,
12:21, 21:30). As in SPADE, images in [-1, 1] go in unnormalised.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

VGG19_FILENAME = "vgg19-dcbb9e9d.pth"
# torchvision cfg "E" up to the fifth block's first conv: channels or "M" (max pool).
_VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
_TAPS = (1, 6, 11, 20, 29)      # indices in `features` whose outputs are relu1_1 .. relu5_1
VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


class VGGWeightsNotFoundError(FileNotFoundError):
    """The VGG19 weight file needed by the perceptual loss is missing."""


def default_vgg19_path() -> str:
    """torchvision's cache location: $TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth
    (TORCH_HOME defaults to $XDG_CACHE_HOME/torch, i.e. ~/.cache/torch)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", VGG19_FILENAME)


class VGG19Features(nn.Module):
    """Frozen VGG19 trunk. forward(x [B,3,H,W]) -> [relu1_1, relu2_1, relu3_1, relu4_1, relu5_1]
    ([B,64,H,W], [B,128,H/2,W/2], [B,256,H/4,W/4], [B,512,H/8,W/8], [B,512,H/16,W/16]).

    Constructed with random weights; use ``from_pretrained`` (or ``load_torchvision_state_dict``)."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _VGG19_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_ch = v
        assert len(layers) == _TAPS[-1] + 1
        self.features = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        # Always in eval mode (frozen); the layout has no dropout/BN so this only keeps flags tidy.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        start = 0
        for tap in _TAPS:
            for index in range(start, tap + 1):
                x = self.features[index](x)
            outputs.append(x)
            start = tap + 1
        return outputs

    def load_torchvision_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a torchvision ``vgg19`` state dict (full model or ``features`` only). Keys beyond
        relu5_1 (``features.30+``, ``classifier.*``) are ignored; missing or mis-shaped keys raise."""
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        if missing:
            raise ValueError(f"VGG19 state dict lacks {missing[:4]}{'...' if len(missing) > 4 else ''}: expected "
                             f"torchvision vgg19 key names (features.<i>.weight/bias)")
        for key, value in own.items():
            if tuple(state_dict[key].shape) != tuple(value.shape):
                raise ValueError(f"VGG19 state dict entry {key} has shape {tuple(state_dict[key].shape)}, "
                                 f"expected {tuple(value.shape)}")
        self.load_state_dict({k: state_dict[k] for k in own}, strict=True)

    @classmethod
    def from_pretrained(cls, path: str | None = None) -> "VGG19Features":
        """Loads torchvision's ImageNet VGG19 weights from ``path`` or the torchvision cache."""
        path = path or default_vgg19_path()
        if not os.path.isfile(path):
            raise VGGWeightsNotFoundError(
                f"VGG19 weights for the perceptual loss not found at {path}. Provide torchvision's "
                f"{VGG19_FILENAME} (https://download.pytorch.org/models/{VGG19_FILENAME}) either at that path "
                f"(torchvision cache: $TORCH_HOME/hub/checkpoints/) or via LGGANConfig.vgg_weights=<path>; "
                f"or disable the VGG loss with LGGANConfig.use_vgg=False (CLI: --no-vgg).")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        model = cls()
        model.load_torchvision_state_dict(state)
        return model
