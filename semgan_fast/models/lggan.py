"""LGGAN (Tang et al., CVPR 2020) for semantic image synthesis: generator, model and losses.

Generator (paper Fig. 2, Sec. 3): shared encoder E -> SPADE global generator G_g (I^G), local
class-specific generator G_l (per-class images I_i, combined into I^L by Eq. 3 or 4), classification
module (Eq. 5) and weight-map generator G_w (Eq. 6-7: I^C = W_l I^L + W_g I^G). See ``encoder.py``,
``spade.py``, ``local.py`` for the layer-by-layer layout.

Ablation rows (``LGGANConfig.ablation``, paper Table 3 right), with our choices where the paper is silent:
- S1: global generator only; ``final`` is the global image (same tensor); no local modules are built.
- S2: + local branch combined by addition (Eq. 3: I^L = sum_i I_i, no tanh, so I^L is only
  approximately in [-1, 1]; the local L1 loss drives each I_i to 0 outside its class). Without a
  weight map, global and local are fused with fixed equal weights: I^C = (I^G + I^L) / 2, i.e. S5's
  fusion with W = 0.5 everywhere, so S2->S5 isolates the learned weights.
- S3: as S2 with Eq. 4 (I^L = tanh(conv3x3(concat_i I_i)), the public code's deconv9).
- S4: S3 + classification loss.  S5: S4 + learned weight map (full model).

Losses (``LGGANModel.generator_loss``; dict values are already weighted, total = their sum):
- "g_gan" (hinge, weight 1), "g_feat" (D feature matching x lambda_feat / num_d), "g_vgg" (VGG19 x
  lambda_vgg, layer weights 1/32..1) and, if lambda_l1 > 0, "g_l1" (image L1): applied to EACH
  generated output that exists, summed, as the public code does: S1 -> final only (it is the global
  image); S2-S5 -> final, global and local images.
- "g_local_l1" (Eq. 2, x lambda_local_l1): the per-class outputs vs the class-masked real image (S2-S5).
- "g_class" (Eq. 5, x lambda_class): cross-entropy of each present class's pooled features (S4-S5).
Discriminator loss: hinge on D(all fakes, batched) and D(real), the real term weighted by the number
of fake outputs N so the balance equals the public code's N (fake, real) pairs.

Efficiency: D sees [fake outputs batched together] once and [real] once per loss call; the real
image's D features (generator step, under no_grad) and VGG features are computed once and reused
for every output; the generator step builds no gradients for D's weights (the public code computes
them and the D step zeroes them: same result). No host synchronisation in any forward or loss
(no .item(), no data-dependent if).

Differences from the public code (all exact or bug fixes): no module-level globals or per-class
unrolled modules (one ``class_conv`` / ``class_pool`` / ``class_l1`` call each); the class-26/27 mask
mix-up fixed (``reproduce_mask_26_27_bug=True`` restores it); class validity per sample (the public
ADE20K code; the Cityscapes code pooled it over the batch, equal at its B = 1); conv biases that feed
an affine-free norm are dropped (cancelled exactly by the norm); one-hot convolutions by label gather
(``OneHotConv2d`` -> ``ops.onehot_conv``). Kept as in the public code: Xavier-normal init with gain
0.02, SPADE's D layout (first conv without norm or spectral norm), VGG fed [-1, 1] images without
ImageNet normalisation, class pooling divided by H*W.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import LGGANConfig
from ..ops import class_l1, weight_map_fusion
from .discriminator import MultiscaleDiscriminator
from .encoder import Encoder
from .layers import Semantics, init_weights, instance_edges
from .local import ClassClassifier, LocalGenerator, WeightMapGenerator, class_cross_entropy
from .losses import feature_matching_loss, hinge_d_loss, hinge_g_loss, image_l1, weighted_feature_l1
from .spade import UPSAMPLING_LAYERS, SPADEGlobalGenerator
from .vgg import VGG_LAYER_WEIGHTS, VGG19Features

# Classes of the public code's mask mix-up (car = 26, truck = 27 in Cityscapes label ids).
_BUG_CLASS_USED, _BUG_CLASS_AFFECTED = 26, 27


@dataclass
class GeneratorOutput:
    """Everything one generator forward produces (B = batch, G = local generators, Kc = classified classes).

    final: [B,3,H,W] fused image I^C (in [-1,1] except S2, see module docstring).
    global_image: [B,3,H,W] I^G (the same tensor as ``final`` in S1).
    local_image: [B,3,H,W] I^L, None in S1.
    per_class: [B,G,3,H,W] class generator outputs I_i, None in S1.
    weights: [B,2,H,W] softmax fusion weights (ch0 local, ch1 global), None without the weight map.
    class_logits: [B,Kc,Kc] classifier logits of each class's pooled features, None without the class loss.
    class_present: [B,Kc] bool, class i occurs in sample b (void-class filter), None with class_logits.
    """
    final: torch.Tensor
    global_image: torch.Tensor
    local_image: torch.Tensor | None = None
    per_class: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    class_logits: torch.Tensor | None = None
    class_present: torch.Tensor | None = None

    def images(self) -> list[torch.Tensor]:
        """The distinct generated images that receive the image losses: [final] in S1, else
        [final, global, local]."""
        if self.local_image is None:
            return [self.final]
        return [self.final, self.global_image, self.local_image]

    def detach(self) -> "GeneratorOutput":
        return GeneratorOutput(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).detach())
                                  for f in dataclasses.fields(self)})


def local_label_map(labels: torch.Tensor, cfg: LGGANConfig) -> torch.Tensor:
    """Labels [B,H,W] -> local generator index: labels >= local_classes share generator local_classes."""
    if cfg.local_classes is not None and cfg.local_classes < cfg.num_classes:
        return labels.clamp_max(cfg.local_classes)
    return labels


class LGGANGenerator(nn.Module):
    """G = (E, G_g, G_l, classifier, G_w). forward(labels [B,H,W] int64, edge [B,1,H,W] float | None)
    -> GeneratorOutput. H, W must equal cfg.height, cfg.width."""

    def __init__(self, cfg: LGGANConfig):
        super().__init__()
        self.cfg = cfg
        n_up = UPSAMPLING_LAYERS.get(cfg.num_upsampling_layers)
        if n_up is None:
            raise ValueError(f"num_upsampling_layers must be one of {sorted(UPSAMPLING_LAYERS)}, "
                             f"got {cfg.num_upsampling_layers!r}")
        factor = 2 ** n_up
        if cfg.height % factor or cfg.width % factor:
            raise ValueError(f"height and width must be multiples of 2**{n_up} = {factor} for "
                             f"num_upsampling_layers={cfg.num_upsampling_layers!r}, got {cfg.height}x{cfg.width}")
        if cfg.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {cfg.num_classes}")
        if cfg.local_classes is not None and cfg.local_classes < 1:
            raise ValueError(f"local_classes must be None or >= 1, got {cfg.local_classes}")
        extra = 1 if cfg.use_instance_edge else 0
        self.encoder = Encoder(cfg.num_classes, extra, cfg.ngf, (cfg.height // factor, cfg.width // factor))
        self.global_generator = SPADEGlobalGenerator(cfg.ngf, cfg.num_classes, extra, cfg.spade_hidden,
                                                     cfg.param_free_norm, cfg.spectral_norm, cfg.num_upsampling_layers)
        groups = cfg.num_local_generators
        self.local_generator = self.classifier = self.weight_map = None
        if cfg.use_local:
            if cfg.reproduce_mask_26_27_bug and groups <= _BUG_CLASS_AFFECTED:
                raise ValueError(f"reproduce_mask_26_27_bug needs more than {_BUG_CLASS_AFFECTED} local "
                                 f"generators (Cityscapes), got {groups}")
            self.local_generator = LocalGenerator(cfg.ngf, groups, cfg.num_resblocks, cfg.local_kernel,
                                                  cfg.local_combine, cfg.local_depth, cfg.local_hidden)
            if cfg.use_class_loss:
                classified = groups if groups == cfg.num_classes else groups - 1   # "other" is not classified
                self.classifier = ClassClassifier(cfg.ngf, groups, classified)
            if cfg.use_weight_map:
                self.weight_map = WeightMapGenerator(cfg.ngf)

    def forward(self, labels: torch.Tensor, edge: torch.Tensor | None = None) -> GeneratorOutput:
        cfg = self.cfg
        if labels.dim() != 3 or labels.dtype.is_floating_point or tuple(labels.shape[-2:]) != (cfg.height, cfg.width):
            raise ValueError(f"labels must be an integer [B, {cfg.height}, {cfg.width}] tensor, got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        if cfg.use_instance_edge and edge is None:
            raise ValueError("cfg.use_instance_edge=True: pass the instance map (or edge) to the generator")
        extra = edge if cfg.use_instance_edge else None
        semantics = Semantics(labels, extra)
        x_encode, latent = self.encoder(labels, extra)
        global_image = self.global_generator(latent, semantics)
        return GeneratorOutput(**self.local_and_fusion(labels, x_encode, global_image))

    def local_and_fusion(self, labels: torch.Tensor, x_encode: torch.Tensor, global_image: torch.Tensor) -> dict:
        """The local branch, classifier and weight-map fusion on the encoder output and the global image: the
        output fields {final, global_image, local_image, per_class, weights, class_logits, class_present}
        (only final and global_image without a local branch)."""
        if self.local_generator is None:
            return dict(final=global_image, global_image=global_image)
        local_labels = local_label_map(labels, self.cfg)
        features, per_class, local_image = self.local_generator(x_encode, local_labels)
        local_image = local_image.to(global_image.dtype)
        class_logits = class_present = None
        if self.classifier is not None:
            class_logits, class_present = self.classifier(features, local_labels)
        weights = None
        if self.weight_map is not None:
            final, weights = weight_map_fusion(global_image, local_image, self.weight_map(x_encode))
        else:
            final = 0.5 * (global_image + local_image)   # fixed equal weights (S2-S4, see module docstring)
        return dict(final=final, global_image=global_image, local_image=local_image, per_class=per_class,
                    weights=weights, class_logits=class_logits, class_present=class_present)


def attach_gan_parts(model: nn.Module, cfg, generator: nn.Module, discriminator: nn.Module | None = None) -> None:
    """Sets ``model.cfg``, ``model.generator``, ``model.discriminator`` (default: the SPADE multiscale D; both
    initialised by ``cfg.init_type``) and the frozen ``model.vgg`` (None without the VGG loss), kept out of the
    model's state_dict (it is loaded from its weight file). Shared by the LGGAN, cross-view and ECGAN models."""
    model.cfg = cfg
    model.generator = generator
    model.discriminator = discriminator if discriminator is not None else MultiscaleDiscriminator(
        cfg.num_classes, cfg.use_instance_edge, cfg.ndf, cfg.num_d, cfg.n_layers_d, cfg.spectral_norm)
    init_weights(model.generator, cfg.init_type, cfg.init_gain)
    init_weights(model.discriminator, cfg.init_type, cfg.init_gain)
    model.vgg = VGG19Features.from_pretrained(cfg.vgg_weights) if cfg.use_vgg else None
    exclude_from_state_dict(model, "vgg")


