"""``evaluate``: score a trained LGGAN checkpoint on its data set (the ``semgan eval`` command).

For each of the first ``num_images`` items of the evaluation split (in order, no flips) the
checkpoint's generator synthesises an image from the label map (and instance map), and:

- SSIM, PSNR, L1 (mean absolute error) and sharpness difference are computed against the paired
  real image on [0, 1] (``ssim``, ``psnr``, ``l1``, ``sharpness_difference``: standard definitions,
  data_range 1), and in the
  SelectionGAN/LGGAN cross-view script's convention (``crossview_*``; see ``metrics``); per-image
  values are averaged.
- FID between the generated and the real images of the split (the SPADE / LGGAN protocol: real set
  = the evaluated split's images at the model's resolution). Both sets are rounded to 8-bit levels
  first, as images written to and read back from PNG files are by pytorch-fid. FID needs the
  Inception weights (``semgan_fast.eval.fid``); when they are not found and FID was not asked for
  explicitly (``fid=True`` or ``inception_weights=...``), the report holds ``"fid": null`` and the
  reason under ``notes``. FID from few images is biased upwards: compare values from equal counts.
- mIoU, pixel accuracy and mean class accuracy of a segmentation network on the generated images
  against the input label maps, when a segmenter is given (``metrics.load_segmenter`` spec or a
  callable; see ``metrics`` for the hook interface and how to plug in DRN-D-105 / UperNet).

Generated images are clamped to [-1, 1] (as when saved as PNG). Per-batch results stay on the
device; the host reads them once at the end.

``score_generator`` is the generation + scoring loop itself, shared with the trainer's in-training
evaluation (``TrainConfig.eval_every``), which keeps the checkpoint with the best ``eval_metric``
(``METRIC_DIRECTIONS``: lower or higher is better) as ``best.pt``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
import time
from typing import Callable

import numpy as np
import torch

from .. import __version__
from ..config import ExperimentConfig
from ..data import build_dataset, collate
from ..train.checkpoint import load_checkpoint
from ..train.trainer import resolve_device
from .fid import FEATURE_DIM, FeatureStats, fid_from_stats, load_inception, resolve_inception_weights
from .metrics import (confusion_matrix, l1_error, load_segmenter, psnr, segment, segmentation_scores,
                      selectiongan_psnr, selectiongan_sharpness_difference, selectiongan_ssim, sharpness_difference,
                      ssim)

# Validation split of each real data set (the papers evaluate on it); synthetic data has one split.
EVAL_SPLITS = {"cityscapes": "val", "ade20k": "validation", "coco_stuff": "val", "dayton": "test", "cvusa": "test"}

GeneratorFn = Callable[[dict], torch.Tensor]

# Paired per-image metrics (on [0, 1] images, averaged over the images) and how each is computed.
PAIRED_METRICS = {
    "ssim": ssim, "psnr": psnr, "l1": l1_error, "sharpness_difference": sharpness_difference,
    "crossview_ssim": selectiongan_ssim, "crossview_psnr": selectiongan_psnr,
    "crossview_sharpness_difference": selectiongan_sharpness_difference,
}
# Every metric a run can select its best checkpoint by (``TrainConfig.eval_metric``), with the direction
# in which it improves.
METRIC_DIRECTIONS = {
    "fid": "lower", "l1": "lower", "ssim": "higher", "psnr": "higher", "sharpness_difference": "higher",
    "crossview_ssim": "higher", "crossview_psnr": "higher", "crossview_sharpness_difference": "higher",
}
_SSIM_WINDOW = 11   # both SSIM variants use an 11x11 Gaussian window


def metric_supported(name: str, height: int, width: int) -> str | None:
    """None when metric ``name`` can be computed on H x W images, else the reason it cannot."""
    if name in ("ssim", "crossview_ssim") and min(height, width) < _SSIM_WINDOW:
        return (f"SSIM needs images of at least {_SSIM_WINDOW}x{_SSIM_WINDOW} (the Gaussian window), "
                f"got {height}x{width}")
    return None


def is_improvement(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of ``metric`` beats ``best`` (None: no best yet). NaN never improves."""
    if math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value < best if METRIC_DIRECTIONS[metric] == "lower" else value > best


