"""Inference-only generators for export (ONNX, TensorRT) and fast eager inference.

LGGAN: ``LGGANInference`` (this file). ECGAN: ``ECGANInference`` (``ecgan_inference.py``), built from
the same pieces (folded SPADE blocks, one-hot convs, the spectral-norm folding below).

``build_inference_generator(source)`` turns a trained generator (``LGGANGenerator`` / ``ECGANGenerator``,
their models, a checkpoint dict or a checkpoint path) into an ``nn.Module`` that maps

    forward(labels [B,H,W] int32/int64, edge [B,1,H,W] float | None) -> image [B,3,H,W] float32

and differs from the training generator only in ways that are exact in real arithmetic:

- eval mode, no training heads: the classification module (class scores) is dropped; only the fused
  image I^C is produced (the local/global images and weights stay internal);
- spectral norm folded: each parametrised weight is replaced by W / sigma computed from the stored
  singular vectors (the value eval mode uses; no power iteration at inference); ECGAN's per-class
  spectral norm (``ClassLayer``: W_c / sigma_c per class) likewise;
- batch norm folded: SPADE's parameter-free batch norm (running statistics) is an affine map
  x * a + c per channel; with out = (x a + c)(1 + gamma) + beta it becomes out = x * G + B, where
  G = conv(actv, a W_gamma) + a (1 + b_gamma) and B = conv(actv, W_beta + c W_gamma) + c (1 + b_gamma)
  + b_beta, so the norm disappears into the modulation convs. Instance norms (encoder, local branch,
  and SPADE with param_free_norm="instance") have no running statistics and stay, computed in fp32;
- per SPADE block one ``onehot_conv`` with the concatenated shared-conv weights of its 2-3 SPADE
  layers (they read the same label map), and gamma/beta as one conv with 2C output channels;
- the encoder's nearest resize to the SPADE latent and the per-layer label resizes are strided slices
  (exact for the integer factors involved), so batch, height and width can be dynamic (H, W
  multiples of 2**n_up, n_up = 5/6/7 for normal/more/most).

No Python branching on tensor values: only on the configuration, so torch.export / ONNX export see one
graph for every input.

Precision (``dtype``): convolutions and the class ops run in ``dtype`` (fp32, fp16 or bf16); instance
norms, the final tanh, the weight-map softmax and the fusion run in fp32; the output is fp32.

Class ops (``ops_backend``, changeable with ``set_ops_backend``):
- "auto" / "cpu" / "triton" / "cuda": the fused ``semgan::class_conv`` / ``semgan::onehot_conv`` custom
  ops (what the deploy ONNX graph maps to custom-domain nodes, and TensorRT to plugins);
- "reference": the papers' naive formulation (K masked convolutions; one_hot + cat + conv);
- "decomposed": exact standard-op decompositions that ONNX runtimes execute (``class_conv_decomposed``:
  one-hot mask, masked copy, grouped conv with K groups; ``onehot_conv_decomposed``: Equal + Cast
  one-hot, concat, pad, conv). Used for the reference ONNX graph.
"""
from __future__ import annotations

import copy
import dataclasses
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from semgan_fast.config import ECGANConfig, ExperimentConfig, LGGANConfig, model_type_of
from semgan_fast.models.layers import OneHotConv2d
from semgan_fast.models.lggan import LGGANGenerator, LGGANModel
from semgan_fast.models.spade import SPADE, UPSAMPLING_LAYERS, SPADEResnetBlock
from semgan_fast.models.sync_norm import ParamFreeSyncBatchNorm
from semgan_fast.ops.class_conv import class_conv
from semgan_fast.ops.class_stack import class_stack
from semgan_fast.ops.onehot_conv import onehot_conv

OPS_BACKENDS = ("auto", "reference", "decomposed", "cpu", "triton", "cuda")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------
# Exact standard-op decompositions (reference ONNX graph)
# ----------------------------------------------------------------------------------------------

