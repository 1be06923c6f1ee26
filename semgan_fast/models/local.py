"""LGGAN's local class-specific branch G_l, classification module and weight-map generator G_w.

Local branch (public generator l.78-138, 218-393; paper Sec. 3.2, Eq. 1, 3, 4):
  x_encode [B,4ngf,H/4,W/4] -> 9 residual blocks (reflect-pad 1, 3x3, IN, ReLU, reflect-pad 1, 3x3, IN,
  + skip) -> ConvT 4ngf->2ngf (k3 s2 p1 op1) + IN + ReLU -> ConvT 2ngf->ngf + IN + ReLU = f' [B,ngf,H,W]
  -> per class i: tanh(conv7x7_i(reflect_pad(f' * M_i))) = I_i [B,G,3,H,W] (``class_conv``, one call,
  no Python loop over classes; with ``local_depth`` > 1 each sub-generator is a stack, conv7x7 ngf ->
  local_hidden then 3x3 convs with LeakyReLU 0.2 between and tanh last, run by ``class_stack``) -> combine: Eq. 3 ``sum_i I_i`` ("add") or Eq. 4
  ``tanh(conv3x3(concat_i I_i))`` ("conv"; the public code's deconv9, zero padding 1, then tanh).

Class grouping: with ``local_classes = N`` (ADE20K: 51) labels >= N map to one "other" generator N,
so G = N + 1 generators; otherwise G = K (every class local).

Classifier (l.140-142, 280-302; Eq. 5): pooled class features ``class_pool(f', local labels, G)``
(sum over the class's pixels / (H*W), the public AdaptiveAvgPool of the masked copy) -> Linear(ngf -> Kc)
on the Kc = G (or N with "other" pooling: the "other" features are not classified, as the public
ADE20K code) dedicated classes -> logits [B,Kc,Kc] and the void-class filter present [B,Kc].

Weight map (l.144-148, 400-415; Eq. 6-7): x_encode -> ConvT 4ngf->2ngf + IN + ReLU -> ConvT 2ngf->ngf
+ IN + ReLU -> 1x1 conv ngf->2 -> softmax over the 2 channels (inside ``weight_map_fusion``).
The paper's text adds IN + ReLU after the 1x1 conv; the public code does not (a ReLU before the
softmax would clamp the logits); we follow the public code.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import class_conv, class_pool, class_stack
from .losses import at_least_fp32
from .sync_norm import sum_over_ranks


class ResnetBlock(nn.Module):
    """pix2pixHD residual block at constant width: [B,C,h,w] -> [B,C,h,w] (convs without bias: IN follows)."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _up_block(cin: int, cout: int) -> nn.Sequential:
    # ConvT k3 s2 p1 op1 doubles h and w exactly; bias dropped because an affine-free IN follows.
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False),
                         nn.InstanceNorm2d(cout), nn.ReLU(inplace=True))


