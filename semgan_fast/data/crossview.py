"""Cross-view data (aerial -> ground): Dayton and CVUSA in the layout of the public LGGAN / SelectionGAN
cross-view code, and a synthetic paired-view dataset.

Public layout (Ha0Tang/LGGAN ``cross_view_translation``, ``data/aligned_dataset.py`` and README): one
image file per sample under ``root/<split>/`` (``train`` / ``test``; Dayton ``*.png``, CVUSA ``*.jpg``),
holding six equal-width panels side by side: [I_a aerial image | I_g ground image | S_a colour semantic
map (aerial) | S_g colour semantic map (ground) | l_a label image (aerial) | l_g label image (ground)].
The label images store class k as grey level 10 * (k + 1), k = 0..5 (the public generator builds its
six masks as ``label == 10, 20, ..., 60``); the semantic maps were produced by RefineNet (Cityscapes)
since the data sets have no ground-truth semantics.

``CrossViewPanels`` (Dayton, CVUSA): direction "a2g" -> source = panel 0, target = panel 1, target
labels = panel 5; "g2a" -> panels 1, 0, 4. Images are resized to the model size (bicubic) and scaled to
[-1, 1]; the label panel's first channel is resized with nearest (the public code resizes it bicubically,
so interpolated boundary values match no class there) and mapped to classes: the nearest of
``label_values`` within ``tolerance`` grey levels (JPEG-compressed CVUSA label panels are not exact);
anything else goes to the extra "other" class num_classes - 1 when num_classes = len(label_values) + 1
(the default 7), or to the nearest value when num_classes = len(label_values). The public code's random
286 -> 256 crop (72 -> 64 for Dayton 64x64) is replaced by a direct resize (the sampler supplies
flips only; the cross-view presets disable them, as the public scripts' --no_flip).

Items: {"label" int64 [H, W], "image" float [3, H, W] (target view), "source" float [3, H, W],
"instance" int64 [H, W] (= label: no instance maps), "index"}.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import torch
from PIL import Image

from .synthetic import SyntheticScenes, _class_appearance

LABEL_VALUES = (10, 20, 30, 40, 50, 60)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def panel_labels(grey: torch.Tensor, num_classes: int, label_values=LABEL_VALUES, tolerance: int = 4) -> torch.Tensor:
    """Label-panel grey levels [H, W] -> class ids int64 [H, W] (module docstring)."""
    values = torch.tensor(label_values, dtype=torch.int64)
    if num_classes not in (len(values), len(values) + 1):
        raise ValueError(f"num_classes must be {len(values)} (label values only) or {len(values) + 1} (+ 'other') "
                         f"for label values {tuple(label_values)}, got {num_classes}")
    dist = (grey.long().unsqueeze(-1) - values).abs()
    best = dist.argmin(dim=-1)
    if num_classes == len(values):
        return best
    return torch.where(dist.gather(-1, best.unsqueeze(-1)).squeeze(-1) <= tolerance, best, num_classes - 1)


class CrossViewPanels(torch.utils.data.Dataset):
    """Dayton / CVUSA six-panel files (module docstring). ``__getitem__(index)`` or ``((index, flip))``."""

    def __init__(self, root: str, split: str = "train", num_classes: int = 7, height: int = 256, width: int = 256,
                 direction: str = "a2g", label_values=LABEL_VALUES, tolerance: int = 4):
        if direction not in ("a2g", "g2a"):
            raise ValueError(f"direction must be 'a2g' or 'g2a', got {direction!r}")
        directory = os.path.join(root, split)
        if not os.path.isdir(directory):
            raise ValueError(f"cross-view split directory {directory!r} does not exist (expected root/<split>/ "
                             f"with six-panel images)")
        self.files = sorted(p for p in glob.glob(os.path.join(directory, "*"))
                            if p.lower().endswith(IMAGE_EXTENSIONS))
        if not self.files:
            raise ValueError(f"no .png/.jpg images in {directory!r}")
        self.num_classes, self.size, self.direction = num_classes, (height, width), direction
        self.label_values, self.tolerance = tuple(label_values), tolerance
        panel_labels(torch.zeros(1, 1, dtype=torch.int64), num_classes, self.label_values)  # validates num_classes

    def __len__(self) -> int:
        return len(self.files)

    def _panels(self, path: str):
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
                width, height = rgb.size
                if width < 6:
                    raise ValueError("narrower than six panels")
                step = width // 6
                return [rgb.crop((i * step, 0, (i + 1) * step if i < 5 else width, height)) for i in range(6)]
        except ValueError as exc:
            raise ValueError(f"cross-view image {path!r}: {exc}") from exc
        except Exception as exc:
            raise ValueError(f"cross-view image {path!r} could not be read: {exc}") from exc

    def _image(self, panel: Image.Image) -> torch.Tensor:
        arr = np.asarray(panel.resize((self.size[1], self.size[0]), Image.BICUBIC), dtype=np.float32)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1) / 127.5 - 1.0

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        panels = self._panels(self.files[index])
        src, tgt, lab = (0, 1, 5) if self.direction == "a2g" else (1, 0, 4)
        grey = np.asarray(panels[lab].resize((self.size[1], self.size[0]), Image.NEAREST))[..., 0]
        labels = panel_labels(torch.from_numpy(grey.astype(np.int64)), self.num_classes, self.label_values,
                              self.tolerance)
        source, image = self._image(panels[src]), self._image(panels[tgt])
        if flip:
            labels, source, image = labels.flip(-1), source.flip(-1), image.flip(-1)
        return {"label": labels, "image": image, "source": source, "instance": labels.clone(), "index": index}


class SyntheticCrossView(torch.utils.data.Dataset):
    """Synthetic paired views: ``SyntheticScenes``'s label map and image are the target view; the source
    view is a deterministic other rendering of the same scene: the layout turned upside down and rolled
    horizontally by a per-sample offset (the scene "seen from elsewhere"), rendered with a second class
    appearance (``seed + 1``) and the same noise model. Items as ``CrossViewPanels``."""

    def __init__(self, num_classes: int = 7, height: int = 64, width: int = 64, num_samples: int = 64, seed: int = 0,
                 index_offset: int = 0):
        self.scenes = SyntheticScenes(num_classes, height, width, num_samples, seed, index_offset=index_offset)
        self.source_appearance = _class_appearance(num_classes, seed + 1)

    def __len__(self) -> int:
        return len(self.scenes)

    def source_view(self, label: torch.Tensor, index: int) -> torch.Tensor:
        shift = (index * 7919 + 13) % label.shape[-1]
        warped = torch.roll(label.flip(-2), shifts=shift, dims=-1)
        colour, angle, freq, amp = self.source_appearance
        h, w = warped.shape
        ys = torch.arange(h, dtype=torch.float32).view(h, 1)
        xs = torch.arange(w, dtype=torch.float32).view(1, w)
        a, f, m = angle[warped], freq[warped], amp[warped]
        texture = m * torch.sin(f * (xs * torch.cos(a) + ys * torch.sin(a)))
        noise = 0.03 * torch.randn(3, h, w, generator=self.scenes._rng(index, 2))
        return (colour[warped].permute(2, 0, 1) + texture.unsqueeze(0) + noise).clamp(-1.0, 1.0)

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        target = self.scenes[index]   # unflipped
        source = self.source_view(target["label"], index + self.scenes.index_offset)
        label, image, instance = target["label"], target["image"], target["instance"]
        if flip:
            label, image, instance, source = label.flip(-1), image.flip(-1), instance.flip(-1), source.flip(-1)
        return {"label": label, "image": image, "source": source, "instance": instance, "index": index}