def _class_mask(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """[B,H,W] int -> [B,K,H,W] one-hot in dtype via Equal + Cast (labels outside [0, K) -> all zero)."""
    classes = torch.arange(num_classes, device=labels.device, dtype=labels.dtype).view(1, num_classes, 1, 1)
    return (labels.unsqueeze(1) == classes).to(dtype)


def class_conv_decomposed(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          padding_mode: str = "reflect", activation: str | None = None) -> torch.Tensor:
    """``class_conv`` as a masked grouped convolution (standard ops only, no gather).

    x [B,C,H,W], labels [B,H,W] int, weight [K,O,C,k,k], bias [K,O] | None -> [B,K,O,H,W] in x's dtype.
    Group c of the conv sees x * (labels == c), padded (reflect or zeros) like the reference: each
    group is exactly the reference's class-c convolution. Memory: a [B, K*C, H, W] masked copy.
    """
    num_classes, out_ch, _, kernel, _ = weight.shape
    pad = kernel // 2
    mask = _class_mask(labels, num_classes, x.dtype)                       # [B,K,H,W]
    masked = (x.unsqueeze(1) * mask.unsqueeze(2)).flatten(1, 2)             # [B,K*C,H,W]
    if pad:
        masked = F.pad(masked, (pad,) * 4, mode="reflect" if padding_mode == "reflect" else "constant")
    out = F.conv2d(masked, weight.flatten(0, 1), None if bias is None else bias.flatten(), groups=num_classes)
    if activation == "tanh":
        out = torch.tanh(out)
    return out.unflatten(1, (num_classes, out_ch))


def class_stack_decomposed(x: torch.Tensor, labels: torch.Tensor, weights: list[torch.Tensor],
                           biases: list[torch.Tensor], negative_slope: float = 0.2) -> torch.Tensor:
    """``class_stack`` (reflect padding, LeakyReLU between layers, tanh last) with standard ops only: layer 1 as
    ``class_conv_decomposed`` (class c's stack starts on x * (labels == c)), then every later layer one grouped
    conv (groups = K) over the per-class outputs, which are dense and independent per class. Exact.
    x [B,C,H,W], weights[l] [K,O_l,I_l,k_l,k_l], biases[l] [K,O_l] -> [B,K,O_L,H,W]."""
    h = class_conv_decomposed(x, labels, weights[0], biases[0], "reflect", None)
    for weight, bias in zip(weights[1:], biases[1:]):
        num_classes, pad = weight.shape[0], weight.shape[-1] // 2
        flat = F.pad(F.leaky_relu(h, negative_slope).flatten(1, 2), (pad,) * 4, mode="reflect")
        h = F.conv2d(flat, weight.flatten(0, 1), bias.flatten(), groups=num_classes).unflatten(1, (num_classes, -1))
    return torch.tanh(h)


def onehot_conv_decomposed(labels: torch.Tensor, extra: torch.Tensor | None, weight: torch.Tensor,
                           bias: torch.Tensor | None = None, padding: int = 0, padding_mode: str = "zeros",
                           stride: int = 1) -> torch.Tensor:
    """``onehot_conv`` as Equal + Cast one-hot, concat, pad, conv. Shapes as ``ops.onehot_conv``."""
    n_extra = 0 if extra is None else extra.shape[1]
    inp = _class_mask(labels, weight.shape[1] - n_extra, weight.dtype)
    if n_extra:
        inp = torch.cat([inp, extra.to(weight.dtype)], dim=1)
    if padding:
        inp = F.pad(inp, (padding,) * 4, mode="reflect" if padding_mode == "reflect" else "constant")
    return F.conv2d(inp, weight, bias, stride=stride)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------

class OpsSettings:
    """Which implementation the class ops of one inference generator use (shared by its submodules;
    one instance per generator, so generators do not affect each other)."""

    def __init__(self, backend: str = "auto"):
        self.backend = _check_backend(backend)


def _check_backend(backend: str) -> str:
    if backend not in OPS_BACKENDS:
        raise ValueError(f"ops_backend must be one of {OPS_BACKENDS}, got {backend!r}")
    return backend


class InferenceOneHotConv(nn.Module):
    """onehot_conv with fixed weights: forward(labels [B,H,W] int, extra [B,E,H,W] | None) -> [B,O,Ho,Wo]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
                 padding_mode: str, ops: OpsSettings):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.stride, self.padding, self.padding_mode = stride, padding, padding_mode
        self.ops = ops

    def forward(self, labels: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        if extra is not None:
            extra = extra.to(self.weight.dtype)
        if self.ops.backend == "decomposed":
            return onehot_conv_decomposed(labels, extra, self.weight, self.bias, self.padding, self.padding_mode,
                                          self.stride)
        return onehot_conv(labels, extra, self.weight, self.bias, padding=self.padding,
                           padding_mode=self.padding_mode, stride=self.stride, backend=self.ops.backend)


class InferenceClassConv(nn.Module):
    """class_conv with fixed weights: forward(x [B,C,H,W], labels [B,H,W]) -> [B,K,O,H,W]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, padding_mode: str, activation: str | None,
                 ops: OpsSettings):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.padding_mode, self.activation = padding_mode, activation
        self.ops = ops

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.ops.backend == "decomposed":
            return class_conv_decomposed(x, labels, self.weight, self.bias, self.padding_mode, self.activation)
        return class_conv(x, labels, self.weight, self.bias, padding_mode=self.padding_mode,
                          activation=self.activation, backend=self.ops.backend)


