"""Inference-only ECGAN generator (``ECGANInference``): the final image I'' (or I' without G_s) only.

Built from the trained ``ECGANGenerator`` with the pieces of ``inference.py`` (module docstring there):

- E (SPADE trunk): ``fc`` as a one-hot conv of the labels at the latent resolution (a strided slice),
  the residual blocks as ``InferenceSPADEBlock`` (one shared one-hot conv per block, batch norm folded
  into the modulation convs, instance norm in fp32), scheduled by ``run_spade_blocks``;
- G_i / G_e / G_t (edge and image branches): spectral norm folded into the convs. The edge branch is
  kept only where I'' or I' needs it (attention transfer G_t, or I_e' as an input of G_s); its tanh /
  sigmoid and the image-level tanh run in fp32;
- G_s (semantic preserving module, Eq. 2): its one-hot input conv as an ``InferenceOneHotConv`` over
  [instance edge?, F, I', I_e'?, I_g?]; the channel gate's average pool and sigmoid and the final tanh
  in fp32;
- class-specific generation (Eq. 6-7): kept only with ``class_image_fusion="semantic_preserving"``
  (then I_g feeds G_s); otherwise it serves the training loss only and is dropped. It runs as the
  model's own ``ClassSpecificGenerator`` call (per-class spectral norm folded into ``class_weight``;
  ``class_conv`` for one layer, ``class_stack`` for deeper stacks), so it stays whatever the model
  computes; its ``ops_backend`` follows the generator's (``_class_branch_backend``). In the deploy ONNX
  graph ``class_stack`` becomes a ``semgan::ClassConv`` node (layer 1) and grouped convolutions
  (``onnx_ops.translate_class_stack``);
- dropped as training-only: the contrastive projection head, the label generator G_l (not part of the
  generator), the per-class images I_gi, the edge map output, the style encoder.

forward(labels [B,H,W] int32/int64 in [0, N), edge [B,1,H,W] float | None) -> image [B,3,H,W] float32.
``edge`` (the instance-boundary channel) is required iff ``cfg.use_instance_edge``; H, W are dynamic
multiples of ``size_multiple`` = 2**n_up. The output is I'' in [-1, 1] with G_s, else I' (about
(-1.73, 1.73) with G_t, as the training generator). Multi-modal ECGAN (style code z) is not supported.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from semgan_fast.config import ECGANConfig
from semgan_fast.models.ecgan import ECGANGenerator

from .inference import (InferenceGenerator, InferenceOneHotConv, InferenceSPADEBlock, OpsSettings, _at_stride,
                        run_spade_blocks, spade_block_names)


def _class_branch_backend(backend: str) -> str:
    """The ``ClassSpecificGenerator.ops_backend`` for an inference ops backend: "decomposed" -> "reference"
    (the naive per-class stacks: standard ops); "cuda" -> "auto" (class_stack has no CUDA-extension
    backend; auto picks the CUDA extension for class_conv and Triton for class_stack); others as is."""
    return {"decomposed": "reference", "cuda": "auto"}.get(backend, backend)


def _one_hot_conv(module, ops: OpsSettings) -> InferenceOneHotConv:
    """InferenceOneHotConv with the (folded) weights and geometry of a ``OneHotConv2d``."""
    return InferenceOneHotConv(module.weight, module.bias, module.stride, module.padding, module.padding_mode, ops)


class ECGANInference(InferenceGenerator):
    """Inference-only ECGAN generator (module docstring). Dynamic batch and resolution; ``dtype`` for
    the convolutions and class ops (fp32 / fp16 / bf16), fp32 for the gates, tanh and the output."""

    model_type = "ecgan"

    def __init__(self, generator: ECGANGenerator, dtype: torch.dtype = torch.float32, ops_backend: str = "auto"):
        super().__init__()
        gen = self._adopt(generator, ECGANGenerator, ops_backend)
        cfg: ECGANConfig = self.cfg
        if cfg.multimodal:
            raise ValueError("multi-modal ECGAN needs a style code z at inference; not supported by the export")
        # E: GauGAN's fc on the latent-size labels, then the SPADE residual trunk
        self.fc = _one_hot_conv(gen.trunk.fc, self.ops)
        trunk = gen.trunk.blocks
        self.block_names = spade_block_names(trunk)
        self.blocks = nn.ModuleDict({n: InferenceSPADEBlock(getattr(trunk, n), self.ops) for n in self.block_names})
        self.extra_up = trunk.num_upsampling_layers in ("more", "most")
        # G_i, and G_e / G_t where the final image depends on them
        branches = gen.branches
        self.image_convs = branches.image_convs
        self.image_out = branches.image_out
        self.use_transfer = branches.edge_convs is not None and branches.use_transfer
        keep_edge = branches.edge_convs is not None and (self.use_transfer or gen.semantic_preserving is not None)
        self.edge_convs = branches.edge_convs if keep_edge else None
        self.edge_out = branches.edge_out if keep_edge else None
        # Class-specific generation: only when its image I_g feeds G_s
        self.class_generator = None
        if gen.class_generator is not None and cfg.class_image_fusion == "semantic_preserving":
            self.class_generator = gen.class_generator
            if not hasattr(self.class_generator, "ops_backend"):
                raise ValueError("ECGAN's ClassSpecificGenerator must expose ops_backend (the class-op backend)")
            self.class_generator.ops_backend = _class_branch_backend(self.ops.backend)
        # G_s
        self.refine = gen.semantic_preserving is not None
        if self.refine:
            sp = gen.semantic_preserving
            self.sp_in = _one_hot_conv(sp.conv_in, self.ops)
            self.sp_mid = sp.conv_mid
            self.sp_out = sp.conv_out
        self.requires_grad_(False)
        self.eval()
        self.to(dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    def set_ops_backend(self, backend: str) -> "ECGANInference":
        super().set_ops_backend(backend)
        if self.class_generator is not None:
            self.class_generator.ops_backend = _class_branch_backend(backend)
        return self

    def _edge_and_image(self, features: torch.Tensor):
        """G_i, G_e, G_t on F [B,C,H,W] (dtype) -> (I' fp32 [B,3,H,W], I_e' fp32 [B,3,H,W] | None)."""
        x_i = x_e = features
        for j, conv in enumerate(self.image_convs):
            x_i = conv(F.leaky_relu(x_i, 0.2))
            if self.edge_convs is not None:
                x_e = self.edge_convs[j](F.leaky_relu(x_e, 0.2))
                if self.use_transfer:
                    x_i = torch.sigmoid(x_e) * x_i + x_i                 # F_i^j <- sigma(F_e^j) F_i^j + F_i^j
        image = torch.tanh(self.image_out(F.leaky_relu(x_i, 0.2)).float())
        if self.edge_convs is None:
            return image, None
        edge = torch.tanh(self.edge_out(F.leaky_relu(x_e, 0.2)).float())
        if self.use_transfer:
            image = torch.sigmoid(edge) * image + image                  # Eq. 1 at the image level
        return image, edge

    def _semantic_preserving(self, labels: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """G_s (Eq. 2): labels [B,H,W], dense [B,E,H,W] (dtype) -> I'' fp32 [B,3,H,W]."""
        f_c = self.sp_in(labels, F.leaky_relu(dense, 0.2)).float()      # F_c: N class channels
        gamma = torch.sigmoid(f_c.mean(dim=(2, 3), keepdim=True))        # sigmoid(global average pool)
        f_c = (f_c * gamma + f_c).to(dense.dtype)
        x = self.sp_mid(F.leaky_relu(f_c, 0.2))
        return torch.tanh(self.sp_out(F.leaky_relu(x, 0.2)).float())

    def forward(self, labels: torch.Tensor, edge: torch.Tensor | None = None) -> torch.Tensor:
        extra = self._check_inputs(labels, edge)
        dtype = self.dtype
        lab, ext = _at_stride(labels, extra, self.size_multiple)           # nearest resize to the latent
        x = self.fc(lab, ext)
        features = run_spade_blocks(self.blocks, x, labels, extra, self.size_multiple, self.extra_up)
        image, edge_map = self._edge_and_image(features)
        if not self.refine:
            return image
        dense = [features, image.to(dtype)] + ([edge_map.to(dtype)] if edge_map is not None else [])
        if self.class_generator is not None:
            _, class_image = self.class_generator(features, labels)
            dense.append(class_image.to(dtype))
        if extra is not None:
            dense.insert(0, extra.to(dtype))
        return self._semantic_preserving(labels, torch.cat(dense, dim=1))
