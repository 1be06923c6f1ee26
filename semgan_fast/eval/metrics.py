"""Paired image metrics (SSIM, PSNR, sharpness difference), segmentation scores (mIoU, pixel
accuracy) and the segmentation-network hook used for the mIoU protocol.

All image metrics take batches x, y [B,C,H,W] (float, values in [0, data_range]) and return one
value per image, float32 [B], on the inputs' device; averaging over a data set is left to the caller
(the papers average per-image values). The per-batch functions (image metrics, ``confusion_matrix``,
``segment``) never synchronise with the host; ``segmentation_scores`` reads the result once.

Standard definitions (default):
- ``ssim``: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  C_i = (K_i * data_range)^2, statistics over the "valid" window positions only, per channel, mean
  over channels and positions (as the reference MATLAB ``ssim_index`` and most libraries).
- ``psnr``: 10 log10(data_range^2 / MSE); identical images give +inf.
- ``l1_error``: mean |x - y| over channels and pixels (in the unit of the inputs: [0, 1] in ``evaluate``).
- ``sharpness_difference``: Mathieu et al. 2016 ("Deep multi-scale video prediction"), as used by
  the cross-view papers (X-Fork, SelectionGAN, LGGAN Tables 4-5):
  SD = 10 log10(data_range^2 / mean | (|dx y| + |dy y|) - (|dx x| + |dy x|) |), with forward pixel
  differences dx = I[i, j+1] - I[i, j], dy = I[i+1, j] - I[i, j] on the (H-1) x (W-1) grid where
  both exist, averaged over channels and pixels; equal gradients give +inf. (The numerator is a
  squared intensity and the denominator a linear one, as in the paper: the value depends on the
  intensity unit, so state data_range when comparing.)

Cross-view code convention (``selectiongan_*``): the numbers in the SelectionGAN / LGGAN cross-view
tables come from SelectionGAN's Lua script (``scripts/evaluation/my_image_error_measures.lua``),
which differs from the definitions above. On images loaded in [0, 1] it computes, per image:
- SSIM on the luma channel only (Y = 0.299 R + 0.587 G + 0.114 B, scaled to [0, 255], L = 255),
  Gaussian window 11 / sigma 1.5, with *full* convolution (zero padding, map of size H+10 x W+10);
- PSNR = 10 log10(255^2 / e), e = 128^2 * mean squared error of the [0, 1] images (the script's
  scale factor is 128^2, not 255^2), e clamped below at 1e-4;
- SD = 10 log10(255^2 / e), e = 128^2 * sum over the interior pixels (1..H-2, 1..W-2) of
  | |dx p| - |dx t| | + | |dy p| - |dy t| | (backward differences I[i, j] - I[i, j-1] and
  I[i, j] - I[i-1, j]; each direction compared separately), divided by C*H*W; e clamped at 1e-4.
The ``selectiongan_*`` functions reproduce these on [0, 1] float images (the script reads 8-bit
image files, so values differ from it by the quantisation of the generated image only).

Segmentation: ``confusion_matrix`` accumulates a K x K int64 matrix on the device (rows: ground
truth, columns: prediction; pixels whose ground truth is ``ignore_index`` or outside [0, K) are
skipped, which is how DRN's ``fast_hist`` treats Cityscapes' 255 and how ADE20K's "unknown" class
is left out of a 150-class segmenter), and ``segmentation_scores`` turns it into
mIoU = nanmean_k TP_k / (TP_k + FP_k + FN_k) (classes absent from both prediction and ground truth
are left out, as DRN's ``per_class_iu`` + ``nanmean``), pixel accuracy = sum TP / #pixels and mean
class accuracy.

Segmentation hook: a ``SegmentationHook`` is any callable (usually an ``nn.Module`` in eval mode)
mapping generated images [B,3,H,W] in [-1,1] to class scores [B,K,H',W'] (logits, probabilities or
log-probabilities: only the argmax is used); scores at another resolution are resized bilinearly
to the label map's H x W before the argmax. The callable does its own input normalisation (and any
resizing its network expects, e.g. DRN-D-105 evaluated at 1024x2048 rather than 256x512). Optional
attributes: ``ignore_index`` (int, default 255) and ``target_transform`` (callable mapping the data
set's label map [B,H,W] int64 to the segmenter's label space, e.g. ``cityscapes_label_to_train_id``
for a 19-class Cityscapes model evaluated against 35-class labelIds).

``load_segmenter("module.path:factory", checkpoint=None)`` (or ``"path/to/file.py:factory"``)
imports the factory and calls it: with ``factory(checkpoint=path)`` when the factory takes a
``checkpoint`` argument (for checkpoint formats that need their own loading, e.g. UperNet's separate
encoder/decoder files), otherwise ``factory()`` followed by ``load_state_dict`` of the file (a
``state_dict`` / ``model`` entry is unwrapped and a DataParallel ``module.`` prefix stripped).

Plugging in DRN-D-105 (Cityscapes; fyu/drn, ``drn_d_105_cityscapes.pth``) with fyu/drn's code on
PYTHONPATH, e.g. in ``my_segmenters.py``::

    import torch
    from segment import DRNSeg                      # fyu/drn
    from semgan_fast.eval.metrics import cityscapes_label_to_train_id

    class DRNHook(torch.nn.Module):
        ignore_index = 255
        target_transform = staticmethod(cityscapes_label_to_train_id)
        def __init__(self, checkpoint):
            super().__init__()
            self.net = DRNSeg("drn_d_105", 19, pretrained_model=None, pretrained=False)
            state = torch.load(checkpoint, map_location="cpu")
            self.net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
            # fyu/drn datasets/cityscapes/info.json
            self.register_buffer("mean", torch.tensor([0.29010, 0.32808, 0.28696]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.18295, 0.18657, 0.18448]).view(1, 3, 1, 1))
        def forward(self, images):                   # [-1,1] -> DRN's normalised input
            x = ((images + 1) / 2 - self.mean) / self.std
            return self.net(x)[0]                    # log-softmax scores [B,19,H,W]

    def drn_d_105(checkpoint):
        return DRNHook(checkpoint)

then ``semgan eval --segmenter my_segmenters:drn_d_105 --segmenter-checkpoint drn_d_105_cityscapes.pth``.
UperNet-ResNet101 for ADE20K (CSAILVision/semantic-segmentation-pytorch) plugs in the same way: a
factory that builds its ``SegmentationModule`` from the encoder/decoder files, normalises with the
ImageNet mean/std and returns its 150-class scores; the project's ADE20K label 150 ("unknown") is
then outside [0, 150) and ignored, and labels 0..149 already match UperNet's classes (the project
maps the raw label 0 to 150 and every other raw label l to l - 1). Likewise COCO-Stuff's "unlabeled"
(channel 182) is ignored by a 182-class segmenter (DeepLab-v2).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from typing import Callable, Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------------------- helpers
def _check_pair(x: torch.Tensor, y: torch.Tensor, name: str = "images") -> None:
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(f"{name}: x and y must both be [B,C,H,W] of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"{name}: x and y must be floating point, got {x.dtype} and {y.dtype}")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Half inputs are evaluated in float32; float64 inputs stay float64 (tests, references).
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian [size] centred on the middle tap (the 2-D window is its outer product)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be odd and >= 1, got {size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype)


def _gaussian_filter(x: torch.Tensor, window: torch.Tensor, padding: int) -> torch.Tensor:
    """Separable depthwise Gaussian filter of [B,C,H,W] (zero padding ``padding`` on every side)."""
    c = x.shape[1]
    k = window.numel()
    wx = window.view(1, 1, 1, k).expand(c, 1, 1, k)
    wy = window.view(1, 1, k, 1).expand(c, 1, k, 1)
    x = F.conv2d(x, wx, padding=(0, padding), groups=c)
    return F.conv2d(x, wy, padding=(padding, 0), groups=c)


def _ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float, window: torch.Tensor, padding: int,
              k1: float, k2: float) -> torch.Tensor:
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    stats = _gaussian_filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), window, padding)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.chunk(5, dim=1)
    var_x, var_y, cov_xy = e_xx - mu_x * mu_x, e_yy - mu_y * mu_y, e_xy - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))


# ------------------------------------------------------------------------------- standard metrics
def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Mean SSIM per image. x, y: [B,C,H,W] float in [0, data_range], H, W >= window_size.
    Returns float32 [B] (float64 for float64 inputs); 1 for identical images."""
    _check_pair(x, y, "ssim")
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"ssim: images of {tuple(x.shape[-2:])} are smaller than the {window_size}-pixel window")
    dtype = _compute_dtype(x)
    window = gaussian_window(window_size, sigma, dtype, x.device)
    smap = _ssim_map(x.to(dtype), y.to(dtype), data_range, window, 0, k1, k2)
    return smap.mean(dim=(1, 2, 3))


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR per image in dB: 10 log10(data_range^2 / MSE). x, y: [B,C,H,W] float.
    Returns float32 [B] (float64 for float64 inputs); +inf where the images are identical."""
    _check_pair(x, y, "psnr")
    dtype = _compute_dtype(x)
    mse = (x.to(dtype) - y.to(dtype)).pow(2).mean(dim=(1, 2, 3))
    # data_range^2 / 0 = inf and log10(inf) = inf: identical images need no special case.
    return 10.0 * torch.log10(data_range ** 2 / mse)


def l1_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image, mean |x - y| over channels and pixels. x, y: [B,C,H,W] float.
    Returns float32 [B] (float64 for float64 inputs); 0 where the images are identical."""
    _check_pair(x, y, "l1_error")
    dtype = _compute_dtype(x)
    return (x.to(dtype) - y.to(dtype)).abs().mean(dim=(1, 2, 3))