class InferenceClassStack(nn.Module):
    """class_stack (reflect, LeakyReLU 0.2, tanh) with fixed weights: forward(x [B,C,H,W], labels [B,H,W]) ->
    [B,K,O_L,H,W]. Deeper LGGAN class sub-generators (``local_depth`` > 1)."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor], ops: OpsSettings):
        super().__init__()
        self.depth = len(weights)
        for layer, (weight, bias) in enumerate(zip(weights, biases)):
            self.register_buffer(f"weight{layer}", weight.detach().clone())
            self.register_buffer(f"bias{layer}", bias.detach().clone())
        self.ops = ops

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights = [getattr(self, f"weight{layer}") for layer in range(self.depth)]
        biases = [getattr(self, f"bias{layer}") for layer in range(self.depth)]
        if self.ops.backend == "decomposed":
            return class_stack_decomposed(x, labels, weights, biases)
        backend = "auto" if self.ops.backend == "cuda" else self.ops.backend   # no CUDA C++ class_stack
        return class_stack(x, labels, weights, biases, padding_mode="reflect", negative_slope=0.2,
                           final_activation="tanh", backend=backend)


class InstanceNormFP32(nn.Module):
    """Affine-free instance norm computed in fp32, result cast back to the input dtype."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x.float(), eps=self.eps).to(x.dtype)


def _convert_norms(module: nn.Module) -> nn.Module:
    """Copy of a Sequential-style module with affine-free InstanceNorm2d -> InstanceNormFP32 and
    in-place ReLUs made out-of-place (export-friendly)."""
    module = copy.deepcopy(module)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.InstanceNorm2d):
            if child.affine or child.track_running_stats:
                raise ValueError(f"{name}: only affine-free instance norms without running stats are supported")
            setattr(module, name, InstanceNormFP32(child.eps))
        elif isinstance(child, nn.ReLU):
            setattr(module, name, nn.ReLU())
        else:
            setattr(module, name, _convert_norms(child))
    return module


