"""ECGAN's label generator G_l: a segmentation network that maps generated images back to labels.

The paper uses a pretrained SegFormer (not available offline here); G_l is pluggable:

- ``segmenter="builtin"``: ``SmallSegNet``, a compact encoder-decoder defined here, either
  * ``segmenter_mode="train"``: trained alongside the GAN on the REAL images with cross-entropy (its
    parameters join the discriminator's optimiser, i.e. lr_d, and its loss is added in the D step);
    optionally initialised from ``segmenter_checkpoint``; or
  * ``segmenter_mode="frozen"``: loaded from ``segmenter_checkpoint`` and never updated.
- ``segmenter="module.path:factory"`` or ``"file.py:factory"``: a user network loaded (frozen) with
  ``semgan_fast.eval.metrics.load_segmenter`` (``checkpoint=segmenter_checkpoint``). It maps images
  [B, 3, H, W] in [-1, 1] to class scores [B, K, h, w] (K = num_classes of the model); scores at another
  resolution are resized bilinearly. It is not stored in the model's checkpoints.

In the generator step G_l is frozen in every mode (the similarity loss trains the generator only): its
parameters take no gradient there, the gradient flows through it to the images.
Checkpoints accepted for the built-in network: a ``SmallSegNet`` state dict, or a whole ``semgan train``
checkpoint / model state dict (keys ``label_generator.network.*`` are picked out).
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation),
                         nn.LeakyReLU(0.2, inplace=True))


class SmallSegNet(nn.Module):
    """Built-in G_l: images [B, 3, H, W] in [-1, 1] -> logits [B, K, H, W].

    Layout (width w): two 3x3 convs at full resolution (w), a stride-2 stage (2w, H/2), a stride-2 stage
    with a dilated conv (4w, H/4), then a decoder that upsamples bilinearly, adds 1x1-projected skips
    and refines with a 3x3 conv at H/2 and H; a 1x1 conv gives the K logits. LeakyReLU 0.2, no
    normalisation (its output must not depend on the batch composition). Any H, W >= 4.
    """

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError(f"num_classes and width must be >= 1, got {num_classes}, {width}")
        w = width
        self.stem = nn.Sequential(_conv(3, w), _conv(w, w))
        self.down1 = nn.Sequential(_conv(w, 2 * w, stride=2), _conv(2 * w, 2 * w))
        self.down2 = nn.Sequential(_conv(2 * w, 4 * w, stride=2), _conv(4 * w, 4 * w, dilation=2))
        self.lat2 = nn.Conv2d(4 * w, 2 * w, 1)
        self.refine2 = _conv(2 * w, 2 * w)
        self.lat1 = nn.Conv2d(2 * w, w, 1)
        self.refine1 = _conv(w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s1 = self.stem(images)
        s2 = self.down1(s1)
        s3 = self.down2(s2)
        x = self.refine2(s2 + F.interpolate(self.lat2(s3), size=s2.shape[-2:], mode="bilinear", align_corners=False))
        x = self.refine1(s1 + F.interpolate(self.lat1(x), size=s1.shape[-2:], mode="bilinear", align_corners=False))
        return self.head(x)


def read_segmenter_state(path: str) -> dict:
    """The state dict in a segmenter checkpoint file: a plain state dict or ``{"state_dict"|"model": ...}``,
    with DDP's "module." prefixes removed. ValueError naming the file when it cannot be read or holds none."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"segmenter checkpoint {path!r} could not be read: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"segmenter checkpoint {path!r} holds no state dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_builtin_state(path: str) -> dict:
    """A SmallSegNet state dict from ``path`` (``read_segmenter_state``'s forms, or a semgan checkpoint
    holding ``label_generator.network.*``)."""
    if not os.path.isfile(path):
        raise ValueError(f"segmenter checkpoint {path!r} does not exist")
    state = read_segmenter_state(path)
    prefix = "label_generator.network."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return state


class LabelGenerator(nn.Module):
    """G_l around a segmentation network.

    Attributes: ``network`` (the segmenter), ``trainable`` (trained alongside in the D step),
    ``external`` (user network: not saved in the model's state dict).
    """

    def __init__(self, network: nn.Module, num_classes: int, trainable: bool, external: bool):
        super().__init__()
        self.network = network
        self.num_classes = num_classes
        self.trainable = trainable
        self.external = external
        if not trainable:
            self.network.requires_grad_(False)
            self.network.eval()

    def train(self, mode: bool = True) -> "LabelGenerator":
        super().train(mode)
        if not self.trainable:      # a frozen segmenter stays in eval mode (its own BN / dropout)
            self.network.eval()
        return self

    def logits(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> logits [B, K, size] (bilinear resize when needed)."""
        scores = self.network(images)
        if not isinstance(scores, torch.Tensor) or scores.dim() != 4 or scores.shape[1] != self.num_classes:
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"the segmenter must return [B, {self.num_classes}, h, w] class scores, got {shape}")
        if tuple(scores.shape[-2:]) != tuple(size):
            scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        return scores

    def probs(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Softmax class probabilities [B, K, size], float32."""
        return torch.softmax(self.logits(images, size).float(), dim=1)


def build_label_generator(cfg) -> LabelGenerator:
    """G_l from an ``ECGANConfig`` (fields segmenter, segmenter_checkpoint, segmenter_mode, segmenter_width)."""
    if cfg.segmenter_mode not in ("train", "frozen"):
        raise ValueError(f"segmenter_mode must be 'train' or 'frozen', got {cfg.segmenter_mode!r}")
    if cfg.segmenter == "builtin":
        network = SmallSegNet(cfg.num_classes, cfg.segmenter_width)
        if cfg.segmenter_checkpoint:
            try:
                network.load_state_dict(load_builtin_state(cfg.segmenter_checkpoint))
            except RuntimeError as exc:
                raise ValueError(f"segmenter checkpoint {cfg.segmenter_checkpoint!r} does not fit the built-in "
                                 f"segmenter (width {cfg.segmenter_width}, {cfg.num_classes} classes): {exc}") from exc
        elif cfg.segmenter_mode == "frozen":
            raise ValueError("segmenter_mode='frozen' with the built-in segmenter needs segmenter_checkpoint "
                             "(a trained SmallSegNet); use segmenter_mode='train' to train it alongside")
        return LabelGenerator(network, cfg.num_classes, trainable=cfg.segmenter_mode == "train", external=False)
    if cfg.segmenter_mode == "train":
        raise ValueError(f"an external segmenter ({cfg.segmenter!r}) is used frozen: set segmenter_mode='frozen'")
    from ..eval.metrics import load_segmenter

    network = load_segmenter(cfg.segmenter, cfg.segmenter_checkpoint)
    if not isinstance(network, nn.Module):
        raise ValueError(f"segmenter {cfg.segmenter!r} must build an nn.Module, got {type(network).__name__}")
    return LabelGenerator(network, cfg.num_classes, trainable=False, external=True)
