"""ECGAN (Tang et al., ICLR 2023): edge-guided GAN with contrastive learning for semantic image synthesis.

Generator (paper Fig. 1-4; ``ECGANGenerator``), with C = ngf (64), N = num_classes, n = branch_layers (3):

- E: the GauGAN/SPADE generator (the paper's Sec. 4.1: "we adopt GauGAN as the encoder E") without its
  output conv: ``fc`` = 3x3 conv of the nearest-downsampled one-hot map (+ instance edge) at
  H/2^u x W/2^u (GauGAN's non-VAE input; multi-modal: Linear(z) instead), then our SPADE residual trunk
  (``spade.py``, spectral norm in its blocks) -> F [B, C, H, W] (the public EdgeGAN code's ``x``).
- G_e / G_i (Fig. 2): n full-resolution 3x3 convs (each applied after LeakyReLU 0.2, widths C/2, C/4,
  C/8 as the public EdgeGAN code, at least 1) then LeakyReLU + 3x3 conv -> 3 + tanh: edge map I_e' and
  image I_i'.
- G_t (Eq. 1): at every level j, F_i^j <- sigmoid(F_e^j) * F_i^j + F_i^j (on the conv outputs, before
  the next LeakyReLU, as the public code), and at the image level I' = sigmoid(I_e') * I_i' + I_i'. I'
  is not re-squashed, so it lies in about (-1.73, 1.73) (as the public code); the D, VGG and the
  segmenter see it as is; saved images are clamped.
- G_s (Eq. 2, Fig. 3): script F = [S one-hot (+ instance edge) | F | I' | I_e'] (C+N+3+3 channels; the
  one-hot part by label gather, ``OneHotConv2d``) -> LeakyReLU (identity on the one-hot part) -> 3x3
  conv -> F_c (N channels) -> gamma = sigmoid(global average pool(F_c)) -> F_c' = F_c * gamma + F_c ->
  LeakyReLU -> 3x3 conv back to C+N+3+3 (+1 with the instance edge) -> LeakyReLU -> 3x3 conv -> tanh =
  I''. (LeakyReLUs and the SE-like gate without FC layers as the public EdgeGAN code; its conv_comb1 is
  3x3, and 3x3 for the other two matches the project notes' cost figures for that code.)
- G_c, class-specific pixel generation (Eq. 6-7): per class i, a stack of ``class_layers`` convs
  (k = ``class_kernel``, reflect padding, LeakyReLU 0.2 between, tanh at the end) applied to the
  class-filtered features F * M_i, giving I_gi [B, N, 3, H, W]; I_g = sum_i I_gi (Eq. 7). Computed
  exactly (equal to the naive "N independent stacks, each on F * M_i", ``ops.class_stack_reference``,
  up to summation order) by ``ops.class_stack`` (depth >= 2: all classes at once, only the (tile, class)
  pairs whose receptive field holds the class are computed, the others get the class's background
  response) or ``ops.class_conv`` (depth 1: the gather formulation).
  The paper does not say how I_g enters the final image: it is an auxiliary output trained by the
  per-class L1 (Eq. 6), which trains the shared F; ``class_image_fusion="semantic_preserving"``
  additionally feeds I_g to G_s (3 more input channels).
- G_c, pixel-wise contrastive learning (Eq. 4-5): embeddings = L2-normalised projection of F (1x1 conv
  C -> C, ReLU, 1x1 conv -> proj_dim; ContrastiveSeg's head without its BatchNorm, so the loss does not
  depend on batch statistics) on the pixel sub-grid F[:, :, ::s, ::s] (s = contrast_stride, ContrastiveSeg's
  stride 8; 1x1 convs commute with the subsampling). Anchors: ``ops.sample_anchors`` with the labels
  (nearest-downsampled) and, for the hard/easy split, G_l's prediction on I'' (random per class when
  G_l is off); loss ``ops.pixel_contrast_loss`` (tau 0.1, tau_b 0.07) among the anchors of the whole
  batch (cross-image), or against a ``ClassMemoryBank`` (``memory_bank=True``: contrast = the bank,
  ContrastiveSeg's memory variant; the loss reads a copy of the bank, since the batch is pushed right
  after the loss and before its backward).
- G_l (Eq. 3): ``segmenter.py``. S' = G_l(I'), S'' = G_l(I''); similarity loss
  ``ops.pair_similarity_loss`` on their softmax (exact Eq. 3 with sim_stride = 1, or on the [::s, ::s]
  pixel sub-grid).
- Multi-modal (appendix C): GauGAN's style encoder (image resized to 256x256, six 3x3 stride-2
  convs ndf..8ndf with spectral norm + InstanceNorm + LeakyReLU, fc_mu / fc_var -> z_dim) and
  KL = -0.5 * sum(1 + logvar - mu^2 - exp(logvar)) (GauGAN's sum over batch and dims) x 0.05. The single z
  drives E, hence both edges and images. Without an image (``generate``), z ~ N(0, I): the trainer's D
  step therefore sees fakes from prior samples (GauGAN encodes the real image there).
- Spectral norm on every layer outside the SPADE trunk (G_e, G_i, G_s, class stacks per class, style
  encoder convs; not the projection head, not GauGAN's fc) and in D, when ``spectral_norm=True``.

Discriminator: one SPADE multiscale D over (semantics, 3-channel input) for both modalities (appendix A).
Losses (hinge GAN, as the public code; dict values already weighted, total = their sum):
- "g_gan": lambda_c * [ L(I_e') + L(I') + lambda L(I'') ] (Eq. 8-10, lambda = 2);
- "g_feat": lambda_f * [ FM(I_e', I_e) + FM(I', I) + lambda FM(I'', I) ] / num_d;
- "g_vgg": lambda_p * [ VGG(I_e', I_e) + VGG(I', I) + lambda VGG(I'', I) ] (layer weights 1/32..1);
- "g_sim": lambda_s * [ L_sim(S, S') + L_sim(S, S'') ];
- "g_contrast": lambda_contrast (paper: not given; 1) * Eq. 5 loss;
- "g_class_l1": lambda_l * Eq. 6 (``ops.class_l1``: sum_i mean |I * M_i - I_gi|). The paper lists
  lambda_l = 1 without a term in Eq. 10; we give it to Eq. 6, the only loss of the paper without a weight;
- "g_kld": 0.05 * KL (multi-modal).
D step: hinge with the real image weighted (1 + lambda) and the real edge 1 (Eq. 8-9), fakes 1 / lambda / 1;
"d_seg": cross-entropy of a trained-alongside G_l on the real image (x lambda_seg).
Terms of switched-off modules are absent: E+G_i has only I' (final = I'); without G_s final = I'.

Ground-truth edges: ``semgan_fast.edges.canny`` of the real image, computed on the device in every
loss call (canny.m pipeline, thresholds 0.075 / 0.175, "public" one-step hysteresis by default), as the
3-channel {-1, 1} image the public code reads. Both losses also take ``edges=`` (a precomputed edge
image, e.g. from ``semgan edges``); the trainer passes only (labels, image, instance), so training uses
the on-the-fly edges. The public pipeline ran Canny on the full-resolution file and resized the 0/255 map
(``semgan edges --native-resolution`` reproduces that); on the fly we run it at the training resolution. Inputs everywhere: labels int64 [B, H, W]; image float
[B, 3, H, W] in [-1, 1]; instance ids [B, H, W] (when use_instance_edge).
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ECGANConfig
from ..edges import canny, edge_image
from ..ops import class_conv, class_l1, class_stack
from .layers import OneHotConv2d, Semantics, instance_edges, spectral_norm
from .lggan import _no_param_grads, attach_gan_parts, exclude_from_state_dict
from .segmenter import LabelGenerator, build_label_generator
from .spade import UPSAMPLING_LAYERS, SPADEGlobalGenerator
from .sync_norm import gather_over_ranks
from .vgg import VGG_LAYER_WEIGHTS


# ----------------------------------------------------------------------------------------- pieces
class ClassLayer(nn.Module):
    """One layer of the per-class stacks: weight ``class_weight`` [K, O, I, k, k], ``class_bias`` [K, O].

    Per-class spectral norm (when enabled): class c's weight viewed as [O, I*k*k] is divided by its
    largest singular value, estimated by one power iteration per training forward (torch's
    ``spectral_norm`` per class; buffers ``sn_u`` [K, O], ``sn_v`` [K, I*k*k]).
    """

    def __init__(self, num_classes: int, in_channels: int, out_channels: int, kernel_size: int,
                 use_spectral_norm: bool):
        super().__init__()
        self.kernel_size = kernel_size
        self.use_spectral_norm = use_spectral_norm
        self.class_weight = nn.Parameter(torch.empty(num_classes, out_channels, in_channels, kernel_size, kernel_size))
        self.class_bias = nn.Parameter(torch.empty(num_classes, out_channels))
        if use_spectral_norm:
            self.register_buffer("sn_u", torch.zeros(num_classes, out_channels))
            self.register_buffer("sn_v", torch.zeros(num_classes, in_channels * kernel_size * kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's default initialisation per class (the model then applies init_weights).
        fan_in = self.class_weight[0, 0].numel()
        bound = 1.0 / fan_in ** 0.5
        with torch.no_grad():
            self.class_weight.uniform_(-bound, bound)
            self.class_bias.uniform_(-bound, bound)
        self.reset_spectral_state()

    @torch.no_grad()
    def reset_spectral_state(self, steps: int = 15) -> None:
        """Random u, then ``steps`` power iterations (after any re-initialisation of the weight)."""
        if not self.use_spectral_norm:
            return
        self.sn_u.copy_(F.normalize(torch.randn_like(self.sn_u), dim=1, eps=1e-12))
        for _ in range(steps):
            self._power_iteration()

    @torch.no_grad()
    def _power_iteration(self) -> None:
        mat = self.class_weight.detach().reshape(self.class_weight.shape[0], self.class_weight.shape[1], -1)
        self.sn_v.copy_(F.normalize(torch.einsum("ko,koi->ki", self.sn_u, mat), dim=1, eps=1e-12))
        self.sn_u.copy_(F.normalize(torch.einsum("koi,ki->ko", mat, self.sn_v), dim=1, eps=1e-12))

    def effective_weight(self) -> torch.Tensor:
        """The weight used in forward [K, O, I, k, k] (divided per class by sigma_c with spectral norm)."""
        weight = self.class_weight
        if not self.use_spectral_norm:
            return weight
        if self.training:
            self._power_iteration()
        mat = weight.reshape(weight.shape[0], weight.shape[1], -1)
        # clones: later in-place power iterations must not touch tensors saved for this backward
        sigma = torch.einsum("ko,koi,ki->k", self.sn_u.clone(), mat, self.sn_v.clone())
        return weight / sigma.view(-1, 1, 1, 1, 1)


class ClassSpecificGenerator(nn.Module):
    """Eq. 6-7: per-class stacks on F * M_i. forward(features [B,C,H,W], labels [B,H,W]) ->
    (per_class [B,N,3,H,W] in [-1,1], class image I_g = sum_i per_class_i [B,3,H,W])."""

    def __init__(self, in_channels: int, num_classes: int, layers: int, hidden: int, kernel_size: int,
                 use_spectral_norm: bool):
        super().__init__()
        if layers < 1 or hidden < 1 or kernel_size % 2 == 0:
            raise ValueError(f"class_layers >= 1, class_hidden >= 1 and an odd class_kernel are required, got "
                             f"{layers}, {hidden}, {kernel_size}")
        widths = [in_channels] + [hidden] * (layers - 1) + [3]
        self.layers = nn.ModuleList([ClassLayer(num_classes, widths[i], widths[i + 1], kernel_size, use_spectral_norm)
                                     for i in range(layers)])
        self.ops_backend = "auto"  # backend of class_conv / class_stack ("reference": the naive loop, e.g. for export)

    def forward(self, features: torch.Tensor, labels: torch.Tensor):
        weights = [layer.effective_weight().to(features.dtype) for layer in self.layers]
        biases = [layer.class_bias.to(features.dtype) for layer in self.layers]
        if len(self.layers) == 1:
            h = class_conv(features, labels, weights[0], biases[0], padding_mode="reflect", activation="tanh",
                           backend=self.ops_backend)
        else:
            h = class_stack(features, labels, weights, biases, padding_mode="reflect", negative_slope=0.2,
                            final_activation="tanh", backend=self.ops_backend)
        return h, h.sum(dim=1)


class ProjectionHead(nn.Module):
    """Contrastive projection: features [B,C,h,w] -> L2-normalised embeddings [B,D,h,w]."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, in_channels, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(in_channels, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class StyleEncoder(nn.Module):
    """GauGAN's ConvEncoder: image [B,3,H,W] -> (mu, logvar) [B, z_dim] each."""

    def __init__(self, ndf: int, z_dim: int, use_spectral_norm: bool):
        super().__init__()
        widths = [3, ndf, 2 * ndf, 4 * ndf, 8 * ndf, 8 * ndf, 8 * ndf]
        self.convs = nn.ModuleList([spectral_norm(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1),
                                                  use_spectral_norm) for i in range(6)])
        self.norms = nn.ModuleList([nn.InstanceNorm2d(widths[i + 1]) for i in range(6)])
        self.fc_mu = nn.Linear(8 * ndf * 16, z_dim)
        self.fc_var = nn.Linear(8 * ndf * 16, z_dim)

    def forward(self, image: torch.Tensor):
        x = image
        if tuple(x.shape[-2:]) != (256, 256):
            x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(conv(x if index == 0 else F.leaky_relu(x, 0.2)))
        x = F.leaky_relu(x, 0.2).flatten(1)
        return self.fc_mu(x), self.fc_var(x)


