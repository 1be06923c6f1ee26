"""Typed configuration: model, data and training settings, with presets for the papers' setups.

Presets (``PRESETS``):
- ``cityscapes``: 256x512, 35 label classes + instance-edge channel, all 35 classes local.
- ``ade20k``: 256x256, 151 label channels (150 + unknown), 51 dedicated local generators plus one
  "other" generator for the remaining classes (52 in all), no instance channel.
- ``coco_stuff``: 256x256, 182 classes + "unlabeled" = 183 label channels + instance edge.
- ``synthetic``: the embedded procedural dataset, small enough for a CPU run in minutes.

Ablation rows S1-S5 of LGGAN Table 3 (right) are ``LGGANConfig.ablation("S1")`` etc.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal


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
class DataConfig:
    dataset: Literal["synthetic", "cityscapes", "ade20k", "coco_stuff"] = "synthetic"
    root: str | None = None               # dataset root (unused for synthetic)
    num_samples: int = 64                 # synthetic: number of distinct samples
    seed: int = 0                         # synthetic: generator seed
    flip: bool = True                     # random horizontal flip (consistent across label and image)
    num_workers: int = 0


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
    # Speed: "bf16" autocast (A100/H100), "fp16" autocast + GradScaler (V100), or "fp32".
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False                 # torch.compile the generator and the discriminator
    fused_adam: bool | None = None        # None: fused Adam on CUDA, the default implementation elsewhere
    tensorboard: bool = True              # scalars and sample grids under <out_dir>/tensorboard (if installed)


@dataclass
class ExperimentConfig:
    model: LGGANConfig = field(default_factory=LGGANConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        return cls(model=LGGANConfig(**d["model"]), data=DataConfig(**d["data"]), train=TrainConfig(**d["train"]))


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
    # Reduced width and resolution so a CPU run of a few hundred steps takes minutes.
    return ExperimentConfig(
        model=LGGANConfig(num_classes=8, use_instance_edge=True, height=64, width=128, ngf=8, spade_hidden=16,
                          num_upsampling_layers="normal", num_resblocks=2, ndf=16, use_vgg=False,
                          param_free_norm="batch"),
        data=DataConfig(dataset="synthetic", num_samples=64, seed=0),
        train=TrainConfig(batch_size=4, iterations=200, checkpoint_every=100, sample_every=100,
                          out_dir="runs/synthetic"),
    )


PRESETS = {"cityscapes": _cityscapes, "ade20k": _ade20k, "coco_stuff": _coco_stuff, "synthetic": _synthetic}


def preset(name: str) -> ExperimentConfig:
    """A fresh ExperimentConfig for a named preset (see module docstring)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]()