def _gradient_magnitude_l1(img: torch.Tensor) -> torch.Tensor:
    """|dx| + |dy| with forward differences on the (H-1) x (W-1) grid: [B,C,H-1,W-1]."""
    dx = (img[..., :-1, 1:] - img[..., :-1, :-1]).abs()
    dy = (img[..., 1:, :-1] - img[..., :-1, :-1]).abs()
    return dx + dy


def sharpness_difference(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Sharpness difference per image in dB (Mathieu et al. 2016; see the module docstring):
    10 log10(data_range^2 / mean | (|dx y| + |dy y|) - (|dx x| + |dy x|) |).
    x, y: [B,C,H,W] float, H, W >= 2. Returns float32 [B]; +inf where the gradients agree exactly."""
    _check_pair(x, y, "sharpness_difference")
    if min(x.shape[-2:]) < 2:
        raise ValueError(f"sharpness_difference: images need H, W >= 2, got {tuple(x.shape[-2:])}")
    dtype = _compute_dtype(x)
    grad_diff = (_gradient_magnitude_l1(y.to(dtype)) - _gradient_magnitude_l1(x.to(dtype))).abs()
    return 10.0 * torch.log10(data_range ** 2 / grad_diff.mean(dim=(1, 2, 3)))


# ------------------------------------------------------------- SelectionGAN cross-view convention
_LUMA = (0.299, 0.587, 0.114)
_SELECTIONGAN_SCALE = 128.0 * 128.0
_SELECTIONGAN_EPS = 1e-4


def _clamped_db(error: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.log10(255.0 ** 2 / error.clamp_min(_SELECTIONGAN_EPS))


def selectiongan_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM as in SelectionGAN's evaluation script: x, y [B,3,H,W] in [0,1] -> luma in [0,255], Gaussian
    11 / 1.5 window, full (zero-padded) convolution, L = 255; mean of the map. Returns float32 [B]."""
    _check_pair(x, y, "selectiongan_ssim")
    if x.shape[1] != 3:
        raise ValueError(f"selectiongan_ssim: images must be RGB [B,3,H,W], got {tuple(x.shape)}")
    dtype = _compute_dtype(x)
    luma = torch.tensor(_LUMA, dtype=dtype, device=x.device).view(1, 3, 1, 1)
    yx = (x.to(dtype) * luma).sum(1, keepdim=True) * 255.0
    yy = (y.to(dtype) * luma).sum(1, keepdim=True) * 255.0
    window = gaussian_window(11, 1.5, dtype, x.device)
    return _ssim_map(yx, yy, 255.0, window, 10, 0.01, 0.03).mean(dim=(1, 2, 3))


def selectiongan_psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR as in SelectionGAN's evaluation script: x, y [B,C,H,W] in [0,1];
    10 log10(255^2 / max(128^2 * MSE, 1e-4)). Returns float32 [B]."""
    _check_pair(x, y, "selectiongan_psnr")
    dtype = _compute_dtype(x)
    mse = (x.to(dtype) - y.to(dtype)).pow(2).mean(dim=(1, 2, 3))
    return _clamped_db(_SELECTIONGAN_SCALE * mse)


def selectiongan_sharpness_difference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sharpness difference as in SelectionGAN's evaluation script (see the module docstring):
    x, y [B,C,H,W] in [0,1], H, W >= 3. Returns float32 [B]."""
    _check_pair(x, y, "selectiongan_sharpness_difference")
    if min(x.shape[-2:]) < 3:
        raise ValueError(f"selectiongan_sharpness_difference: images need H, W >= 3, got {tuple(x.shape[-2:])}")
    dtype = _compute_dtype(x)
    x, y = x.to(dtype), y.to(dtype)

    def grads(img):
        # Interior pixels (1..H-2, 1..W-2); backward differences to the left and upper neighbours.
        centre = img[..., 1:-1, 1:-1]
        return (centre - img[..., 1:-1, :-2]).abs(), (centre - img[..., :-2, 1:-1]).abs()

    dx_x, dy_x = grads(x)
    dx_y, dy_y = grads(y)
    total = ((dx_x - dx_y).abs() + (dy_x - dy_y).abs()).sum(dim=(1, 2, 3))
    c, h, w = x.shape[1:]
    return _clamped_db(_SELECTIONGAN_SCALE * total / (c * h * w))


# ---------------------------------------------------------------------------------- segmentation
def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = 255) -> torch.Tensor:
    """Confusion counts int64 [K,K] (row: ground truth, column: prediction) on the inputs' device.

    pred, target: integer tensors of one shape (e.g. [B,H,W]). Pixels whose target equals
    ``ignore_index`` or lies outside [0, K) are not counted; predictions must lie in [0, K).
    Uses scatter_add into K*K+1 bins (the last one collects skipped pixels): no host sync."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError(f"pred and target must be integer class ids, got {pred.dtype} and {target.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    k = num_classes
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long().to(pred.device)
    valid = (target >= 0) & (target < k) & (pred >= 0) & (pred < k)
    if ignore_index is not None:
        valid &= target != ignore_index
    index = torch.where(valid, target * k + pred, torch.full_like(target, k * k))
    counts = torch.zeros(k * k + 1, dtype=torch.int64, device=pred.device)
    counts.scatter_add_(0, index, torch.ones_like(index))
    return counts[: k * k].view(k, k)


def segmentation_scores(confusion: torch.Tensor) -> dict:
    """mIoU, pixel accuracy, mean class accuracy and per-class IoU from a [K,K] confusion matrix.

    Returns {"miou", "pixel_accuracy", "mean_class_accuracy": float (nan when undefined),
    "per_class_iou": list of K floats (nan for classes absent from both prediction and ground truth),
    "classes_present": number of classes with ground-truth pixels, "pixels": counted pixels}."""
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be [K,K], got {tuple(confusion.shape)}")
    cm = confusion.double()
    tp = cm.diagonal()
    gt = cm.sum(1)
    predicted = cm.sum(0)
    union = gt + predicted - tp
    nan = torch.full_like(tp, float("nan"))
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    class_acc = torch.where(gt > 0, tp / gt.clamp_min(1), nan)
    total = cm.sum()
    # One transfer for all scalars; 0/0 gives nan for an empty matrix.
    summary = torch.stack([iou.nanmean(), tp.sum() / total, class_acc.nanmean(), (gt > 0).sum().double(),
                           total]).cpu().tolist()
    return {"miou": summary[0], "pixel_accuracy": summary[1], "mean_class_accuracy": summary[2],
            "per_class_iou": iou.cpu().tolist(), "classes_present": int(summary[3]), "pixels": int(summary[4])}


# Cityscapes labelId (0..33, and -1 for the license plate) -> trainId (0..18, 255 = ignore), from the
# official cityscapesScripts label table; DRN-D-105 and the other 19-class models predict trainIds.
CITYSCAPES_LABEL_TO_TRAIN_ID = (
    255, 255, 255, 255, 255, 255, 255,  # 0-6: unlabeled, ego vehicle, rectification border, out of roi, static, dynamic, ground
    0, 1, 255, 255,                     # 7 road, 8 sidewalk, 9 parking, 10 rail track
    2, 3, 4, 255, 255, 255,             # 11 building, 12 wall, 13 fence, 14 guard rail, 15 bridge, 16 tunnel
    5, 255, 6, 7,                       # 17 pole, 18 polegroup, 19 traffic light, 20 traffic sign
    8, 9, 10, 11, 12,                   # 21 vegetation, 22 terrain, 23 sky, 24 person, 25 rider
    13, 14, 15, 255, 255,               # 26 car, 27 truck, 28 bus, 29 caravan, 30 trailer
    16, 17, 18,                         # 31 train, 32 motorcycle, 33 bicycle
    255,                                # 34: no such labelId (the project's 35th channel) -> ignore
)


def cityscapes_label_to_train_id(labels: torch.Tensor) -> torch.Tensor:
    """Cityscapes labelIds [..] int (0..34) -> trainIds (0..18, 255 ignore), same shape, int64."""
    table = torch.tensor(CITYSCAPES_LABEL_TO_TRAIN_ID, dtype=torch.int64, device=labels.device)
    ids = labels.long()
    inside = (ids >= 0) & (ids < table.numel())
    return torch.where(inside, table[ids.clamp(0, table.numel() - 1)], torch.full_like(ids, 255))


@runtime_checkable
class SegmentationHook(Protocol):
    """images [B,3,H,W] float in [-1,1] -> class scores [B,K,H',W'] (see the module docstring).
    Optional attributes: ``ignore_index: int`` (default 255), ``target_transform(labels [B,H,W]) -> [B,H,W]``."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def segment(hook: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
            size: tuple[int, int]) -> tuple[torch.Tensor, int]:
    """Run a segmentation hook on images [B,3,H0,W0] in [-1,1]; returns (predicted class ids int64
    [B,H,W] at ``size`` = (H, W), number of classes K of the hook's scores)."""
    scores = hook(images)
    if isinstance(scores, (tuple, list)):
        raise ValueError("the segmentation hook must return one tensor [B,K,H',W'], got a "
                         f"{type(scores).__name__} (wrap the network and return its scores)")
    if scores.dim() != 4 or scores.shape[0] != images.shape[0]:
        raise ValueError(f"the segmentation hook must return [B,K,H',W'] for B={images.shape[0]}, "
                         f"got {tuple(scores.shape)}")
    if tuple(scores.shape[-2:]) != tuple(size):
        scores = F.interpolate(scores.float(), size=size, mode="bilinear", align_corners=False)
    return scores.argmax(dim=1), scores.shape[1]