class SPADETrunk(nn.Module):
    """E: GauGAN without its output conv. forward(semantics, z | None) -> F [B, C, H, W]."""

    def __init__(self, cfg: ECGANConfig):
        super().__init__()
        extra = 1 if cfg.use_instance_edge else 0
        factor = 2 ** UPSAMPLING_LAYERS[cfg.num_upsampling_layers]
        self.latent_size = (cfg.height // factor, cfg.width // factor)
        self.latent_channels = 16 * cfg.ngf
        self.blocks = SPADEGlobalGenerator(cfg.ngf, cfg.num_classes, extra, cfg.spade_hidden, cfg.param_free_norm,
                                           cfg.spectral_norm, cfg.num_upsampling_layers)
        del self.blocks.conv_img          # F is taken before the output conv
        self.out_channels = cfg.ngf // 2 if cfg.num_upsampling_layers == "most" else cfg.ngf
        if cfg.multimodal:
            self.fc = nn.Linear(cfg.z_dim, self.latent_channels * self.latent_size[0] * self.latent_size[1])
        else:
            self.fc = OneHotConv2d(cfg.num_classes, extra, self.latent_channels, 3, padding=1)

    def forward(self, semantics: Semantics, z: torch.Tensor | None = None) -> torch.Tensor:
        if z is None:
            labels, extra = semantics.at(self.latent_size)
            x = self.fc(labels, extra)
        else:
            x = self.fc(z).view(z.shape[0], self.latent_channels, *self.latent_size)
        g = self.blocks
        x = g.head_0(x, semantics)
        x = g.up(x)
        x = g.G_middle_0(x, semantics)
        if g.num_upsampling_layers in ("more", "most"):
            x = g.up(x)
        x = g.G_middle_1(x, semantics)
        for block in (g.up_0, g.up_1, g.up_2, g.up_3):
            x = block(g.up(x), semantics)
        if g.num_upsampling_layers == "most":
            x = g.up_4(g.up(x), semantics)
        return x


class EdgeImageBranches(nn.Module):
    """G_e, G_i and G_t. forward(F) -> (I' [B,3,H,W], I_e' [B,3,H,W] | None)."""

    def __init__(self, in_channels: int, widths: list[int], use_edge: bool, use_transfer: bool,
                 use_spectral_norm: bool):
        super().__init__()
        self.use_transfer = use_transfer

        def chain():
            convs = nn.ModuleList()
            prev = in_channels
            for width in widths:
                convs.append(spectral_norm(nn.Conv2d(prev, width, 3, padding=1), use_spectral_norm))
                prev = width
            return convs, spectral_norm(nn.Conv2d(prev, 3, 3, padding=1), use_spectral_norm)

        self.image_convs, self.image_out = chain()
        self.edge_convs = self.edge_out = None
        if use_edge:
            self.edge_convs, self.edge_out = chain()

    def forward(self, features: torch.Tensor):
        x_i = x_e = features
        for j, conv_i in enumerate(self.image_convs):
            x_i = conv_i(F.leaky_relu(x_i, 0.2))
            if self.edge_convs is not None:
                x_e = self.edge_convs[j](F.leaky_relu(x_e, 0.2))
                if self.use_transfer:
                    x_i = torch.sigmoid(x_e) * x_i + x_i                 # F_i^j <- sigma(F_e^j) F_i^j + F_i^j
        image = torch.tanh(self.image_out(F.leaky_relu(x_i, 0.2)))
        if self.edge_convs is None:
            return image, None
        edge = torch.tanh(self.edge_out(F.leaky_relu(x_e, 0.2)))
        if self.use_transfer:
            image = torch.sigmoid(edge) * image + image                  # Eq. 1
        return image, edge


class SemanticPreserving(nn.Module):
    """G_s (Eq. 2). forward(labels, dense [B, E, H, W] = [instance edge?, F, I', I_e'?, I_g?]) -> I''."""

    def __init__(self, num_classes: int, dense_channels: int, use_spectral_norm: bool):
        super().__init__()
        total = num_classes + dense_channels
        self.conv_in = spectral_norm(OneHotConv2d(num_classes, dense_channels, num_classes, 3, padding=1),
                                     use_spectral_norm)
        self.conv_mid = spectral_norm(nn.Conv2d(num_classes, total, 3, padding=1), use_spectral_norm)
        self.conv_out = spectral_norm(nn.Conv2d(total, 3, 3, padding=1), use_spectral_norm)

    def forward(self, labels: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        f_c = self.conv_in(labels, F.leaky_relu(dense, 0.2))              # F_c: N class channels
        gamma = torch.sigmoid(F.adaptive_avg_pool2d(f_c, 1))              # gamma' = sigmoid(AvgPool(F_c))
        f_c = f_c * gamma + f_c                                           # Eq. 2
        x = self.conv_mid(F.leaky_relu(f_c, 0.2))                         # F' (C+N+3+3 channels)
        return torch.tanh(self.conv_out(F.leaky_relu(x, 0.2)))            # I''


# ----------------------------------------------------------------------------------------- outputs
@dataclass
class ECGANOutput:
    """One ECGAN generator forward (B batch, N classes, D projection dim, s contrast stride).

    image: [B,3,H,W] I' (in about (-1.73, 1.73) with G_t).   refined_image: [B,3,H,W] I'' or None (no G_s).
    final (property): I'' when present, else I'.           edge: [B,3,H,W] I_e' in [-1,1] or None.
    per_class: [B,N,3,H,W] I_gi or None.                   class_image: [B,3,H,W] I_g or None.
    embeddings: [B,D,H/s,W/s] or None (training losses only).
    mu, logvar: [B,z_dim] or None (multi-modal with an image).
    """
    image: torch.Tensor
    refined_image: torch.Tensor | None = None
    edge: torch.Tensor | None = None
    per_class: torch.Tensor | None = None
    class_image: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None

    @property
    def final(self) -> torch.Tensor:
        return self.image if self.refined_image is None else self.refined_image

    @property
    def refined(self) -> bool:
        return self.refined_image is not None

    @property
    def attention(self) -> torch.Tensor | None:
        """I_a' = sigmoid(I_e') (Eq. 1's attention map), [B,3,H,W] in (0,1)."""
        return None if self.edge is None else torch.sigmoid(self.edge)

    def adversarial_outputs(self, lambda_refine: float):
        """[(fake [B,3,H,W], weight, real index)] with real 0 = image, 1 = edge (Eq. 8-10 weights)."""
        items = [(self.image, 1.0, 0)]
        if self.refined_image is not None:
            items.append((self.refined_image, lambda_refine, 0))
        if self.edge is not None:
            items.append((self.edge, 1.0, 1))
        return items

    def sample_columns(self) -> list[torch.Tensor]:
        """Images for the trainer's sample grid: [edge, attention, I', I_g, I''] where present."""
        columns = []
        if self.edge is not None:
            columns += [self.edge, self.attention * 2 - 1]
        columns.append(self.image)
        if self.class_image is not None:
            columns.append(self.class_image)
        if self.refined_image is not None:
            columns.append(self.refined_image)
        return columns

    def detach(self) -> "ECGANOutput":
        return ECGANOutput(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).detach())
                              for f in dataclasses.fields(self)})