@dataclasses.dataclass
class Scores:
    """What ``score_generator`` measured. metrics: name -> mean value (None when not computed);
    real_stats / fake_stats: the Inception feature statistics (None without FID); confusion: the
    segmenter's confusion matrix [K,K] int64 (None without a segmenter)."""
    metrics: dict[str, float | None]
    count: int
    real_stats: FeatureStats | None = None
    fake_stats: FeatureStats | None = None
    confusion: torch.Tensor | None = None


def score_generator(generate: GeneratorFn, dataset, count: int, batch_size: int, device: torch.device, *,
                    paired=tuple(PAIRED_METRICS), inception=None, real_stats: FeatureStats | None = None,
                    segmenter=None, num_workers: int = 0, inference_mode: bool = True) -> Scores:
    """Generates the first ``count`` items of ``dataset`` (in order, no flips) and scores them: the code
    path of ``evaluate`` and of the trainer's in-training evaluation.

    generate: batch dict (device tensors; "image" float [B,3,H,W] in [-1,1]) -> images [B,3,H,W] in [-1,1]
        (clamped here). paired: names of ``PAIRED_METRICS`` to compute (each must be supported at the
        data set's size, see ``metric_supported``). inception: a ``FIDInceptionV3`` or None (no FID).
    real_stats: the real images' Inception statistics from an earlier call on the same items (they do
        not change between evaluations); None: computed here. segmenter: a hook (see ``metrics``) or None.
    inference_mode: True: ``torch.inference_mode`` (standalone evaluation); False: ``torch.no_grad``
        (inside training, where no inference tensor may reach a module that later trains).
    Per-batch results stay on the device; the host reads them once at the end."""
    unknown = [name for name in paired if name not in PAIRED_METRICS]
    if unknown:
        raise ValueError(f"unknown paired metrics {unknown}; choose from {sorted(PAIRED_METRICS)}")
    per_image: dict[str, list[torch.Tensor]] = {name: [] for name in paired}
    reuse_real = real_stats is not None
    if inception is not None and real_stats is None:
        real_stats = FeatureStats()
    fake_stats = FeatureStats() if inception is not None else None
    confusion = None
    ignore_index = getattr(segmenter, "ignore_index", 255)
    target_transform = getattr(segmenter, "target_transform", None)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(count)), batch_size=batch_size,
                                         shuffle=False, collate_fn=collate, num_workers=num_workers)
    with torch.inference_mode() if inference_mode else torch.no_grad():
        for batch in loader:
            batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            real = batch["image"].float()
            fake = generate(batch)
            if not torch.is_tensor(fake) or tuple(fake.shape) != tuple(real.shape):
                raise ValueError(f"the generator returned {tuple(fake.shape) if torch.is_tensor(fake) else type(fake)}"
                                 f", expected images of shape {tuple(real.shape)}")
            fake = fake.float().clamp(-1, 1)
            real01, fake01 = (real + 1) / 2, (fake + 1) / 2
            for name in paired:
                per_image[name].append(PAIRED_METRICS[name](fake01, real01))
            if inception is not None:
                if not reuse_real:
                    real_stats.update(inception(_to_8bit_levels(real)))
                fake_stats.update(inception(_to_8bit_levels(fake)))
            if segmenter is not None:
                labels = batch["label"]
                pred, k = segment(segmenter, fake, tuple(labels.shape[-2:]))
                target = target_transform(labels) if target_transform is not None else labels
                counts = confusion_matrix(pred, target, k, ignore_index)
                confusion = counts if confusion is None else confusion + counts
    metrics: dict[str, float | None] = {name: None for name in PAIRED_METRICS}
    for name, values in per_image.items():
        metrics[name] = torch.cat(values).double().mean().item() if values else None
    metrics["fid"] = fid_from_stats(real_stats, fake_stats) if inception is not None else None
    return Scores(metrics=metrics, count=count, real_stats=real_stats, fake_stats=fake_stats, confusion=confusion)