def fold_spectral_norm(module: nn.Module) -> nn.Module:
    """In place: every parametrised ``weight`` becomes a plain parameter holding its eval-mode value
    (spectral norm: W / sigma from the stored singular vectors, no power iteration). Returns module.

    Per-class spectral norm (ECGAN's ``ClassLayer``: ``class_weight`` [K,O,I,k,k] with
    ``use_spectral_norm`` and ``effective_weight()``) is folded the same way: ``class_weight`` becomes
    the effective weight W_c / sigma_c (eval mode: stored u_c, v_c), the flag is cleared and the
    singular-vector buffers are dropped, so the layer's own forward uses the folded weight as is.

    Call it on a deep copy. ``parametrize.remove_parametrizations`` is not used: it deletes the
    property from the generated ``Parametrized*`` class, which a deep copy shares with the original."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for sub in list(module.modules()):
            if parametrize.is_parametrized(sub, "weight"):
                if len(sub.parametrizations) != 1:
                    raise ValueError(f"only a parametrised 'weight' is supported, got {list(sub.parametrizations)}")
                weight = sub.weight.detach().clone()
                sub.__class__ = parametrize.type_before_parametrizations(sub)
                del sub._modules["parametrizations"]
                sub.weight = nn.Parameter(weight, requires_grad=False)
            elif _has_per_class_spectral_norm(sub):
                weight = sub.effective_weight().detach().clone()
                sub.class_weight = nn.Parameter(weight, requires_grad=False)
                sub.use_spectral_norm = False
                for name in ("sn_u", "sn_v"):
                    sub._buffers.pop(name, None)
    module.train(was_training)
    return module


def _has_per_class_spectral_norm(module: nn.Module) -> bool:
    return (getattr(module, "use_spectral_norm", False) is True and callable(getattr(module, "effective_weight", None))
            and isinstance(getattr(module, "class_weight", None), nn.Parameter))


def _affine_of_norm(norm: nn.Module, channels: int):
    """(a, c) with norm(x) = x * a + c per channel (batch norms in eval mode), or None (instance norm)."""
    if isinstance(norm, (nn.BatchNorm2d, ParamFreeSyncBatchNorm)):
        if getattr(norm, "affine", False):
            raise ValueError("SPADE's parameter-free norm must not have affine parameters")
        mean = norm.running_mean.double()
        var = norm.running_var.double()
        a = torch.rsqrt(var + norm.eps)
        return a, -mean * a
    if isinstance(norm, nn.InstanceNorm2d):
        return None
    raise ValueError(f"unsupported SPADE norm {type(norm).__name__}")


class InferenceSPADE(nn.Module):
    """out = n(x) * G + B with [G, B] = conv(actv) (one conv, 2C channels); n = identity when a batch
    norm was folded into G, B, else fp32 instance norm. actv: the block's shared one-hot activations."""

    def __init__(self, spade: SPADE):
        super().__init__()
        channels = spade.mlp_gamma.out_channels
        wg, bg = spade.mlp_gamma.weight.double(), spade.mlp_gamma.bias.double()
        wb, bb = spade.mlp_beta.weight.double(), spade.mlp_beta.bias.double()
        affine = _affine_of_norm(spade.param_free_norm, channels)
        if affine is None:
            self.norm = InstanceNormFP32(spade.param_free_norm.eps)
            w_g, b_g, w_b, b_b = wg, bg + 1, wb, bb
        else:
            self.norm = nn.Identity()
            a, c = affine
            w_g, b_g = wg * a.view(-1, 1, 1, 1), a * (1 + bg)
            w_b, b_b = wb + c.view(-1, 1, 1, 1) * wg, c * (1 + bg) + bb
        dtype = spade.mlp_gamma.weight.dtype
        pad = spade.mlp_gamma.padding
        self.channels = channels
        self.gamma_beta = nn.Conv2d(wg.shape[1], 2 * channels, wg.shape[-1], padding=pad)
        with torch.no_grad():
            self.gamma_beta.weight.copy_(torch.cat([w_g, w_b]).to(dtype))
            self.gamma_beta.bias.copy_(torch.cat([b_g, b_b]).to(dtype))
        self.gamma_beta.requires_grad_(False)

    def forward(self, x: torch.Tensor, actv: torch.Tensor) -> torch.Tensor:
        gb = self.gamma_beta(actv)
        return self.norm(x) * gb[:, :self.channels] + gb[:, self.channels:]