# ----------------------------------------------------------------------------------------- generator
class ECGANGenerator(nn.Module):
    """G = (E, G_e, G_i, G_t, G_s, class-specific generation, projection head, style encoder).

    forward(labels [B,H,W] int64, edge [B,1,H,W] | None (instance edges), style_image [B,3,H,W] | None,
    z [B,z_dim] | None, with_embeddings=False) -> ECGANOutput.
    """

    def __init__(self, cfg: ECGANConfig):
        super().__init__()
        self.cfg = cfg
        _validate(cfg)
        self.trunk = SPADETrunk(cfg)
        channels = self.trunk.out_channels
        widths = [max(1, channels >> (j + 1)) for j in range(cfg.branch_layers)]
        self.branches = EdgeImageBranches(channels, widths, cfg.use_edge, cfg.use_transfer, cfg.spectral_norm)
        self.class_generator = None
        if cfg.use_class_specific:
            self.class_generator = ClassSpecificGenerator(channels, cfg.num_classes, cfg.class_layers, cfg.class_hidden,
                                                          cfg.class_kernel, cfg.spectral_norm)
        self.semantic_preserving = None
        if cfg.use_semantic_preserving:
            dense = (1 if cfg.use_instance_edge else 0) + channels + 3 + (3 if cfg.use_edge else 0)
            dense += 3 if cfg.class_image_fusion == "semantic_preserving" else 0
            self.semantic_preserving = SemanticPreserving(cfg.num_classes, dense, cfg.spectral_norm)
        self.projection = ProjectionHead(channels, cfg.proj_dim) if cfg.use_contrastive else None
        self.style_encoder = StyleEncoder(cfg.ngf, cfg.z_dim, cfg.spectral_norm) if cfg.multimodal else None

    def forward(self, labels: torch.Tensor, edge: torch.Tensor | None = None, style_image: torch.Tensor | None = None,
                z: torch.Tensor | None = None, with_embeddings: bool = False) -> ECGANOutput:
        cfg = self.cfg
        if labels.dim() != 3 or labels.dtype.is_floating_point or tuple(labels.shape[-2:]) != (cfg.height, cfg.width):
            raise ValueError(f"labels must be an integer [B, {cfg.height}, {cfg.width}] tensor, got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        if cfg.use_instance_edge and edge is None:
            raise ValueError("cfg.use_instance_edge=True: pass the instance edge map [B,1,H,W]")
        extra = edge if cfg.use_instance_edge else None
        mu = logvar = None
        if self.style_encoder is not None:
            if z is None and style_image is not None:
                mu, logvar = self.style_encoder(style_image)
                z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)      # reparameterisation
            elif z is None:
                z = torch.randn(labels.shape[0], cfg.z_dim, device=labels.device)
        elif z is not None:
            raise ValueError("z is only used with cfg.multimodal=True")
        features = self.trunk(Semantics(labels, extra), z)
        image, edge_map = self.branches(features)
        per_class = class_image = None
        if self.class_generator is not None:
            per_class, class_image = self.class_generator(features, labels)
        refined = None
        if self.semantic_preserving is not None:
            dense = [features, image] + ([edge_map] if edge_map is not None else [])
            if cfg.class_image_fusion == "semantic_preserving":
                dense.append(class_image.to(features.dtype))
            if extra is not None:
                dense.insert(0, extra.to(features.dtype))
            refined = self.semantic_preserving(labels, torch.cat(dense, dim=1))
        embeddings = None
        if with_embeddings and self.projection is not None:
            s = cfg.contrast_stride
            embeddings = self.projection(features[:, :, ::s, ::s])
        return ECGANOutput(image=image, refined_image=refined, edge=edge_map, per_class=per_class, class_image=class_image,
                           embeddings=embeddings, mu=mu, logvar=logvar)