def _import_factory(spec: str):
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"segmenter spec must be 'module.path:factory' or 'file.py:factory', got {spec!r}")
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"segmenter spec must be 'module.path:factory' or 'file.py:factory', got {spec!r}")
    if module_name.endswith(".py"):
        if not os.path.isfile(module_name):
            raise ValueError(f"segmenter file {module_name!r} does not exist")
        name = "semgan_segmenter_" + os.path.splitext(os.path.basename(module_name))[0]
        loader_spec = importlib.util.spec_from_file_location(name, module_name)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"segmenter module {module_name!r} could not be imported: {exc}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"segmenter factory {attr!r} not found in {module_name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"segmenter factory {spec!r} is not callable")
    return obj


def _takes_checkpoint(factory) -> bool:
    try:
        return "checkpoint" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def load_segmenter(spec: str, checkpoint: str | None = None,
                   device: str | torch.device = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """Build a segmentation hook from ``"module.path:factory"`` or ``"path/to/file.py:factory"``.

    With ``checkpoint``: ``factory(checkpoint=path)`` if the factory has a ``checkpoint`` parameter,
    else ``factory()`` and the file's state dict is loaded strictly into the returned module. The
    result is moved to ``device``, set to eval mode and frozen when it is an ``nn.Module``."""
    factory = _import_factory(spec)
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise ValueError(f"segmenter checkpoint {checkpoint!r} does not exist")
    if checkpoint is not None and _takes_checkpoint(factory):
        hook = factory(checkpoint=checkpoint)
    else:
        hook = factory()
        if checkpoint is not None:
            if not isinstance(hook, nn.Module):
                raise ValueError(f"segmenter {spec!r} is not an nn.Module and its factory takes no 'checkpoint' "
                                 "argument: cannot load the checkpoint")
            from ..models.segmenter import read_segmenter_state

            try:
                hook.load_state_dict(read_segmenter_state(checkpoint), strict=True)
            except RuntimeError as exc:
                raise ValueError(f"segmenter checkpoint {checkpoint!r} does not fit {spec!r}: {exc}") from exc
    if not callable(hook):
        raise ValueError(f"segmenter factory {spec!r} returned a non-callable {type(hook).__name__}")
    if isinstance(hook, nn.Module):
        hook = hook.to(device).eval().requires_grad_(False)
    return hook