class InferenceSPADEBlock(nn.Module):
    """SPADE residual block with one shared onehot_conv for its SPADE layers (norm_0, norm_1[, norm_s])."""

    def __init__(self, block: SPADEResnetBlock, ops: OpsSettings):
        super().__init__()
        spades = [block.norm_0, block.norm_1] + ([block.norm_s] if block.learned_shortcut else [])
        shared = [s.mlp_shared for s in spades]
        first: OneHotConv2d = shared[0]
        for s in shared:
            if (s.kernel_size, s.padding, s.stride, s.padding_mode, s.num_classes, s.extra_channels) != \
                    (first.kernel_size, first.padding, first.stride, first.padding_mode, first.num_classes,
                     first.extra_channels):
                raise ValueError("the SPADE layers of one block must share the one-hot conv geometry")
        self.hidden = first.out_channels
        weight = torch.cat([s.weight for s in shared])
        bias = torch.cat([s.bias for s in shared]) if first.bias is not None else None
        self.shared = InferenceOneHotConv(weight, bias, first.stride, first.padding, first.padding_mode, ops)
        self.spade_0 = InferenceSPADE(block.norm_0)
        self.spade_1 = InferenceSPADE(block.norm_1)
        self.learned_shortcut = block.learned_shortcut
        self.conv_0 = copy.deepcopy(block.conv_0)
        self.conv_1 = copy.deepcopy(block.conv_1)
        if self.learned_shortcut:
            self.spade_s = InferenceSPADE(block.norm_s)
            self.conv_s = copy.deepcopy(block.conv_s)

    def forward(self, x: torch.Tensor, labels: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        actv = F.relu(self.shared(labels, extra))
        hid = self.hidden
        dx = self.conv_0(F.leaky_relu(self.spade_0(x, actv[:, :hid]), 0.2))
        dx = self.conv_1(F.leaky_relu(self.spade_1(dx, actv[:, hid:2 * hid]), 0.2))
        x_s = self.conv_s(self.spade_s(x, actv[:, 2 * hid:])) if self.learned_shortcut else x
        return x_s + dx


def _at_stride(labels: torch.Tensor, extra: torch.Tensor | None, stride: int):
    """Nearest downsample by an integer factor = strided slice (F.interpolate "nearest" semantics)."""
    if stride == 1:
        return labels, extra
    return labels[:, ::stride, ::stride], (None if extra is None else extra[:, :, ::stride, ::stride])


def spade_block_names(global_generator) -> list[str]:
    """Names of a ``SPADEGlobalGenerator``'s residual blocks in forward order."""
    names = ["head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3"]
    if global_generator.num_upsampling_layers == "most":
        names.append("up_4")
    return names


def run_spade_blocks(blocks: nn.ModuleDict, x: torch.Tensor, labels: torch.Tensor, extra: torch.Tensor | None,
                     size_multiple: int, extra_up: bool) -> torch.Tensor:
    """The SPADE trunk schedule (``SPADEGlobalGenerator.forward`` without its output conv) on
    ``InferenceSPADEBlock``s: x [B,16 ngf,H/m,W/m] at the latent (m = size_multiple) -> [B,C,H,W].
    Each block reads the labels (and extra) at its resolution, as a strided slice."""
    stride = size_multiple

    def block(name, x):
        lab, ext = _at_stride(labels, extra, stride)
        return blocks[name](x, lab, ext)

    x = block("head_0", x)
    x, stride = _up(x), stride // 2
    x = block("G_middle_0", x)
    if extra_up:
        x, stride = _up(x), stride // 2
    x = block("G_middle_1", x)
    for name in ("up_0", "up_1", "up_2", "up_3") + (("up_4",) if "up_4" in blocks else ()):
        x, stride = _up(x), stride // 2
        x = block(name, x)
    return x


class InferenceGenerator(nn.Module):
    """Shared interface of the inference generators: inputs, example inputs, input checks and the
    class-op backend. Subclasses set ``model_type`` (as ``ExperimentConfig.model_type``), ``cfg``, ``ops``,
    ``size_multiple``, ``num_classes`` and ``use_edge``."""

    def _adopt(self, generator: nn.Module, expected: type, ops_backend: str) -> nn.Module:
        """Checks the generator type, sets ``cfg``, ``ops``, ``n_up``, ``size_multiple``, ``num_classes`` and
        ``use_edge``; returns an fp32 eval-mode copy with spectral norm folded into the weights."""
        if not isinstance(generator, expected):
            raise ValueError(f"generator must be an {expected.__name__}, got {type(generator).__name__}")
        self.cfg = generator.cfg
        self.ops = OpsSettings(ops_backend)
        self.n_up = UPSAMPLING_LAYERS[self.cfg.num_upsampling_layers]
        self.size_multiple = 2 ** self.n_up
        self.num_classes = self.cfg.num_classes
        self.use_edge = self.cfg.use_instance_edge
        return fold_spectral_norm(copy.deepcopy(generator).float().eval())

    def set_ops_backend(self, backend: str) -> "InferenceGenerator":
        self.ops.backend = _check_backend(backend)
        return self

    def input_names(self) -> list[str]:
        return ["labels", "edge"] if self.use_edge else ["labels"]

    def example_inputs(self, batch: int = 1, height: int | None = None, width: int | None = None,
                       device="cpu", seed: int = 0) -> tuple:
        """Random (labels int32 [B,H,W], edge float32 [B,1,H,W] | None) of the given size (default: cfg's)."""
        gen = torch.Generator().manual_seed(seed)
        h, w = height or self.cfg.height, width or self.cfg.width
        labels = torch.randint(0, self.num_classes, (batch, h, w), generator=gen, dtype=torch.int32)
        edge = (torch.rand(batch, 1, h, w, generator=gen) < 0.1).float() if self.use_edge else None
        return labels.to(device), (None if edge is None else edge.to(device))

    def _check_inputs(self, labels: torch.Tensor, edge: torch.Tensor | None) -> torch.Tensor | None:
        """Validates labels / edge (shapes and dtypes only: no value checks); returns the extra channel."""
        if labels.dim() != 3 or labels.dtype.is_floating_point:
            raise ValueError(f"labels must be an integer [B, H, W] tensor, got {labels.dtype} {tuple(labels.shape)}")
        height, width = labels.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(f"labels height and width must be multiples of {self.size_multiple}, "
                             f"got {height}x{width}")
        if self.use_edge and edge is None:
            raise ValueError("this generator uses the instance-edge channel: pass edge [B,1,H,W]")
        return edge if self.use_edge else None


# ----------------------------------------------------------------------------------------------
# LGGAN
# ----------------------------------------------------------------------------------------------

class LGGANInference(InferenceGenerator):
    """Inference-only LGGAN generator (see module docstring). Dynamic batch and resolution.

    forward(labels [B,H,W] int32/int64 in [0, K), edge [B,1,H,W] float | None) -> [B,3,H,W] float32.
    ``edge`` is required iff ``cfg.use_instance_edge``. H, W must be multiples of ``self.size_multiple``.
    """

    model_type = "lggan"

    def __init__(self, generator: LGGANGenerator, dtype: torch.dtype = torch.float32, ops_backend: str = "auto"):
        super().__init__()
        gen = self._adopt(generator, LGGANGenerator, ops_backend)
        cfg: LGGANConfig = self.cfg
        # Encoder
        enc = gen.encoder
        conv1 = enc.conv1
        self.enc_conv1 = InferenceOneHotConv(conv1.weight, conv1.bias, conv1.stride, conv1.padding,
                                             conv1.padding_mode, self.ops)
        self.enc_norm1 = InstanceNormFP32(enc.norm1.eps)
        self.enc_down = nn.ModuleList([_convert_norms(d) for d in enc.down])
        self.latent_stride = 2 ** (self.n_up - len(enc.down))   # encoder output H/16 -> latent H/2^n_up
        # Global generator
        g = gen.global_generator
        self.block_names = spade_block_names(g)
        self.blocks = nn.ModuleDict({n: InferenceSPADEBlock(getattr(g, n), self.ops) for n in self.block_names})
        self.conv_img = copy.deepcopy(g.conv_img)
        self.extra_up = g.num_upsampling_layers in ("more", "most")
        # Local generator and weight map (the classifier is a training head: dropped)
        self.use_local = gen.local_generator is not None
        if self.use_local:
            loc = gen.local_generator
            self.local_trunk = _convert_norms(loc.trunk)
            self.local_up = _convert_norms(loc.up)
            weights, biases = loc.class_parameters()
            self.class_conv = (InferenceClassConv(weights[0], biases[0], "reflect", "tanh", self.ops) if len(weights) == 1
                               else InferenceClassStack(weights, biases, self.ops))
            self.combine = loc.combine
            self.fuse = copy.deepcopy(loc.fuse) if loc.fuse is not None else None
            self.local_classes = (cfg.local_classes if cfg.local_classes is not None
                                  and cfg.local_classes < cfg.num_classes else None)
            self.weight_map = None
            if gen.weight_map is not None:
                self.weight_map = nn.ModuleDict({"up": _convert_norms(gen.weight_map.up),
                                                 "out": copy.deepcopy(gen.weight_map.out)})
        self.requires_grad_(False)
        self.eval()
        self.to(dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_img.weight.dtype

    def forward(self, labels: torch.Tensor, edge: torch.Tensor | None = None) -> torch.Tensor:
        extra = self._check_inputs(labels, edge)
        # Encoder (E)
        x = F.relu(self.enc_norm1(self.enc_conv1(labels, extra)))
        x = self.enc_down[0](x)
        x_encode = self.enc_down[1](x)
        x = self.enc_down[3](self.enc_down[2](x_encode))
        x = x[:, :, ::self.latent_stride, ::self.latent_stride]     # nearest resize to the latent size
        # Global generator (G_g): the label stride halves with every 2x upsampling
        x = run_spade_blocks(self.blocks, x, labels, extra, self.size_multiple, self.extra_up)
        global_image = torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)).float())
        if not self.use_local:
            return global_image
        # Local generator (G_l)
        local_labels = labels if self.local_classes is None else labels.clamp_max(self.local_classes)
        features = self.local_up(self.local_trunk(x_encode))
        per_class = self.class_conv(features, local_labels)                      # [B,G,3,H,W]
        if self.combine == "add":
            local_image = per_class.float().sum(dim=1)
        else:
            local_image = torch.tanh(self.fuse(per_class.flatten(1, 2)).float())
        if self.weight_map is None:
            return 0.5 * (global_image + local_image)
        logits = self.weight_map["out"](self.weight_map["up"](x_encode)).float()
        weights = torch.softmax(logits, dim=1)
        return weights[:, 0:1] * local_image + weights[:, 1:2] * global_image


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