def _validate(cfg: ECGANConfig) -> None:
    n_up = UPSAMPLING_LAYERS.get(cfg.num_upsampling_layers)
    if n_up is None:
        raise ValueError(f"num_upsampling_layers must be one of {sorted(UPSAMPLING_LAYERS)}, "
                         f"got {cfg.num_upsampling_layers!r}")
    factor = 2 ** n_up
    if cfg.height % factor or cfg.width % factor:
        raise ValueError(f"height and width must be multiples of 2**{n_up} = {factor}, got {cfg.height}x{cfg.width}")
    if cfg.num_classes < 1 or cfg.branch_layers < 1:
        raise ValueError(f"num_classes and branch_layers must be >= 1, got {cfg.num_classes}, {cfg.branch_layers}")
    if cfg.use_transfer and not cfg.use_edge:
        raise ValueError("use_transfer (G_t) needs use_edge (G_e)")
    if cfg.class_image_fusion not in ("none", "semantic_preserving"):
        raise ValueError(f"class_image_fusion must be 'none' or 'semantic_preserving', got {cfg.class_image_fusion!r}")
    if cfg.class_image_fusion == "semantic_preserving" and not (cfg.use_class_specific and cfg.use_semantic_preserving):
        raise ValueError("class_image_fusion='semantic_preserving' needs use_class_specific and use_semantic_preserving")
    if cfg.use_contrastive and (cfg.contrast_stride < 1 or cfg.height % cfg.contrast_stride
                                or cfg.width % cfg.contrast_stride):
        raise ValueError(f"contrast_stride must be >= 1 and divide {cfg.height}x{cfg.width}, got {cfg.contrast_stride}")
    if cfg.sim_stride < 1:
        raise ValueError(f"sim_stride must be >= 1, got {cfg.sim_stride}")
    if cfg.canny_hysteresis not in ("public", "connected"):
        raise ValueError(f"canny_hysteresis must be 'public' or 'connected', got {cfg.canny_hysteresis!r}")


