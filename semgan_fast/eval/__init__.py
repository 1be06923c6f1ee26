"""Evaluation: FID (in-project FID Inception-v3), SSIM / PSNR / sharpness difference, segmentation
scores through a pluggable segmenter hook, and ``evaluate`` (the ``semgan eval`` command)."""
from .evaluate import EVAL_SPLITS, evaluate
from .fid import (FID_WEIGHTS_FILENAME, FeatureStats, FIDInceptionV3, default_inception_path, fid_from_features,
                  fid_from_stats, frechet_distance, frechet_distance_from_rows, load_inception,
                  resolve_inception_weights)
from .metrics import (SegmentationHook, cityscapes_label_to_train_id, confusion_matrix, load_segmenter, psnr,
                      segmentation_scores, selectiongan_psnr, selectiongan_sharpness_difference, selectiongan_ssim,
                      sharpness_difference, ssim)

__all__ = [
    "evaluate", "EVAL_SPLITS",
    "FIDInceptionV3", "FeatureStats", "FID_WEIGHTS_FILENAME", "default_inception_path", "resolve_inception_weights",
    "load_inception", "frechet_distance", "frechet_distance_from_rows", "fid_from_stats", "fid_from_features",
    "ssim", "psnr", "sharpness_difference", "selectiongan_ssim", "selectiongan_psnr",
    "selectiongan_sharpness_difference", "confusion_matrix", "segmentation_scores", "SegmentationHook",
    "load_segmenter", "cityscapes_label_to_train_id",
]