class LocalGenerator(nn.Module):
    """G_l. forward(x_encode, local_labels) -> (features f' [B,ngf,H,W], per_class [B,G,3,H,W],
    local image [B,3,H,W])."""

    def __init__(self, ngf: int, num_generators: int, num_resblocks: int, kernel_size: int, combine: str,
                 depth: int = 1, hidden: int = 16):
        super().__init__()
        if combine not in ("add", "conv"):
            raise ValueError(f"local_combine must be 'add' or 'conv', got {combine!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"local_kernel must be odd, got {kernel_size}")
        if depth < 1 or hidden < 1:
            raise ValueError(f"local_depth and local_hidden must be >= 1, got {depth} and {hidden}")
        self.num_generators = num_generators
        self.combine = combine
        self.trunk = nn.Sequential(*[ResnetBlock(4 * ngf) for _ in range(num_resblocks)])
        self.up = nn.Sequential(_up_block(4 * ngf, 2 * ngf), _up_block(2 * ngf, ngf))
        # G class sub-generators. First layer Conv(ngf -> 3, or -> hidden when deeper; k x k) stored as one
        # [G, O, ngf, k, k] tensor for class_conv / class_stack; deeper layers 3x3 in ``deeper_weights``
        # (empty for LGGAN's depth 1, so its state_dict keys are unchanged).
        widths = [hidden] * (depth - 1) + [3]
        self.class_weight = nn.Parameter(torch.empty(num_generators, widths[0], ngf, kernel_size, kernel_size))
        self.class_bias = nn.Parameter(torch.empty(num_generators, widths[0]))
        self.deeper_weights = nn.ParameterList([nn.Parameter(torch.empty(num_generators, o, i, 3, 3))
                                                for i, o in zip(widths[:-1], widths[1:])])
        self.deeper_biases = nn.ParameterList([nn.Parameter(torch.empty(num_generators, o)) for o in widths[1:]])
        self.fuse = nn.Conv2d(3 * num_generators, 3, 3, padding=1) if combine == "conv" else None
        self.reset_class_parameters()

    def class_parameters(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer class sub-generator weights [G, O_l, I_l, k_l, k_l] and biases [G, O_l]."""
        return [self.class_weight, *self.deeper_weights], [self.class_bias, *self.deeper_biases]

    def reset_class_parameters(self) -> None:
        # nn.Conv2d's default initialisation, per class and layer.
        with torch.no_grad():
            for weight, bias in zip(*self.class_parameters()):
                bound = 1.0 / math.sqrt(weight[0, 0].numel())
                weight.uniform_(-bound, bound)   # = kaiming_uniform_(a=sqrt(5)) per class
                bias.uniform_(-bound, bound)

    def forward(self, x_encode: torch.Tensor, local_labels: torch.Tensor):
        features = self.up(self.trunk(x_encode))
        per_class = class_sub_generators(features, local_labels, *self.class_parameters(), backend="auto")
        if self.combine == "add":
            local_image = per_class.sum(dim=1)                                     # Eq. 3
        else:
            batch, groups, _, height, width = per_class.shape
            local_image = torch.tanh(self.fuse(per_class.reshape(batch, groups * 3, height, width)))  # Eq. 4
        return features, per_class, local_image


def class_sub_generators(features: torch.Tensor, labels: torch.Tensor, weights: list[torch.Tensor],
                         biases: list[torch.Tensor], backend: str = "auto") -> torch.Tensor:
    """Every class's sub-generator on its masked features: features [B,C,H,W], labels [B,H,W] -> [B,G,3,H,W]
    (reflect padding, tanh; LeakyReLU 0.2 between layers). Depth 1: ``class_conv``; deeper: ``class_stack``."""
    dtype = features.dtype
    weights = [w.to(dtype) for w in weights]
    biases = [b.to(dtype) for b in biases]
    if len(weights) == 1:
        return class_conv(features, labels, weights[0], biases[0], padding_mode="reflect", activation="tanh",
                          backend=backend)
    return class_stack(features, labels, weights, biases, padding_mode="reflect", negative_slope=0.2,
                       final_activation="tanh", backend=backend)


class ClassClassifier(nn.Module):
    """Classification module: pooled class features -> Linear(ngf -> Kc).

    forward(features [B,ngf,H,W], local_labels [B,H,W]) -> (logits [B,Kc,Kc] (row i: prediction for
    class i's pooled features), present [B,Kc] bool (class i occurs in sample b))."""

    def __init__(self, ngf: int, num_generators: int, num_classified: int):
        super().__init__()
        self.num_generators = num_generators
        self.num_classified = num_classified
        self.fc = nn.Linear(ngf, num_classified)

    def forward(self, features: torch.Tensor, local_labels: torch.Tensor):
        pooled, present = class_pool(features, local_labels, self.num_generators, divisor="image", backend="auto")
        kc = self.num_classified
        return self.fc(pooled[:, :kc]), present[:, :kc]


class WeightMapGenerator(nn.Module):
    """G_w: x_encode [B,4ngf,H/4,W/4] -> fusion logits [B,2,H,W] (softmax applied by weight_map_fusion)."""

    def __init__(self, ngf: int):
        super().__init__()
        self.up = nn.Sequential(_up_block(4 * ngf, 2 * ngf), _up_block(2 * ngf, ngf))
        self.out = nn.Conv2d(ngf, 2, 1)

    def forward(self, x_encode: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(x_encode))


def class_cross_entropy(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Eq. 5 with the void-class filter: sum_{b,i} present[b,i] * CE(logits[b,i], i) / max(1, sum present).

    Per-sample validity (the public ADE20K code), which equals the public Cityscapes code at B = 1 and
    works for any batch size. logits [B,Kc,Kc], present [B,Kc] bool -> float32 scalar (float64 for
    float64 logits; 0 when no class is present; no host sync). In a multi-rank process group the sum is
    divided by the count over all ranks (times the world size): the rank-averaged gradient is then the
    global batch's, and the rank-averaged value the global loss.
    """
    batch, kc, _ = logits.shape
    target = torch.arange(kc, device=logits.device).repeat(batch)
    ce = F.cross_entropy(at_least_fp32(logits.reshape(batch * kc, kc)), target, reduction="none")
    valid = present.reshape(-1).to(ce.dtype)
    # Under DDP the normaliser is the global count of valid classes (a no-grad all-reduce): DDP averages the
    # rank gradients, so rank r's loss sum_r * W / count_global makes that average the global-batch gradient.
    count, world = sum_over_ranks(valid.sum())
    return (ce * valid).sum() * world / count.clamp_min(1.0)
