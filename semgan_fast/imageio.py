"""PNG input/output: label maps (class ids), images, colourised labels and sample grids."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image


def label_palette(num_classes: int) -> torch.Tensor:
    """Distinct colours [K, 3] uint8 (bit-interleaved, the usual segmentation palette scheme)."""
    ids = torch.arange(num_classes)
    palette = torch.zeros(num_classes, 3, dtype=torch.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((ids >> (bit * 3 + channel)) & 1) << (7 - bit)
    return palette.to(torch.uint8)


def colorize_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """labels [B, H, W] int -> [B, 3, H, W] float in [-1, 1] with the palette's colours."""
    rgb = label_palette(num_classes).to(labels.device)[labels.long().clamp(0, num_classes - 1)]
    return rgb.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [-1, 1] -> [H, W, 3] uint8."""
    arr = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return arr.permute(1, 2, 0).cpu().numpy()


def save_image(image: torch.Tensor, path: str) -> None:
    """Writes a [3, H, W] float image in [-1, 1] as PNG (atomically)."""
    tmp = f"{path}.tmp{os.getpid()}.png"
    Image.fromarray(to_uint8(image)).save(tmp)
    os.replace(tmp, path)


def make_grid(columns: list[torch.Tensor], pad: int = 2) -> torch.Tensor:
    """Columns of images, each [B, 3, H, W] in [-1, 1], into one [3, B*(H+pad), N*(W+pad)] grid (rows = samples)."""
    batch, _, height, width = columns[0].shape
    grid = torch.ones(3, batch * (height + pad) - pad, len(columns) * (width + pad) - pad)
    for j, col in enumerate(columns):
        for i in range(batch):
            y, x = i * (height + pad), j * (width + pad)
            grid[:, y:y + height, x:x + width] = col[i].detach().float().cpu()
    return grid


def load_label_map(path: str, num_classes: int | None = None) -> torch.Tensor:
    """Reads a PNG of class ids (8/16-bit grey or palette mode) -> int64 [H, W].

    Raises ValueError naming the file if it is missing, unreadable, not single-channel, or holds ids
    >= num_classes.
    """
    if not os.path.isfile(path):
        raise ValueError(f"label map {path!r} does not exist")
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise ValueError(f"label map {path!r} must be a single-channel PNG of class ids, got mode {img.mode}")
            arr = np.array(img).astype(np.int64)
    except ValueError:
        raise
    except Exception as exc:  # PIL raises several types for corrupt files
        raise ValueError(f"label map {path!r} could not be read: {exc}") from exc
    if num_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"label map {path!r} holds class ids in [{arr.min()}, {arr.max()}], "
                         f"outside [0, {num_classes})")
    return torch.from_numpy(arr)


def save_label_map(labels: torch.Tensor, path: str) -> None:
    """Writes an int [H, W] class-id map as 8-bit (ids < 256) or 16-bit grey PNG."""
    arr = labels.cpu().numpy()
    if arr.max(initial=0) < 256:
        Image.fromarray(arr.astype(np.uint8)).save(path)
    else:
        Image.fromarray(arr.astype(np.uint16)).save(path)