class LGGANModel(nn.Module):
    """Generator, discriminator, frozen VGG19 and all LGGAN losses.

    Inputs everywhere: labels int64 [B,H,W] in [0, num_classes); image float [B,3,H,W] in [-1,1];
    instance [B,H,W] instance ids (required when cfg.use_instance_edge, ignored otherwise).

    ``state_dict`` leaves out the frozen VGG (loaded from its weight file at construction), and
    ``load_state_dict`` does not expect it.
    """

    def __init__(self, cfg: LGGANConfig):
        super().__init__()
        attach_gan_parts(self, cfg, LGGANGenerator(cfg))

    # ------------------------------------------------------------------------------------ helpers
    def generator_parameters(self):
        return self.generator.parameters()

    def discriminator_parameters(self):
        return self.discriminator.parameters()

    def edges(self, instance: torch.Tensor | None) -> torch.Tensor | None:
        """Instance-edge channel [B,1,H,W] float32 (None when the config has no instance channel)."""
        if not self.cfg.use_instance_edge:
            return None
        if instance is None:
            raise ValueError("cfg.use_instance_edge=True needs the instance map [B,H,W] (instance=...)")
        return instance_edges(instance)

    # ---------------------------------------------------------------------------------- forward
    def generate(self, labels: torch.Tensor, instance: torch.Tensor | None = None) -> GeneratorOutput:
        return self.generator(labels, self.edges(instance))

    def generator_loss(self, labels: torch.Tensor, image: torch.Tensor, instance: torch.Tensor | None = None):
        """Returns (total float32 scalar, {term: detached weighted scalar}, GeneratorOutput). See module docstring."""
        cfg = self.cfg
        edge = self.edges(instance)
        out = self.generator(labels, edge)
        fake_list = out.images()
        reps = len(fake_list)
        fakes = torch.cat(fake_list, dim=0)                     # [N*B,3,H,W], output-major
        terms: dict[str, torch.Tensor] = {}

        with _no_param_grads(self.discriminator):
            pred_fake = self.discriminator(labels, edge, fakes)
        with torch.no_grad():                                   # targets only: no graph for the real pass
            pred_real = self.discriminator(labels, edge, image)
        terms["g_gan"] = hinge_g_loss(pred_fake, reps)
        if cfg.lambda_feat > 0:
            terms["g_feat"] = feature_matching_loss(pred_fake, pred_real, reps) * cfg.lambda_feat
        terms.update(self.non_adversarial_terms(out, fakes, image, labels, reps))
        total = sum(terms.values())
        return total, {k: v.detach() for k, v in terms.items()}, out

    def non_adversarial_terms(self, out, fakes: torch.Tensor, image: torch.Tensor, labels: torch.Tensor,
                              reps: int) -> dict[str, torch.Tensor]:
        """The generator terms that do not involve D: "g_vgg", "g_l1" on the ``reps`` batched fake outputs
        ``fakes`` [reps*B,3,H,W] (real VGG features computed once), "g_local_l1", "g_class"; weighted."""
        cfg, terms = self.cfg, {}
        if self.vgg is not None and cfg.lambda_vgg > 0:
            fake_feats = self.vgg(fakes)
            with torch.no_grad():
                real_feats = self.vgg(image)
            terms["g_vgg"] = weighted_feature_l1(fake_feats, real_feats, VGG_LAYER_WEIGHTS, reps) * cfg.lambda_vgg
        if cfg.lambda_l1 > 0:
            terms["g_l1"] = image_l1(fakes, image, reps) * cfg.lambda_l1
        if out.per_class is not None and cfg.lambda_local_l1 > 0:
            terms["g_local_l1"] = self.local_l1(out.per_class, image, labels) * cfg.lambda_local_l1
        if out.class_logits is not None and cfg.lambda_class > 0:
            terms["g_class"] = class_cross_entropy(out.class_logits, out.class_present) * cfg.lambda_class
        return terms

    def local_l1(self, per_class: torch.Tensor, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 2: sum_i mean|image * M_i - I_i| over the G local generators (float32 scalar).

        With cfg.reproduce_mask_26_27_bug the target of class 27 uses class 26's mask (the public
        code's label_3_26 / label_3_27 mix-up): the correct class-27 term is swapped for that one."""
        local_labels = local_label_map(labels, self.cfg)
        image = image.to(per_class.dtype)
        loss = class_l1(per_class, image, local_labels, backend="auto")
        if self.cfg.reproduce_mask_26_27_bug:
            out_27 = per_class[:, _BUG_CLASS_AFFECTED]
            mask_26 = (local_labels == _BUG_CLASS_USED).unsqueeze(1).to(image.dtype)
            mask_27 = (local_labels == _BUG_CLASS_AFFECTED).unsqueeze(1).to(image.dtype)
            wrong = (image * mask_26 - out_27).abs().float().mean()
            right = (image * mask_27 - out_27).abs().float().mean()
            loss = loss + (wrong - right)
        return loss

    def discriminator_loss(self, labels: torch.Tensor, image: torch.Tensor, fake, instance: torch.Tensor | None = None):
        """D hinge loss. ``fake``: GeneratorOutput (its ``images()``) or a tensor [B,N,3,H,W]; detached here.

        Returns (total float32 scalar, {"d_fake", "d_real": detached scalars})."""
        edge = self.edges(instance)
        if isinstance(fake, GeneratorOutput):
            fake_list = fake.images()
            reps = len(fake_list)
            fakes = torch.cat([f.detach() for f in fake_list], dim=0)
        else:
            if fake.dim() != 5 or fake.shape[0] != labels.shape[0]:
                raise ValueError(f"fake must be a GeneratorOutput or a [B,N,3,H,W] tensor, got {tuple(fake.shape)}")
            reps = fake.shape[1]
            fakes = fake.detach().transpose(0, 1).reshape(reps * fake.shape[0], *fake.shape[2:])
        pred_fake = self.discriminator(labels, edge, fakes)
        pred_real = self.discriminator(labels, edge, image)
        d_fake = hinge_d_loss(pred_fake, reps, real=False)
        d_real = hinge_d_loss(pred_real, 1, real=True) * reps
        total = d_fake + d_real
        return total, {"d_fake": d_fake.detach(), "d_real": d_real.detach()}


@contextlib.contextmanager
def _no_param_grads(module: nn.Module):
    """Builds the graph without gradients for module's parameters (restored on exit). The generator
    step then skips D's weight gradients, which the public code computes and zeroes before the D step."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def exclude_from_state_dict(model: nn.Module, child: str) -> None:
    """Leaves the submodule ``model.<child>`` out of ``model.state_dict()`` and lets ``load_state_dict`` accept
    its absence (frozen parts loaded from their own files: the VGG19, an external segmenter)."""
    def drop(module, state_dict, prefix, local_metadata) -> None:
        for key in [k for k in state_dict if k.startswith(f"{prefix}{child}.")]:
            del state_dict[key]

    def ignore_missing(module, incompatible_keys) -> None:
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if not (k.startswith(f"{child}.") or f".{child}." in k)]

    model.register_state_dict_post_hook(drop)
    model.register_load_state_dict_post_hook(ignore_missing)
