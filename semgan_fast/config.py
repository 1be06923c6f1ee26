"""Typed configuration: model, data and training settings, with presets for the papers' setups.

Presets (``PRESETS``):
- ``cityscapes``: 256x512, 35 label classes + instance-edge channel, all 35 classes local.
- ``ade20k``: 256x256, 151 label channels (150 + unknown), 51 dedicated local generators plus one
  "other" generator for the remaining classes (52 in all), no instance channel.
- ``coco_stuff``: 256x256, 182 classes + "unlabeled" = 183 label channels + instance edge.
- ``synthetic``: the embedded procedural dataset, small enough for a CPU run in minutes.

ECGAN presets (``ECGANConfig``, model_type "ecgan"): ``ecgan_cityscapes``, ``ecgan_ade20k``,
``ecgan_coco_stuff``, ``ecgan_synthetic``. LGGAN cross-view presets (``CrossViewConfig``, model_type
"lggan-crossview"): ``crossview_dayton`` (256x256), ``crossview_dayton64`` (64x64), ``crossview_cvusa``,
``crossview_synthetic``. ``preset_for(model_type, name)`` maps a short name ("synthetic", "cityscapes",
"dayton", ...) to the model's preset.

Ablation rows S1-S5 of LGGAN Table 3 (right) are ``LGGANConfig.ablation("S1")`` etc.; the rows of ECGAN
Table 3 are ``ECGANConfig.ablation("E+G_i")`` ... ``ablation("E+G_i+G_e+G_t+G_s+G_l+G_c")`` (short names
"Gi", "Ge", "Gt", "Gs", "Gl", "Gc" = the row ending with that module).

``ExperimentConfig.model_type`` ("lggan" | "ecgan" | "lggan-crossview") selects the model class
(``semgan_fast.models.build_model``); dicts without it (configs written before it existed) load as LGGAN.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Union


@dataclass
class LGGANConfig:
    """LGGAN generator, discriminator and loss settings."""
    num_classes: int = 35                 # label channels K (one-hot width of the semantic map)
    use_instance_edge: bool = True        # append the instance-boundary channel to the one-hot map
    height: int = 256
    width: int = 512
    ngf: int = 64                         # generator base width: encoder conv1 / local features
    spade_hidden: int = 128               # SPADE modulation hidden width
    num_upsampling_layers: Literal["normal", "more", "most"] = "more"
    param_free_norm: Literal["batch", "syncbatch", "instance"] = "syncbatch"
    spectral_norm: bool = True            # spectral norm on the SPADE blocks' and D's convs
    num_resblocks: int = 9                # local branch trunk
    local_kernel: int = 7                 # class sub-generator conv size
    # Depth of each class sub-generator (LGGAN: 1 conv, ngf -> 3). Deeper: local_kernel conv ngf -> local_hidden,
    # then 3x3 convs (LeakyReLU 0.2 between, tanh last) down to 3 channels, all classes via ops.class_stack.
    local_depth: int = 1
    local_hidden: int = 16
    # Classes >= local_classes share one "other" generator (ADE20K: 51 -> 52 generators). None: all local.
    local_classes: int | None = None
    # Ablation switches (LGGAN Table 3 right): S1 global only; S2 + local (add, Eq. 3);
    # S3 + local (conv, Eq. 4); S4 + classification loss; S5 + weight map (full model).
    use_local: bool = True
    local_combine: Literal["add", "conv"] = "conv"
    use_class_loss: bool = True
    use_weight_map: bool = True
    # Discriminator
    ndf: int = 64
    num_d: int = 2
    n_layers_d: int = 4
    # Losses
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    lambda_local_l1: float = 1.0
    lambda_class: float = 1.0
    lambda_l1: float = 0.0                # image L1 per output (public --no_l1_loss: off in both scripts)
    use_vgg: bool = True
    vgg_weights: str | None = None        # path to torchvision VGG19 weights; None: torchvision cache
    # Weight init: "xavier" = the public code's xavier_normal(gain=init_gain) on conv/linear weights,
    # zero biases; "default" = PyTorch's initialisation.
    init_type: Literal["xavier", "default"] = "xavier"
    init_gain: float = 0.02
    # Reproduce the public code's bug that compares class 27's output with class 26's mask.
    reproduce_mask_26_27_bug: bool = False

    @property
    def num_local_generators(self) -> int:
        if not self.use_local:
            return 0
        if self.local_classes is None or self.local_classes >= self.num_classes:
            return self.num_classes
        return self.local_classes + 1

    @property
    def input_channels(self) -> int:
        return self.num_classes + (1 if self.use_instance_edge else 0)

    def ablation(self, stage: str) -> "LGGANConfig":
        """Copy of this config switched to ablation row S1..S5."""
        rows = {
            "S1": dict(use_local=False, use_class_loss=False, use_weight_map=False),
            "S2": dict(use_local=True, local_combine="add", use_class_loss=False, use_weight_map=False),
            "S3": dict(use_local=True, local_combine="conv", use_class_loss=False, use_weight_map=False),
            "S4": dict(use_local=True, local_combine="conv", use_class_loss=True, use_weight_map=False),
            "S5": dict(use_local=True, local_combine="conv", use_class_loss=True, use_weight_map=True),
        }
        if stage not in rows:
            raise ValueError(f"stage must be one of {sorted(rows)}, got {stage!r}")
        return dataclasses.replace(self, **rows[stage])


@dataclass
class ECGANConfig:
    """ECGAN (Tang et al., ICLR 2023) generator, discriminator and loss settings.

    Paper-fixed values: n = 3 branch layers, C = 64 (= ngf), 3x3 convs with padding 1, lambda = 2 (Eq. 9,
    10), lambda_c, lambda_s, lambda_l, lambda_f, lambda_p = 1, 1, 1, 10, 10, Adam betas (0, 0.999)
    (``TrainConfig`` of the ECGAN presets), spectral norm in G and D, KL weight 0.05 (multi-modal).
    Everything else is our choice; see ``semgan_fast/models/ecgan.py`` for the list.
    """
    num_classes: int = 35
    use_instance_edge: bool = True        # SPADE's instance-boundary channel next to the one-hot map
    height: int = 256
    width: int = 512
    ngf: int = 64                         # C: encoder (SPADE trunk) output width
    spade_hidden: int = 128
    num_upsampling_layers: Literal["normal", "more", "most"] = "more"
    param_free_norm: Literal["batch", "syncbatch", "instance"] = "syncbatch"
    spectral_norm: bool = True            # on every generator layer outside the SPADE trunk, and in D
    branch_layers: int = 3                # n: convs in G_e and G_i before their output conv
    # Ablation switches (ECGAN Table 3): E+G_i; +G_e; +G_t; +G_s; +G_l; +G_c (full model).
    use_edge: bool = True                 # G_e (and the edge half of the multi-modality D)
    use_transfer: bool = True             # G_t (Eq. 1 at every feature level and at the image level)
    use_semantic_preserving: bool = True  # G_s (Eq. 2) -> refined image I''
    use_label_generator: bool = True      # G_l + similarity loss (Eq. 3)
    use_contrastive: bool = True          # G_c: pixel-wise contrastive loss (Eq. 4-5) ...
    use_class_specific: bool = True       # ... and class-specific pixel generation (Eq. 6-7), the G_c row
    # Class-specific pixel generation: per-class stacks over F * M_i (first layer class_conv).
    class_layers: int = 2
    class_hidden: int = 16
    class_kernel: int = 3
    class_image_fusion: Literal["none", "semantic_preserving"] = "none"
    # Pixel-wise contrastive learning (ContrastiveSeg defaults unless noted).
    proj_dim: int = 256
    contrast_stride: int = 8
    temperature: float = 0.1
    base_temperature: float = 0.07
    max_samples: int = 1024
    max_views: int = 100
    memory_bank: bool = False
    memory_size: int = 5000
    memory_pixels_per_image: int = 10
    memory_kind: Literal["pixel", "segment", "both"] = "pixel"
    # Label generator G_l: "builtin" (SmallSegNet) or a "module:factory" / "file.py:factory" spec.
    segmenter: str = "builtin"
    segmenter_checkpoint: str | None = None
    segmenter_mode: Literal["train", "frozen"] = "train"   # train alongside on real images (D step) or frozen
    segmenter_width: int = 32
    # Similarity loss on the [::s, ::s] pixel sub-grid (1 = exact Eq. 3 over all (H*W)^2 pixel pairs: meant for
    # the GPU kernel; the CPU backend is practical only for small grids, hence 4 in the synthetic preset).
    sim_stride: int = 1
    # Multi-modal synthesis (GauGAN style encoder + KL).
    multimodal: bool = False
    z_dim: int = 256
    # Discriminator
    ndf: int = 64
    num_d: int = 2
    n_layers_d: int = 4
    # Loss weights (Eq. 9-10 and ours).
    lambda_refine: float = 2.0            # lambda of Eq. 9 / 10 (I'' terms)
    lambda_gan: float = 1.0               # lambda_c
    lambda_sim: float = 1.0               # lambda_s
    lambda_class_l1: float = 1.0          # lambda_l (Eq. 6)
    lambda_feat: float = 10.0             # lambda_f
    lambda_vgg: float = 10.0              # lambda_p
    lambda_contrast: float = 1.0          # not given by the paper
    lambda_kld: float = 0.05
    lambda_seg: float = 1.0               # cross-entropy of the trained-alongside segmenter (D step)
    use_vgg: bool = True
    vgg_weights: str | None = None
    init_type: Literal["xavier", "default"] = "xavier"
    init_gain: float = 0.02
    # Ground-truth edges (Canny, public canny.m pipeline)
    canny_low: float = 0.075
    canny_high: float = 0.175
    canny_hysteresis: Literal["public", "connected"] = "public"

    ABLATION_ROWS: ClassVar[tuple[str, ...]] = ("E+G_i", "E+G_i+G_e", "E+G_i+G_e+G_t", "E+G_i+G_e+G_t+G_s", "E+G_i+G_e+G_t+G_s+G_l",
                     "E+G_i+G_e+G_t+G_s+G_l+G_c")
    ABLATION_SHORT: ClassVar[tuple[str, ...]] = ("Gi", "Ge", "Gt", "Gs", "Gl", "Gc")

    @property
    def input_channels(self) -> int:
        return self.num_classes + (1 if self.use_instance_edge else 0)

    def ablation(self, row: str) -> "ECGANConfig":
        """Copy of this config switched to a row of ECGAN Table 3 (full name or short name)."""
        names = list(self.ABLATION_ROWS)
        if row in self.ABLATION_SHORT:
            level = self.ABLATION_SHORT.index(row)
        elif row.replace(" ", "") in names:
            level = names.index(row.replace(" ", ""))
        else:
            raise ValueError(f"ECGAN ablation row must be one of {names} or {list(self.ABLATION_SHORT)}, got {row!r}")
        switches = ("use_edge", "use_transfer", "use_semantic_preserving", "use_label_generator", "use_contrastive")
        values = {name: level > i for i, name in enumerate(switches)}
        values["use_class_specific"] = values["use_contrastive"]
        return dataclasses.replace(self, **values)


@dataclass
class CrossViewConfig(LGGANConfig):
    """LGGAN for cross-view image translation (CVPR 2020 Sec. 3.1, 4.1): the encoder reads the source
    view I_a (``source_channels``) concatenated with the target semantic map S_g; global, local and
    weight-map branches as in ``LGGANConfig``; dual discriminator D_s (semantics) + D_i (source image).

    Defaults: 7 classes = the six label values of the public cross-view data (10, 20, ..., 60) + "other";
    256x256; image L1 (per output) and local L1 weights 100 as in the public cross-view code."""
    num_classes: int = 7
    use_instance_edge: bool = False
    height: int = 256
    width: int = 256
    num_upsampling_layers: Literal["normal", "more", "most"] = "normal"
    source_channels: int = 3
    use_image_discriminator: bool = True  # D_i (Eq. 9); False: D_s only
    lambda_l1: float = 100.0
    lambda_local_l1: float = 100.0

    @property
    def input_channels(self) -> int:
        """Encoder input: one-hot S_g + the source view."""
        return self.num_classes + self.source_channels


@dataclass
class DataConfig:
    dataset: Literal["synthetic", "cityscapes", "ade20k", "coco_stuff", "dayton", "cvusa"] = "synthetic"
    root: str | None = None               # dataset root (unused for synthetic)
    num_samples: int = 64                 # synthetic: number of distinct samples
    seed: int = 0                         # synthetic: generator seed
    flip: bool = True                     # random horizontal flip (consistent across label and image)
    num_workers: int = 0
    skip_bad: bool = False                # skip unreadable samples with a warning instead of stopping
    edge_root: str | None = None          # precomputed edge maps (`semgan edges` output) for real data sets
    direction: Literal["a2g", "g2a"] = "a2g"   # cross-view data sets: which panel is the source view


@dataclass
class TrainConfig:
    batch_size: int = 4
    iterations: int = 200
    lr_g: float = 1e-4                    # TTUR: G 1e-4, D 4e-4, Adam betas (0, 0.9)
    lr_d: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.9
    adam_eps: float = 1e-8
    decay_start: int | None = None        # iteration at which linear LR decay to 0 starts; None: never
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/default"
    checkpoint_every: int = 100
    sample_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10                   # host synchronisation happens only on logged steps
    # Speed: "bf16" autocast (A100/H100), "fp16" autocast + GradScaler (V100), or "fp32". "fp64": model and
    # batches in float64, for numerical checks only (e.g. DDP vs single-process equivalence over several
    # steps: fp32 rounding noise would be amplified by Adam with beta1 = 0); never for real training.
    precision: Literal["fp32", "bf16", "fp16", "fp64"] = "fp32"
    channels_last: bool = False
    compile: bool = False                 # torch.compile the generator and the discriminator
    fused_adam: bool | None = None        # None: fused Adam on CUDA, the default implementation elsewhere
    tensorboard: bool = True              # scalars and sample grids under <out_dir>/tensorboard (if installed)
    # In-training evaluation (rank 0) on the validation split; the checkpoint with the best eval_metric so far
    # is kept as <out_dir>/checkpoints/best.pt (never rotated away by keep_checkpoints).
    eval_every: int = 0                   # steps between evaluations (and at the last step); 0: off
    # "fid" (needs the Inception weights, checked at start) and "l1" (mean |fake - real| on [0,1]): lower is
    # better; "ssim", "psnr", "sharpness_difference" and the cross-view script's "crossview_ssim",
    # "crossview_psnr", "crossview_sharpness_difference": higher is better (semgan_fast.eval.METRIC_DIRECTIONS).
    eval_metric: Literal["fid", "l1", "ssim", "psnr", "sharpness_difference", "crossview_ssim", "crossview_psnr",
                         "crossview_sharpness_difference"] = "fid"
    eval_images: int = 0                  # first N validation images per evaluation; 0: the whole split
    eval_batch_size: int = 0              # images per generator call in evaluation; 0: batch_size
    eval_split: str | None = None         # None: the data set's validation split (synthetic: "val")
    inception_weights: str | None = None  # FID Inception weights file; None: the torch hub cache


MODEL_TYPES = ("lggan", "ecgan", "lggan-crossview")
ModelConfig = Union[LGGANConfig, ECGANConfig, CrossViewConfig]


def model_config_class(model_type: str):
    """The model config dataclass of a model type."""
    classes = {"lggan": LGGANConfig, "ecgan": ECGANConfig, "lggan-crossview": CrossViewConfig}
    if model_type not in classes:
        raise ValueError(f"model_type must be one of {list(MODEL_TYPES)}, got {model_type!r}")
    return classes[model_type]


def model_type_of(model_cfg) -> str:
    """Model type of a model config instance (CrossViewConfig is checked before its base LGGANConfig)."""
    if isinstance(model_cfg, CrossViewConfig):
        return "lggan-crossview"
    if isinstance(model_cfg, ECGANConfig):
        return "ecgan"
    if isinstance(model_cfg, LGGANConfig):
        return "lggan"
    raise ValueError(f"model config must be an LGGANConfig, ECGANConfig or CrossViewConfig, got "
                     f"{type(model_cfg).__name__}")


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=LGGANConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # "lggan" | "ecgan" | "lggan-crossview"; None: inferred from the model config's class.
    model_type: str | None = None

    def __post_init__(self):
        inferred = model_type_of(self.model)
        if self.model_type is None:
            self.model_type = inferred
        elif self.model_type != inferred:
            raise ValueError(f"model_type {self.model_type!r} does not match the model config "
                             f"{type(self.model).__name__} (model_type {inferred!r})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        """Inverse of ``to_dict``; a dict without "model_type" (older configs) is an LGGAN config."""
        model_type = d.get("model_type") or "lggan"
        model_cls = model_config_class(model_type)
        return cls(model=model_cls(**d["model"]), data=DataConfig(**d["data"]), train=TrainConfig(**d["train"]),
                   model_type=model_type)


def _cityscapes() -> ExperimentConfig:
    return ExperimentConfig(
        model=LGGANConfig(num_classes=35, use_instance_edge=True, height=256, width=512),
        data=DataConfig(dataset="cityscapes"),
        train=TrainConfig(batch_size=8, iterations=200 * 2975 // 8, decay_start=100 * 2975 // 8),
    )


def _ade20k() -> ExperimentConfig:
    return ExperimentConfig(
        model=LGGANConfig(num_classes=151, use_instance_edge=False, height=256, width=256,
                          num_upsampling_layers="normal", local_classes=51),
        data=DataConfig(dataset="ade20k"),
        train=TrainConfig(batch_size=24, iterations=200 * 20210 // 24, decay_start=100 * 20210 // 24),
    )


def _coco_stuff() -> ExperimentConfig:
    return ExperimentConfig(
        model=LGGANConfig(num_classes=183, use_instance_edge=True, height=256, width=256,
                          num_upsampling_layers="normal"),
        data=DataConfig(dataset="coco_stuff"),
        train=TrainConfig(batch_size=32, iterations=100 * 118000 // 32, decay_start=50 * 118000 // 32),
    )


def _synthetic() -> ExperimentConfig:
    # Reduced width and resolution so the default CPU run (100 steps of batch 4) takes minutes.
    return ExperimentConfig(
        model=LGGANConfig(num_classes=8, use_instance_edge=True, height=64, width=128, ngf=8, spade_hidden=16,
                          num_upsampling_layers="normal", num_resblocks=2, ndf=16, use_vgg=False,
                          param_free_norm="batch"),
        data=DataConfig(dataset="synthetic", num_samples=64, seed=0),
        train=TrainConfig(batch_size=4, iterations=100, checkpoint_every=50, sample_every=50,
                          out_dir="runs/synthetic"),
    )


def _ecgan_train(batch_size: int, iterations: int, decay_start: int | None, out_dir: str) -> TrainConfig:
    # ECGAN appendix B: Adam beta1 = 0, beta2 = 0.999; learning rates are not given: SPADE's TTUR (G 1e-4,
    # D 4e-4, as the public ECGAN/EdgeGAN code) is kept.
    return TrainConfig(batch_size=batch_size, iterations=iterations, decay_start=decay_start, beta1=0.0,
                       beta2=0.999, out_dir=out_dir)


def _ecgan_cityscapes() -> ExperimentConfig:
    # Schedule: SPADE's Cityscapes recipe (200 epochs, decay from 100); the ECGAN paper gives none.
    return ExperimentConfig(
        model=ECGANConfig(num_classes=35, use_instance_edge=True, height=256, width=512),
        data=DataConfig(dataset="cityscapes"),
        train=_ecgan_train(16, 200 * 2975 // 16, 100 * 2975 // 16, "runs/ecgan_cityscapes"),
    )


def _ecgan_ade20k() -> ExperimentConfig:
    return ExperimentConfig(
        model=ECGANConfig(num_classes=151, use_instance_edge=False, height=256, width=256,
                          num_upsampling_layers="normal"),
        data=DataConfig(dataset="ade20k"),
        train=_ecgan_train(32, 200 * 20210 // 32, 100 * 20210 // 32, "runs/ecgan_ade20k"),
    )


def _ecgan_coco_stuff() -> ExperimentConfig:
    return ExperimentConfig(
        model=ECGANConfig(num_classes=183, use_instance_edge=True, height=256, width=256,
                          num_upsampling_layers="normal"),
        data=DataConfig(dataset="coco_stuff"),
        train=_ecgan_train(32, 100 * 118000 // 32, 50 * 118000 // 32, "runs/ecgan_coco_stuff"),
    )


def _ecgan_synthetic() -> ExperimentConfig:
    return ExperimentConfig(
        model=ECGANConfig(num_classes=8, use_instance_edge=True, height=64, width=128, ngf=8, spade_hidden=16,
                          num_upsampling_layers="normal", ndf=16, use_vgg=False, param_free_norm="batch",
                          class_hidden=4, proj_dim=32, contrast_stride=4, max_samples=256, max_views=16,
                          segmenter_width=8, sim_stride=4),
        data=DataConfig(dataset="synthetic", num_samples=64, seed=0),
        train=dataclasses.replace(_ecgan_train(4, 200, None, "runs/ecgan_synthetic"), checkpoint_every=100,
                                  sample_every=100),
    )


def _crossview(dataset: str, size: int, epochs: int, decay_epochs: int, train_size: int, batch: int):
    # Public LGGAN cross-view scripts: batch 4 at 256 (16 at 64), niter + niter_decay epochs, no flip.
    # Train-split sizes as reported for the SelectionGAN splits (Dayton 55,000, CVUSA 35,532): adjust if yours differ.
    return ExperimentConfig(
        model=CrossViewConfig(height=size, width=size),
        data=DataConfig(dataset=dataset, flip=False),
        train=TrainConfig(batch_size=batch, iterations=(epochs + decay_epochs) * train_size // batch,
                          decay_start=epochs * train_size // batch, out_dir=f"runs/crossview_{dataset}{size}"),
    )


def _crossview_synthetic() -> ExperimentConfig:
    return ExperimentConfig(
        model=CrossViewConfig(num_classes=8, height=64, width=64, ngf=8, spade_hidden=16, num_resblocks=2, ndf=16,
                              use_vgg=False, param_free_norm="batch"),
        data=DataConfig(dataset="synthetic", num_samples=64, seed=0, flip=False),
        train=TrainConfig(batch_size=4, iterations=100, checkpoint_every=50, sample_every=50,
                          out_dir="runs/crossview_synthetic"),
    )


PRESETS = {
    "cityscapes": _cityscapes, "ade20k": _ade20k, "coco_stuff": _coco_stuff, "synthetic": _synthetic,
    "ecgan_cityscapes": _ecgan_cityscapes, "ecgan_ade20k": _ecgan_ade20k, "ecgan_coco_stuff": _ecgan_coco_stuff,
    "ecgan_synthetic": _ecgan_synthetic,
    "crossview_dayton": lambda: _crossview("dayton", 256, 20, 15, 55000, 4),
    "crossview_dayton64": lambda: _crossview("dayton", 64, 50, 50, 55000, 16),
    "crossview_cvusa": lambda: _crossview("cvusa", 256, 15, 15, 35532, 4),
    "crossview_synthetic": _crossview_synthetic,
}
_PRESET_PREFIX = {"lggan": "", "ecgan": "ecgan_", "lggan-crossview": "crossview_"}


def preset(name: str) -> ExperimentConfig:
    """A fresh ExperimentConfig for a named preset (see module docstring)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]()


def preset_for(model_type: str, name: str) -> ExperimentConfig:
    """The preset ``name`` for ``model_type``: "synthetic" -> "ecgan_synthetic" for ECGAN, "dayton" ->
    "crossview_dayton" for cross-view, ...; a full preset name of the same model type is accepted as is."""
    model_config_class(model_type)  # validates model_type
    for candidate in (name, _PRESET_PREFIX[model_type] + name):
        if candidate in PRESETS:
            cfg = PRESETS[candidate]()
            if cfg.model_type == model_type:
                return cfg
    valid = sorted(k for k in PRESETS if PRESETS[k]().model_type == model_type)
    raise ValueError(f"no {model_type} preset named {name!r}; valid: {valid}")