# ----------------------------------------------------------------------------------------------
# Construction from models and checkpoints (generic entry point)
# ----------------------------------------------------------------------------------------------

# Model types of ``ExperimentConfig.model_type`` that have an inference generator.
EXPORTABLE_MODEL_TYPES = ("lggan", "ecgan")


def _check_exportable(model_type: str) -> None:
    if model_type not in EXPORTABLE_MODEL_TYPES:
        raise ValueError(f"model type {model_type!r} has no inference export (supported: "
                         f"{', '.join(EXPORTABLE_MODEL_TYPES)})")


def generator_from_checkpoint(state_or_path, map_location="cpu") -> nn.Module:
    """The generator (eval mode) of a semgan_fast checkpoint (path or loaded dict) of an exportable
    model type (LGGAN, ECGAN); ValueError naming the type otherwise."""
    from semgan_fast.models import build_inference_model
    from semgan_fast.train.checkpoint import load_checkpoint

    state = load_checkpoint(state_or_path, map_location) if isinstance(state_or_path, (str, os.PathLike)) \
        else state_or_path
    _check_exportable(state["config"].get("model_type") or "lggan")
    cfg = ExperimentConfig.from_dict(state["config"])
    return build_inference_model(cfg, state["model"]).generator.eval()


def build_inference_generator(source, dtype: torch.dtype | str = torch.float32, ops_backend: str = "auto") -> nn.Module:
    """Inference-only generator from an LGGAN / ECGAN generator or model, a checkpoint dict or a
    checkpoint path: ``LGGANInference`` or ``ECGANInference``.

    dtype: torch dtype or "fp32" / "fp16" / "bf16". ops_backend: see module docstring.
    """
    from semgan_fast.models.ecgan import ECGANGenerator, ECGANModel

    from .ecgan_inference import ECGANInference

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if isinstance(source, (str, os.PathLike, dict)):
        source = generator_from_checkpoint(source)
    if isinstance(source, (LGGANModel, ECGANModel)):
        source = source.generator
    if isinstance(getattr(source, "cfg", None), (LGGANConfig, ECGANConfig)):
        _check_exportable(model_type_of(source.cfg))    # e.g. CrossViewGenerator is an LGGANGenerator subclass
    if isinstance(source, LGGANGenerator):
        return LGGANInference(source, dtype=dtype, ops_backend=ops_backend)
    if isinstance(source, ECGANGenerator):
        return ECGANInference(source, dtype=dtype, ops_backend=ops_backend)
    raise ValueError(f"no inference builder for {type(source).__name__} (supported: LGGANGenerator, LGGANModel, "
                     "ECGANGenerator, ECGANModel, and checkpoints of model type lggan / ecgan)")


def random_generator(preset_name: str = "synthetic", seed: int = 0, **overrides) -> nn.Module:
    """A randomly initialised generator (eval mode) of a preset: LGGAN presets give an ``LGGANGenerator``,
    ECGAN presets (``ecgan_*``) an ``ECGANGenerator`` (tests, benchmarks, export smoke runs).
    ``overrides`` replace model-config fields (e.g. ngf=4). Batch-norm running statistics are set to
    non-trivial values so that folding them is exercised."""
    from semgan_fast.config import preset
    from semgan_fast.models import build_inference_model

    base = preset(preset_name).model
    _check_exportable(model_type_of(base))
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{type(base).__name__} has no field(s) {unknown} (preset {preset_name!r})")
    overrides.setdefault("init_type", "default")   # Xavier gain 0.02 gives near-zero images: weak tests
    cfg = dataclasses.replace(base, use_vgg=False, **overrides)
    torch.manual_seed(seed)
    gen = build_inference_model(cfg).generator
    with torch.no_grad():
        for mod in gen.modules():
            if isinstance(mod, (nn.BatchNorm2d, ParamFreeSyncBatchNorm)):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return gen.eval()
