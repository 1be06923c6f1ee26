"""Datasets and samplers."""
import os

from .sampler import ResumableSampler, collate
from .synthetic import SyntheticScenes

__all__ = ["SyntheticScenes", "ResumableSampler", "collate", "build_dataset"]


def build_dataset(data_cfg, model_cfg, split: str | None = None):
    """Dataset for a DataConfig (see ``_build``); wrapped in ``SkipBadItems`` when ``skip_bad`` is set."""
    dataset = _build(data_cfg, model_cfg, split)
    if getattr(data_cfg, "skip_bad", False):
        from .check import SkipBadItems

        dataset = SkipBadItems(dataset)
    return dataset


def _build(data_cfg, model_cfg, split: str | None = None):
    """Dataset for a DataConfig at the model's resolution and class count.

    Synthetic data adapt to the model: ECGAN items carry Canny edges ("edge"); cross-view items carry a
    paired source view ("source", ``SyntheticCrossView``); split "val" is the held-out next num_samples
    scenes of the same generator. Dayton and CVUSA: ``CrossViewPanels``."""
    from ..config import model_type_of
    from .real import ADE20K, COCOStuff, Cityscapes

    size = dict(num_classes=model_cfg.num_classes, height=model_cfg.height, width=model_cfg.width)
    model_type = model_type_of(model_cfg)
    if data_cfg.dataset == "synthetic":
        # "train" (default): scenes 0..N-1 of the seed; "val": the next N scenes (held out, same appearance).
        if split not in (None, "train", "val"):
            raise ValueError(f"the synthetic data set has splits 'train' and 'val', got split={split!r}")
        common = dict(num_samples=data_cfg.num_samples, seed=data_cfg.seed,
                      index_offset=data_cfg.num_samples if split == "val" else 0, **size)
        if model_type == "lggan-crossview":
            from .crossview import SyntheticCrossView

            return SyntheticCrossView(**common)
        return SyntheticScenes(with_edges=model_type == "ecgan", **common)
    if data_cfg.dataset in ("dayton", "cvusa"):
        from .crossview import CrossViewPanels

        if not data_cfg.root:
            raise ValueError(f"dataset={data_cfg.dataset!r} needs a root directory (--data-root)")
        return CrossViewPanels(data_cfg.root, split or "train", direction=getattr(data_cfg, "direction", "a2g"),
                               **size)
    loaders = {"cityscapes": (Cityscapes, "train"), "ade20k": (ADE20K, "training"), "coco_stuff": (COCOStuff, "train")}
    if data_cfg.dataset not in loaders:
        raise ValueError(f"dataset must be one of {['synthetic', 'dayton', 'cvusa', *loaders]}, "
                         f"got {data_cfg.dataset!r}")
    if not data_cfg.root:
        raise ValueError(f"dataset={data_cfg.dataset!r} needs a root directory (--data-root)")
    loader, default_split = loaders[data_cfg.dataset]
    dataset = loader(data_cfg.root, split or default_split, **size)
    if getattr(data_cfg, "edge_root", None):
        if not os.path.isdir(data_cfg.edge_root):
            raise ValueError(f"edge_root {data_cfg.edge_root!r} does not exist")
        dataset.edge_dir = data_cfg.edge_root
    return dataset