def _to_8bit_levels(images: torch.Tensor) -> torch.Tensor:
    """[-1,1] float -> the nearest of the 256 levels an 8-bit PNG stores (still in [-1,1])."""
    return torch.round((images.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _write_json(report: dict, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def _versions(device: torch.device) -> dict:
    versions = {"semgan_fast": __version__, "torch": torch.__version__, "numpy": np.__version__,
                "python": sys.version.split()[0], "platform": platform.platform()}
    if device.type == "cuda":
        versions["cuda"] = torch.version.cuda
        versions["gpu"] = torch.cuda.get_device_name(device)
    return versions


def _build_generator(state: dict, device: torch.device, checkpoint_path: str) -> GeneratorFn:
    """The checkpoint's generator (any model type) as a batch -> images function."""
    from ..models import build_generator_fn

    try:
        return build_generator_fn(state, device)
    except ValueError as exc:
        raise ValueError(f"checkpoint {checkpoint_path!r}: {exc}") from exc


def evaluate(checkpoint_path: str, data_root: str | None = None, split: str | None = None,
             num_images: int | None = None, batch_size: int = 8, device: str | torch.device = "auto",
             inception_weights: str | None = None, segmenter=None, out_json: str | None = None, *,
             segmenter_checkpoint: str | None = None, fid: bool | None = None,
             generator_fn: GeneratorFn | None = None) -> dict:
    """Evaluate a checkpoint; returns the report dict (also written to ``out_json`` when given).

    checkpoint_path: a ``semgan train`` checkpoint (config + LGGAN weights + step).
    data_root: overrides the checkpoint config's data root (real data sets).
    split: data set split; default: the validation split (cityscapes "val", ade20k "validation",
        coco_stuff "val", dayton / cvusa "test"); synthetic data: the training samples by default,
        "val" for the held-out samples (``build_dataset``).
    num_images: evaluate the first N items (default: all; more than the split holds is capped).
    batch_size: images per generator / Inception / segmenter call.
    device: "auto" (CUDA when available), "cpu", "cuda", "cuda:N".
    inception_weights: path of pytorch-fid's pt_inception-2015-12-05-6726825d.pth; default: torch
        hub's cache. Giving a path makes FID required (a missing file raises ValueError).
    segmenter: None, a ``"module.path:factory"`` / ``"file.py:factory"`` spec, or a callable / nn.Module
        mapping images [B,3,H,W] in [-1,1] to scores [B,K,H',W'].
    out_json: where to write the report (JSON; non-finite numbers become null).
    segmenter_checkpoint: checkpoint for a segmenter given as a spec.
    fid: None = compute when the weights are found; True = required; False = skip.
    generator_fn: replaces the checkpoint's generator (the checkpoint still supplies the config and
        step): called with the device batch dict ("label" int64 [B,H,W], "instance" int64 [B,H,W],
        "image" float [B,3,H,W] in [-1,1]) and returning images [B,3,H,W] in [-1,1]. For evaluating
        other generators, or an oracle (``lambda b: b["image"]``) as a sanity check.

    Report keys: checkpoint, step, dataset {name, root, split, size}, num_images, batch_size, device,
    metrics {fid, ssim, psnr, l1, sharpness_difference, crossview_ssim, crossview_psnr,
    crossview_sharpness_difference, miou, pixel_accuracy, mean_class_accuracy}, fid_details,
    segmentation, notes {metric: why it is null or how to read it}, versions, elapsed_s.
    """
    start = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if fid is False and inception_weights is not None:
        raise ValueError("fid=False contradicts inception_weights=...: drop one of them")
    if segmenter_checkpoint is not None and not isinstance(segmenter, str):
        raise ValueError("segmenter_checkpoint needs segmenter given as a 'module:factory' spec")

    state = load_checkpoint(checkpoint_path)
    cfg = ExperimentConfig.from_dict(state["config"])
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=data_root))
    notes: dict[str, str] = {}
    if cfg.data.dataset == "synthetic":
        # Default: the training samples (as before the held-out split existed); split="val" evaluates the
        # held-out samples the in-training evaluation uses.
        split_used = split
        if split is None:
            notes["dataset"] = "synthetic data set: the training samples are evaluated (split='val': held-out ones)"
    else:
        split_used = split or EVAL_SPLITS.get(cfg.data.dataset)
    dataset = build_dataset(cfg.data, cfg.model, split_used)
    count = len(dataset) if num_images is None else min(num_images, len(dataset))
    if num_images is not None and num_images > len(dataset):
        notes["num_images"] = f"num_images={num_images} capped at the split's {len(dataset)} items"
    dev = resolve_device(str(device))

    # FID set-up: decide before the (possibly long) generation loop, so a required FID fails fast.
    explicit_fid = fid is True or inception_weights is not None
    inception = None
    weights_path = None
    if fid is False:
        notes["fid"] = "FID disabled (fid=False)"
    elif count < 2:
        if explicit_fid:
            raise ValueError(f"FID needs at least 2 images, got num_images={count}")
        notes["fid"] = f"FID needs at least 2 images; {count} evaluated"
    else:
        try:
            weights_path = resolve_inception_weights(inception_weights)
        except ValueError as exc:
            if explicit_fid:
                raise
            notes["fid"] = str(exc)
        if weights_path is not None:
            inception = load_inception(weights_path, dev)

    gen = generator_fn if generator_fn is not None else _build_generator(state, dev, checkpoint_path)

    hook = None
    if segmenter is None:
        notes["segmentation"] = "no segmenter given: mIoU / accuracy not computed"
    elif isinstance(segmenter, str):
        hook = load_segmenter(segmenter, segmenter_checkpoint, dev)
    elif callable(segmenter):
        hook = segmenter.to(dev).eval() if isinstance(segmenter, torch.nn.Module) else segmenter
    else:
        raise ValueError(f"segmenter must be a 'module:factory' spec or a callable, got {type(segmenter).__name__}")
    ignore_index = getattr(hook, "ignore_index", 255)
    target_transform = getattr(hook, "target_transform", None)

    paired = []
    for name in PAIRED_METRICS:
        reason = metric_supported(name, cfg.model.height, cfg.model.width)
        if reason is None:
            paired.append(name)
        else:
            notes.setdefault(name.removeprefix("crossview_"), reason)
    scores = score_generator(gen, dataset, count, batch_size, dev, paired=paired, inception=inception, segmenter=hook,
                             num_workers=cfg.data.num_workers)
    metrics, real_stats, fake_stats, confusion = scores.metrics, scores.real_stats, scores.fake_stats, scores.confusion
    if metrics["psnr"] is not None and math.isinf(metrics["psnr"]):
        notes["psnr"] = "at least one generated image equals its real image exactly (MSE 0): PSNR is +inf (null)"
    if metrics["sharpness_difference"] is not None and math.isinf(metrics["sharpness_difference"]):
        notes["sharpness_difference"] = ("at least one generated image has exactly the real image's gradients: "
                                         "sharpness difference is +inf (null)")
    fid_details = None
    if inception is not None:
        fid_details = {"inception_weights": os.path.abspath(weights_path), "num_real": real_stats.count,
                       "num_fake": fake_stats.count, "feature_dim": FEATURE_DIM, "quantized_8bit": True}
        if count < FEATURE_DIM:
            notes["fid"] = (f"FID from {count} images (fewer than the {FEATURE_DIM} feature dimensions) is biased "
                            "upwards; compare only values computed from the same number of images")
    segmentation = None
    if hook is not None:
        seg = segmentation_scores(confusion)
        metrics.update(miou=seg["miou"], pixel_accuracy=seg["pixel_accuracy"],
                       mean_class_accuracy=seg["mean_class_accuracy"])
        segmentation = {"segmenter": segmenter if isinstance(segmenter, str) else type(segmenter).__name__,
                        "checkpoint": segmenter_checkpoint, "num_classes": len(seg["per_class_iou"]),
                        "ignore_index": ignore_index, "per_class_iou": seg["per_class_iou"],
                        "classes_present": seg["classes_present"], "pixels": seg["pixels"]}
        if target_transform is None and segmentation["num_classes"] != cfg.model.num_classes:
            # The SPADE #100 / #124 pitfall: 35 Cityscapes labelIds against a 19-trainId segmenter.
            notes["segmentation"] = (
                f"the segmenter predicts {segmentation['num_classes']} classes, the data set has "
                f"{cfg.model.num_classes} label channels and the hook has no target_transform: labels "
                f">= {segmentation['num_classes']} are ignored and the rest are compared as they are; make sure "
                "the label spaces agree (e.g. cityscapes_label_to_train_id for 19-class Cityscapes models)")
    else:
        metrics.update(miou=None, pixel_accuracy=None, mean_class_accuracy=None)

    report = {
        "checkpoint": os.path.abspath(checkpoint_path),
        "step": int(state["step"]),
        "dataset": {"name": cfg.data.dataset, "root": cfg.data.root, "split": split_used, "size": len(dataset)},
        "num_images": count,
        "batch_size": batch_size,
        "device": str(dev),
        "generator": "checkpoint" if generator_fn is None else "generator_fn",
        "metrics": metrics,
        "fid_details": fid_details,
        "segmentation": segmentation,
        "notes": notes,
        "versions": _versions(dev),
        "elapsed_s": round(time.perf_counter() - start, 3),
    }
    report = _json_safe(report)
    if out_json is not None:
        _write_json(report, out_json)
    return report
