"""Datasets and samplers."""
from .sampler import ResumableSampler, collate
from .synthetic import SyntheticScenes

__all__ = ["SyntheticScenes", "ResumableSampler", "collate", "build_dataset"]


def build_dataset(data_cfg, model_cfg, split: str | None = None):
    """Dataset for a DataConfig at the model's resolution and class count."""
    from .real import ADE20K, COCOStuff, Cityscapes

    size = dict(num_classes=model_cfg.num_classes, height=model_cfg.height, width=model_cfg.width)
    if data_cfg.dataset == "synthetic":
        return SyntheticScenes(num_samples=data_cfg.num_samples, seed=data_cfg.seed, **size)
    loaders = {"cityscapes": (Cityscapes, "train"), "ade20k": (ADE20K, "training"), "coco_stuff": (COCOStuff, "train")}
    if data_cfg.dataset not in loaders:
        raise ValueError(f"dataset must be one of {['synthetic', *loaders]}, got {data_cfg.dataset!r}")
    if not data_cfg.root:
        raise ValueError(f"dataset={data_cfg.dataset!r} needs a root directory (--data-root)")
    loader, default_split = loaders[data_cfg.dataset]
    return loader(data_cfg.root, split or default_split, **size)
