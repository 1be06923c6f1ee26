"""Datasets and samplers."""
from .sampler import ResumableSampler, collate
from .synthetic import SyntheticScenes

__all__ = ["SyntheticScenes", "ResumableSampler", "collate", "build_dataset"]


def build_dataset(data_cfg, model_cfg):
    """Dataset for a DataConfig. Only the synthetic dataset exists so far."""
    if data_cfg.dataset == "synthetic":
        return SyntheticScenes(num_classes=model_cfg.num_classes, height=model_cfg.height, width=model_cfg.width,
                               num_samples=data_cfg.num_samples, seed=data_cfg.seed)
    raise ValueError(f"dataset={data_cfg.dataset!r}: real-dataset loaders (Cityscapes, ADE20K, COCO-Stuff) are not "
                     "implemented yet; use dataset='synthetic'")
