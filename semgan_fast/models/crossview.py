"""LGGAN for cross-view image translation (Tang et al., CVPR 2020, Sec. 3.1 and 4.1).

Generator (``CrossViewGenerator``): the semantic-synthesis LGGAN generator (``lggan.py``) whose shared
encoder E reads the source view I_a concatenated with the target semantic map S_g (SelectionGAN's
input, paper Sec. 3.1): its first conv is a ``OneHotConv2d`` over [one-hot S_g | I_a] (the one-hot
part by label gather). The global (SPADE, modulated by S_g only: I_a is not aligned with the target
view), local class-specific and weight-map branches, the classifier and the ablation rows S1-S5 are
those of ``LGGANGenerator``.

Dual discriminator (``DualDiscriminator``, Eq. 8-9): D_s = SPADE's multiscale D over (S_g, image), and
D_i = a multiscale PatchGAN over [I_a | image] (same layer layout, dense 6-channel input); the GAN
loss of G and of D is L(D_s) + L(D_i) (hinge, as our LGGAN), each term summed over the outputs
(final, global, local) as in ``LGGANModel``; feature matching uses both discriminators' features.

Facts of the public cross-view code (Ha0Tang/LGGAN ``cross_view_translation``), where we differ:
it feeds the RGB colour rendering of S_g (we: one-hot, same information); its global branch is a
ResNet decoder over a shared 9-resblock trunk (we: the SPADE global branch of the semantic model,
as asked by "the same branches"); its six local generators are summed (Eq. 3, our
``local_combine="add"``) without the classification loss; D_i and D_s are single-scale PatchGANs with
the BCE GAN loss; G adds L1 x 100 on final/global/local, the local L1 x 100, VGG x 10 and a 1e-6
total-variation term. Our defaults (``CrossViewConfig``): image L1 and local L1 weights 100, VGG 10,
feature matching 10, no TV term.

Inputs everywhere: labels int64 [B,H,W] (target semantics S_g), image float [B,3,H,W] target view,
source float [B,3,H,W] source view I_a, both in [-1,1]. The trainer passes the source as the third
argument (``CrossViewModel.condition(batch)`` returns ``batch["source"]``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import CrossViewConfig
from .discriminator import MultiscaleDiscriminator, NLayerDiscriminator, _downsample
from .encoder import Encoder
from .layers import Semantics
from .lggan import GeneratorOutput, LGGANGenerator, LGGANModel, _no_param_grads, attach_gan_parts
from .losses import feature_matching_loss, hinge_d_loss, hinge_g_loss
from .spade import UPSAMPLING_LAYERS


@dataclass
class CrossViewOutput(GeneratorOutput):
    """``GeneratorOutput`` plus the source view [B,3,H,W] (for the sample grid)."""
    source: torch.Tensor | None = None

    def sample_columns(self) -> list[torch.Tensor]:
        """[source, global, local, final, local weight, global weight] where present."""
        columns = [self.source, self.global_image]
        if self.local_image is not None:
            columns.append(self.local_image)
            columns.append(self.final)
        if self.weights is not None:
            columns += [(self.weights[:, i:i + 1] * 2 - 1).expand(-1, 3, -1, -1) for i in range(2)]
        return columns

    def detach(self) -> "CrossViewOutput":
        return CrossViewOutput(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).detach())
                                  for f in dataclasses.fields(self)})


class CrossViewGenerator(LGGANGenerator):
    """forward(labels [B,H,W] int64, source [B,S,H,W] float) -> CrossViewOutput. No instance channel
    (the cross-view data sets have no instance maps)."""

    def __init__(self, cfg: CrossViewConfig):
        if cfg.use_instance_edge:
            raise ValueError("cross-view LGGAN has no instance input: set use_instance_edge=False")
        if cfg.source_channels < 1:
            raise ValueError(f"source_channels must be >= 1, got {cfg.source_channels}")
        super().__init__(cfg)
        factor = 2 ** UPSAMPLING_LAYERS[cfg.num_upsampling_layers]
        self.encoder = Encoder(cfg.num_classes, cfg.source_channels, cfg.ngf, (cfg.height // factor, cfg.width // factor))

    def forward(self, labels: torch.Tensor, source: torch.Tensor | None = None) -> CrossViewOutput:
        cfg = self.cfg
        if labels.dim() != 3 or labels.dtype.is_floating_point or tuple(labels.shape[-2:]) != (cfg.height, cfg.width):
            raise ValueError(f"labels must be an integer [B, {cfg.height}, {cfg.width}] tensor, got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        expected = (labels.shape[0], cfg.source_channels, cfg.height, cfg.width)
        if source is None or tuple(source.shape) != expected or not source.is_floating_point():
            got = None if source is None else (source.dtype, tuple(source.shape))
            raise ValueError(f"source must be a float [B, {cfg.source_channels}, {cfg.height}, {cfg.width}] "
                             f"tensor (the source view), got {got}")
        semantics = Semantics(labels)                 # SPADE is modulated by S_g only
        x_encode, latent = self.encoder(labels, source)
        global_image = self.global_generator(latent, semantics)
        return CrossViewOutput(**self.local_and_fusion(labels, x_encode, global_image), source=source)


class ImageGuidedDiscriminator(nn.Module):
    """D_i: multiscale PatchGAN over the dense [source | image] input. forward(source [N*B,S,H,W],
    images [N*B,3,H,W]) -> list over scales of feature lists (last = patch prediction)."""

    def __init__(self, source_channels: int, ndf: int, num_d: int, n_layers: int, use_spectral_norm: bool):
        super().__init__()
        self.scales = nn.ModuleList([NLayerDiscriminator(0, source_channels + 3, ndf, n_layers, use_spectral_norm)
                                     for _ in range(num_d)])

    def forward(self, source: torch.Tensor, images: torch.Tensor):
        x = torch.cat([source.to(images.dtype), images], dim=1)
        results = []
        for scale, disc in enumerate(self.scales):
            if scale:
                x = _downsample(x)
            results.append(disc(dense=x))
        return results


class DualDiscriminator(nn.Module):
    """(D_s, D_i). forward(labels [B,H,W], source [B,S,H,W], edge | None, images [N*B,3,H,W]) ->
    (D_s predictions, D_i predictions or None)."""

    def __init__(self, cfg: CrossViewConfig):
        super().__init__()
        self.semantic = MultiscaleDiscriminator(cfg.num_classes, cfg.use_instance_edge, cfg.ndf, cfg.num_d,
                                                cfg.n_layers_d, cfg.spectral_norm)
        self.image = None
        if cfg.use_image_discriminator:
            self.image = ImageGuidedDiscriminator(cfg.source_channels, cfg.ndf, cfg.num_d, cfg.n_layers_d,
                                                  cfg.spectral_norm)

    def forward(self, labels, source, edge, images):
        pred_s = self.semantic(labels, edge, images)
        pred_i = None
        if self.image is not None:
            reps = images.shape[0] // labels.shape[0]
            pred_i = self.image(source.repeat(reps, 1, 1, 1) if reps > 1 else source, images)
        return pred_s, pred_i


class CrossViewModel(LGGANModel):
    """Generator, dual discriminator, frozen VGG19 and the LGGAN losses for cross-view translation.

    Interface of ``LGGANModel`` with the source view in the third position:
    generate(labels, source), generator_loss(labels, image, source), discriminator_loss(labels, image,
    fake, source). Loss terms: "g_gan" (D_s + D_i), "g_feat" (both), "g_vgg", "g_l1", "g_local_l1",
    "g_class"; D: "d_fake", "d_real" (both discriminators summed)."""

    def __init__(self, cfg: CrossViewConfig):
        nn.Module.__init__(self)
        attach_gan_parts(self, cfg, CrossViewGenerator(cfg), DualDiscriminator(cfg))

    @staticmethod
    def condition(batch: dict) -> torch.Tensor:
        """The model's third input from a data batch: the source view."""
        if "source" not in batch:
            raise ValueError("cross-view batches need a 'source' entry (the source view image)")
        return batch["source"]

    def generate(self, labels: torch.Tensor, source: torch.Tensor | None = None) -> CrossViewOutput:
        return self.generator(labels, source)

    def generator_loss(self, labels: torch.Tensor, image: torch.Tensor, source: torch.Tensor | None = None):
        """Returns (total float32 scalar, {term: detached weighted scalar}, CrossViewOutput)."""
        cfg = self.cfg
        out = self.generator(labels, source)
        fake_list = out.images()
        reps = len(fake_list)
        fakes = torch.cat(fake_list, dim=0)
        terms: dict[str, torch.Tensor] = {}
        with _no_param_grads(self.discriminator):
            fake_s, fake_i = self.discriminator(labels, source, None, fakes)
        with torch.no_grad():
            real_s, real_i = self.discriminator(labels, source, None, image)
        pairs = [(fake_s, real_s)] + ([(fake_i, real_i)] if fake_i is not None else [])
        terms["g_gan"] = sum(hinge_g_loss(f, reps) for f, _ in pairs)
        if cfg.lambda_feat > 0:
            terms["g_feat"] = sum(feature_matching_loss(f, r, reps) for f, r in pairs) * cfg.lambda_feat
        terms.update(self.non_adversarial_terms(out, fakes, image, labels, reps))
        total = sum(terms.values())
        return total, {k: v.detach() for k, v in terms.items()}, out

    def discriminator_loss(self, labels: torch.Tensor, image: torch.Tensor, fake, source: torch.Tensor | None = None):
        """Hinge loss of D_s + D_i. ``fake``: the CrossViewOutput of ``generate`` (detached here)."""
        if not isinstance(fake, GeneratorOutput):
            raise ValueError(f"fake must be a CrossViewOutput, got {type(fake).__name__}")
        if source is None:
            raise ValueError("discriminator_loss needs the source view (third argument)")
        fake_list = fake.images()
        reps = len(fake_list)
        fakes = torch.cat([f.detach() for f in fake_list], dim=0)
        fake_s, fake_i = self.discriminator(labels, source, None, fakes)
        real_s, real_i = self.discriminator(labels, source, None, image)
        d_fake = hinge_d_loss(fake_s, reps, real=False)
        d_real = hinge_d_loss(real_s, 1, real=True) * reps
        if fake_i is not None:
            d_fake = d_fake + hinge_d_loss(fake_i, reps, real=False)
            d_real = d_real + hinge_d_loss(real_i, 1, real=True) * reps
        total = d_fake + d_real
        return total, {"d_fake": d_fake.detach(), "d_real": d_real.detach()}

    def edges(self, instance):
        """``LGGANModel.edges``: cross-view has no instance channel."""
        return None