# ----------------------------------------------------------------------------------------- losses
def _per_output(x: torch.Tensor, reps: int) -> torch.Tensor:
    """[N*B, ...] -> [N] per-output means (float32)."""
    return x.float().reshape(reps, -1).mean(dim=1)


def weighted_hinge(pred: list[list[torch.Tensor]], weights: torch.Tensor, mode: str) -> torch.Tensor:
    """sum_n w_n * mean_scales(hinge term of output n); mode "g" (-D), "fake" (relu(1+D)), "real" (relu(1-D))."""
    reps = weights.shape[0]
    total = 0.0
    for scale in pred:
        d = scale[-1].float()
        value = -d if mode == "g" else F.relu(1.0 + d) if mode == "fake" else F.relu(1.0 - d)
        total = total + (_per_output(value, reps) * weights).sum()
    return total / len(pred)


def weighted_feature_l1(fake_feats, real_feats, weights: torch.Tensor, real_index: torch.Tensor, n_real: int,
                        layer_weights=None) -> torch.Tensor:
    """sum_layers lw_l sum_n w_n mean|f_l(fake_n) - f_l(real_{r(n)})| (reals detached); fake_feats and
    real_feats: lists of [N*B, ...] / [R*B, ...] tensors."""
    n_fake = weights.shape[0]
    total = 0.0
    for index, (ff, rf) in enumerate(zip(fake_feats, real_feats)):
        batch = rf.shape[0] // n_real
        target = rf.detach().reshape(n_real, batch, *rf.shape[1:]).index_select(0, real_index)
        diff = ff.reshape(n_fake, batch, *ff.shape[1:]) - target
        per = diff.abs().float().reshape(n_fake, -1).mean(dim=1)
        lw = 1.0 if layer_weights is None else layer_weights[index]
        total = total + lw * (per * weights).sum()
    return total


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """GauGAN's KLDLoss: -0.5 * sum(1 + logvar - mu^2 - exp(logvar)) (sum over batch and dims)."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


# ----------------------------------------------------------------------------------------- model
class ECGANModel(nn.Module):
    """Generator, multi-modality discriminator, label generator, memory bank, frozen VGG19 and all
    ECGAN losses (module docstring). Same interface as ``LGGANModel``.

    ``state_dict`` leaves out the frozen VGG and an external (user) segmenter."""

    def __init__(self, cfg: ECGANConfig):
        super().__init__()
        attach_gan_parts(self, cfg, ECGANGenerator(cfg))
        for module in self.generator.modules():
            if isinstance(module, ClassLayer):
                module.reset_spectral_state()
        self.label_generator: LabelGenerator | None = None
        if cfg.use_label_generator:
            self.label_generator = build_label_generator(cfg)
        self.memory_bank = None
        if cfg.use_contrastive and cfg.memory_bank:
            from ..ops.class_memory_bank import ClassMemoryBank

            self.memory_bank = ClassMemoryBank(cfg.num_classes, cfg.proj_dim, cfg.memory_size,
                                               cfg.memory_pixels_per_image)
        if self.label_generator is not None and self.label_generator.external:
            exclude_from_state_dict(self, "label_generator")

    # ------------------------------------------------------------------------------------ helpers
    def generator_parameters(self):
        return self.generator.parameters()

    def discriminator_parameters(self):
        """D, plus a trained-alongside segmenter (updated in the D step with lr_d)."""
        params = [self.discriminator.parameters()]
        if self.label_generator is not None and self.label_generator.trainable:
            params.append(self.label_generator.parameters())
        return itertools.chain(*params)

    def instance_edge(self, instance: torch.Tensor | None) -> torch.Tensor | None:
        if not self.cfg.use_instance_edge:
            return None
        if instance is None:
            raise ValueError("cfg.use_instance_edge=True needs the instance map [B,H,W] (instance=...)")
        return instance_edges(instance)

    def edge_target(self, image: torch.Tensor, edges: torch.Tensor | None) -> torch.Tensor:
        """The ground-truth edge image [B,3,H,W] in [-1,1]: ``edges`` as given (3-channel in [-1,1], e.g.
        precomputed PNGs) or as binary [B,1,H,W] {0,1} maps (the synthetic dataset's), else Canny of ``image``."""
        if edges is None:
            return self.real_edges(image)
        if edges.shape[1] == 1:
            edges = edge_image(edges)
        return edges.to(image.dtype)

    def real_edges(self, image: torch.Tensor) -> torch.Tensor:
        """Ground-truth edge image [B,3,H,W] in {-1,1}: Canny of the real image on its device."""
        cfg = self.cfg
        return edge_image(canny(image.detach(), cfg.canny_low, cfg.canny_high, cfg.canny_hysteresis))

    # ---------------------------------------------------------------------------------- forward
    def generate(self, labels: torch.Tensor, instance: torch.Tensor | None = None,
                 image: torch.Tensor | None = None, z: torch.Tensor | None = None) -> ECGANOutput:
        """Multi-modal: style from ``image`` when given, else ``z`` or z ~ N(0, I)."""
        return self.generator(labels, self.instance_edge(instance), style_image=image, z=z)

    def _discriminate(self, labels, edge, outputs, reals):
        """D on the fakes (graph to G, no D weight gradients) and on the reals (no graph)."""
        fakes = torch.cat([o[0] for o in outputs], dim=0)
        with _no_param_grads(self.discriminator):
            pred_fake = self.discriminator(labels, edge, fakes)
        with torch.no_grad():
            pred_real = self.discriminator(labels, edge, torch.cat(reals, dim=0))
        return fakes, pred_fake, pred_real

    def generator_loss(self, labels: torch.Tensor, image: torch.Tensor, instance: torch.Tensor | None = None,
                       edges: torch.Tensor | None = None):
        """Returns (total float32 scalar, {term: detached weighted scalar}, ECGANOutput).

        ``edges``: optional precomputed ground-truth edge image [B,3,H,W] in [-1,1] (default: Canny of
        ``image`` on the fly)."""
        cfg = self.cfg
        edge = self.instance_edge(instance)
        out = self.generator(labels, edge, style_image=image if cfg.multimodal else None,
                             with_embeddings=cfg.use_contrastive and cfg.lambda_contrast > 0)
        dev = image.device
        outputs = out.adversarial_outputs(cfg.lambda_refine)
        reals = [image]
        if out.edge is not None:
            reals.append(self.edge_target(image, edges))
        weights = torch.tensor([o[1] for o in outputs], device=dev)
        real_index = torch.tensor([o[2] for o in outputs], device=dev)
        terms: dict[str, torch.Tensor] = {}

        fakes, pred_fake, pred_real = self._discriminate(labels, edge, outputs, reals)
        terms["g_gan"] = weighted_hinge(pred_fake, weights, "g") * cfg.lambda_gan
        if cfg.lambda_feat > 0:
            fm = sum(weighted_feature_l1(fs[:-1], rs[:-1], weights, real_index, len(reals))
                     for fs, rs in zip(pred_fake, pred_real))
            terms["g_feat"] = fm / len(pred_fake) * cfg.lambda_feat
        if self.vgg is not None and cfg.lambda_vgg > 0:
            fake_feats = self.vgg(fakes)
            with torch.no_grad():
                real_feats = self.vgg(torch.cat(reals, dim=0))
            terms["g_vgg"] = weighted_feature_l1(fake_feats, real_feats, weights, real_index, len(reals),
                                                 VGG_LAYER_WEIGHTS) * cfg.lambda_vgg
        if out.mu is not None and cfg.lambda_kld > 0:
            terms["g_kld"] = kl_divergence(out.mu, out.logvar) * cfg.lambda_kld

        prediction = None
        if self.label_generator is not None and (cfg.lambda_sim > 0 or out.embeddings is not None):
            generated = [out.image] + ([out.refined_image] if out.refined else [])
            batch = labels.shape[0]
            with _no_param_grads(self.label_generator):
                probs = self.label_generator.probs(torch.cat(generated, dim=0), tuple(labels.shape[-2:]))
            prediction = probs[-batch:].detach().argmax(dim=1)     # G_l's labels of the final image
            if cfg.lambda_sim > 0:
                from ..ops.pair_similarity_loss import pair_similarity_loss

                sim = sum(pair_similarity_loss(p, labels, stride=cfg.sim_stride) for p in probs.split(batch))
                terms["g_sim"] = sim * cfg.lambda_sim
        if out.embeddings is not None:
            terms["g_contrast"] = self.contrastive_loss(out.embeddings, labels, prediction) * cfg.lambda_contrast
        if out.per_class is not None and cfg.lambda_class_l1 > 0:
            terms["g_class_l1"] = class_l1(out.per_class, image.to(out.per_class.dtype), labels) * cfg.lambda_class_l1
        total = sum(terms.values())
        return total, {k: v.detach() for k, v in terms.items()}, out

    def contrastive_loss(self, embeddings: torch.Tensor, labels: torch.Tensor,
                         prediction: torch.Tensor | None) -> torch.Tensor:
        """Eq. 5 on anchors sampled per class (float32 scalar). Pushes the batch to the memory bank after."""
        from ..ops.pixel_contrast_loss import pixel_contrast_loss
        from ..ops.sample_anchors import sample_anchors

        cfg = self.cfg
        emb = embeddings.float()
        sample = sample_anchors(emb, labels, prediction, cfg.num_classes, cfg.max_samples, cfg.max_views)
        if self.memory_bank is None:
            return pixel_contrast_loss(sample.embeddings, sample.labels, temperature=cfg.temperature,
                                       base_temperature=cfg.base_temperature)
        contrast, contrast_labels = self.memory_bank.contrast_set(cfg.memory_kind)
        # A copy: the push below rewrites the bank in place, and the loss's backward reads the contrast set.
        contrast = contrast.to(torch.float32, copy=True)
        loss = pixel_contrast_loss(sample.embeddings, sample.labels, contrast, contrast_labels,
                                   temperature=cfg.temperature, base_temperature=cfg.base_temperature)
        # Under DDP every rank pushes every rank's batch (ContrastiveSeg's concat_all_gather), so the banks stay
        # identical; the pixels drawn agree too, as every rank advances the same random stream. The labels are
        # gathered at the embeddings' grid (the nearest [::s, ::s] subsampling push would apply anyway).
        step_h, step_w = labels.shape[-2] // emb.shape[-2], labels.shape[-1] // emb.shape[-1]
        self.memory_bank.push(*gather_over_ranks(emb.detach(), labels[:, ::step_h, ::step_w]))
        return loss

    def discriminator_loss(self, labels: torch.Tensor, image: torch.Tensor, fake: ECGANOutput,
                           instance: torch.Tensor | None = None, edges: torch.Tensor | None = None):
        """D hinge loss (Eq. 8-9 weights) + the trained-alongside segmenter's cross-entropy.

        ``fake``: the ECGANOutput of ``generate`` (detached here). Returns (total, {"d_fake", "d_real", ["d_seg"]})."""
        cfg = self.cfg
        if not isinstance(fake, ECGANOutput):
            raise ValueError(f"fake must be an ECGANOutput, got {type(fake).__name__}")
        edge = self.instance_edge(instance)
        outputs = fake.adversarial_outputs(cfg.lambda_refine)
        reals = [image]
        if fake.edge is not None:
            reals.append(self.edge_target(image, edges))
        dev = image.device
        fake_w = torch.tensor([o[1] for o in outputs], device=dev)
        refine = cfg.lambda_refine if fake.refined else 0.0
        real_w = torch.tensor([1.0 + refine] + ([1.0] if fake.edge is not None else []), device=dev)
        pred_fake = self.discriminator(labels, edge, torch.cat([o[0].detach() for o in outputs], dim=0))
        pred_real = self.discriminator(labels, edge, torch.cat(reals, dim=0))
        d_fake = weighted_hinge(pred_fake, fake_w, "fake")
        d_real = weighted_hinge(pred_real, real_w, "real")
        terms = {"d_fake": d_fake, "d_real": d_real}
        if self.label_generator is not None and self.label_generator.trainable and cfg.lambda_seg > 0:
            logits = self.label_generator.logits(image, tuple(labels.shape[-2:]))
            terms["d_seg"] = F.cross_entropy(logits.float(), labels) * cfg.lambda_seg
        total = sum(terms.values())
        return total, {k: v.detach() for k, v in terms.items()}
