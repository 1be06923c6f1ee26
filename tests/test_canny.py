"""Canny (semgan_fast.edges) against a loop-based numpy transcription of the public canny.m pipeline,
hysteresis modes, per-image thresholds, device-side execution, and the `semgan edges` command."""
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from semgan_fast.cli import main
from semgan_fast.data import SyntheticScenes, collate
from semgan_fast.edges import canny, edge_image, gradient_nms, hysteresis, rgb_to_gray

GAUSS = np.array([[2, 4, 5, 4, 2], [4, 9, 12, 9, 4], [5, 12, 15, 12, 5], [4, 9, 12, 9, 4], [2, 4, 5, 4, 2]], float)
KGX = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
KGY = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)


def conv2_same(img, kernel):
    """MATLAB conv2(img, kernel, 'same'): true convolution, zero outside, loops."""
    h, w = img.shape
    k = kernel.shape[0]
    c = k // 2
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            acc = 0.0
            for p in range(k):
                for q in range(k):
                    y, x = i - p + c, j - q + c
                    if 0 <= y < h and 0 <= x < w:
                        acc += img[y, x] * kernel[p, q]
            out[i, j] = acc
    return out


def gray_reference(rgb_uint8):
    """rgb2gray of an [H, W, 3] uint8 image, rounded half away from zero (MATLAB uint8 conversion)."""
    r, g, b = (rgb_uint8[..., k].astype(float) for k in range(3))
    return np.floor(0.298936021293775 * r + 0.587043074451121 * g + 0.114020904255103 * b + 0.5)


def canny_reference(gray, low=0.075, high=0.175, mode="public", normalise=False):
    """canny.m step by step (the Gaussian's 1/159 only with normalise=True)."""
    a = conv2_same(gray, GAUSS / 159.0 if normalise else GAUSS)
    fx, fy = conv2_same(a, KGX), conv2_same(a, KGY)
    h, w = gray.shape
    arah2 = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            d = math.atan2(fy[i, j], fx[i, j]) * 180 / math.pi
            if d < 0:
                d = 360 + d
            if (0 <= d < 22.5) or (157.5 <= d < 202.5) or (337.5 <= d <= 360):
                arah2[i, j] = 0
            elif (22.5 <= d < 67.5) or (202.5 <= d < 247.5):
                arah2[i, j] = 45
            elif (67.5 <= d < 112.5) or (247.5 <= d < 292.5):
                arah2[i, j] = 90
            else:
                arah2[i, j] = 135
    mag = np.sqrt(fx ** 2 + fy ** 2)
    bw = np.zeros((h, w))
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            if arah2[i, j] == 0:
                keep = mag[i, j] == max(mag[i, j], mag[i, j + 1], mag[i, j - 1])
            elif arah2[i, j] == 45:
                keep = mag[i, j] == max(mag[i, j], mag[i + 1, j - 1], mag[i - 1, j + 1])
            elif arah2[i, j] == 90:
                keep = mag[i, j] == max(mag[i, j], mag[i + 1, j], mag[i - 1, j])
            else:
                keep = mag[i, j] == max(mag[i, j], mag[i + 1, j + 1], mag[i - 1, j - 1])
            bw[i, j] = mag[i, j] if keep else 0.0
    t_low, t_high = low * bw.max(), high * bw.max()
    res = np.zeros((h, w), dtype=bool)

    def strong_neighbour(i, j):
        return any(0 <= i + di < h and 0 <= j + dj < w and bw[i + di, j + dj] > t_high
                   for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0))

    for i in range(h):
        for j in range(w):
            if bw[i, j] < t_low:
                continue
            if bw[i, j] > t_high or strong_neighbour(i, j):
                res[i, j] = True
    if mode == "connected":   # breadth-first growth through weak pixels
        stack = [(i, j) for i in range(h) for j in range(w) if res[i, j]]
        while stack:
            i, j = stack.pop()
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    y, x = i + di, j + dj
                    if 0 <= y < h and 0 <= x < w and not res[y, x] and bw[y, x] >= t_low:
                        res[y, x] = True
                        stack.append((y, x))
    return res


def structured_images(n=2, h=14, w=18, seed=0):
    """uint8 RGB scenes with flat regions (NMS ties), rectangles, a disc and mild noise."""
    g = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        img = np.full((h, w, 3), g.integers(0, 80, 3), dtype=np.int64)
        y0, x0 = g.integers(1, h // 2), g.integers(1, w // 2)
        img[y0:y0 + h // 3, x0:x0 + w // 3] = g.integers(120, 255, 3)
        yy, xx = np.mgrid[:h, :w]
        img[(yy - h * 0.6) ** 2 + (xx - w * 0.7) ** 2 <= (h / 5) ** 2] = g.integers(60, 200, 3)
        img[g.random((h, w)) < 0.1] += g.integers(-20, 20, 3)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(images)


def to_tensor(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("mode", ["public", "connected"])
@pytest.mark.parametrize("kind", ["structured", "noise"])
def test_matches_loop_reference_exactly_in_fp64(mode, kind):
    if kind == "structured":
        images = structured_images(2, 14, 18, seed=1)
    else:
        images = np.random.default_rng(2).integers(0, 256, (2, 11, 16, 3)).astype(np.uint8)
    ours = canny(to_tensor(images), hysteresis_mode=mode, input_range="[0,255]", dtype=torch.float64)
    for b in range(images.shape[0]):
        ref = canny_reference(gray_reference(images[b]), mode=mode)
        assert np.array_equal(ours[b, 0].numpy(), ref), (b, np.argwhere(ours[b, 0].numpy() != ref))
    assert ours.any()


def test_gaussian_scale_does_not_matter_without_ties():
    """Dropping 1/159 only matters for exact ties; on noise images the normalised pipeline agrees."""
    images = np.random.default_rng(3).integers(0, 256, (1, 12, 13, 3)).astype(np.uint8)
    ours = canny(to_tensor(images), input_range="[0,255]", dtype=torch.float64)[0, 0].numpy()
    ref = canny_reference(gray_reference(images[0]), normalise=True)
    assert np.array_equal(ours, ref)


def test_gray_conversion_matches_rgb2gray_and_minus_one_one_range():
    images = np.random.default_rng(4).integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)
    ours = rgb_to_gray(to_tensor(images), "[0,255]", dtype=torch.float64)[:, 0].numpy()
    assert np.array_equal(ours, np.stack([gray_reference(im) for im in images]))
    as_model = to_tensor(images).double() / 127.5 - 1      # how the loaders scale 8-bit images
    assert torch.equal(rgb_to_gray(as_model, dtype=torch.float64)[:, 0], torch.from_numpy(ours))


def test_fp32_agrees_with_fp64():
    images = to_tensor(structured_images(3, 20, 24, seed=5))
    e32 = canny(images, input_range="[0,255]")
    e64 = canny(images, input_range="[0,255]", dtype=torch.float64)
    assert (e32 != e64).float().mean() <= 0.01


def test_thresholds_are_per_image():
    images = to_tensor(structured_images(3, 16, 16, seed=6))
    images[1] = (images[1].float() * 0.2).to(torch.uint8)      # a low-contrast image: own maximum
    together = canny(images, input_range="[0,255]", dtype=torch.float64)
    for b in range(3):
        alone = canny(images[b:b + 1], input_range="[0,255]", dtype=torch.float64)
        assert torch.equal(together[b:b + 1], alone)
    assert together[1].any()


def test_hysteresis_public_vs_connected_on_a_chain():
    bw = torch.zeros(1, 1, 5, 12, dtype=torch.float64)
    bw[0, 0, 2, 1] = 10.0                  # one strong pixel (> 0.175 * 10)
    bw[0, 0, 2, 2:11] = 1.0                # a chain of weak pixels (>= 0.075 * 10)
    bw[0, 0, 4, 11] = 0.5                  # below the low threshold
    public = hysteresis(bw, mode="public")[0, 0]
    connected = hysteresis(bw, mode="connected")[0, 0]
    assert public.sum() == 2 and public[2, 1] and public[2, 2]
    assert connected.sum() == 10 and connected[2, 1:11].all() and not connected[4, 11]
    # bounded propagation: k dilations reach k pixels along the chain; check_every=0 never syncs
    assert hysteresis(bw, mode="connected", max_iterations=3, check_every=0)[0, 0].sum() == 4
    assert torch.equal(hysteresis(bw, mode="connected", max_iterations=64, check_every=0), connected.view(1, 1, 5, 12))


def test_flat_image_and_validation():
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert not canny(flat).any()
    with pytest.raises(ValueError, match="H, W >= 3"):
        canny(torch.zeros(1, 3, 2, 8))
    with pytest.raises(ValueError, match="low <= high"):
        canny(torch.zeros(1, 3, 8, 8), low=0.5, high=0.1)
    with pytest.raises(ValueError, match="hysteresis mode"):
        canny(torch.rand(1, 3, 8, 8), hysteresis_mode="other")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        rgb_to_gray(torch.zeros(1, 2, 4, 4))


def test_runs_on_meta_device_without_host_sync():
    """Public mode (and connected with check_every=0) is pure device work: it runs on meta tensors."""
    images = torch.empty(2, 3, 16, 16, device="meta")
    assert canny(images).shape == (2, 1, 16, 16)
    assert canny(images, hysteresis_mode="connected", max_iterations=4, check_every=0).device.type == "meta"


def test_edge_image_and_nms_border():
    edges = canny(to_tensor(structured_images(1, 12, 12)), input_range="[0,255]")
    img = edge_image(edges)
    assert img.shape == (1, 3, 12, 12) and set(img.unique().tolist()) <= {-1.0, 1.0}
    bw = gradient_nms(rgb_to_gray(to_tensor(structured_images(1, 12, 12)), "[0,255]"))
    assert not bw[..., 0, :].any() and not bw[..., -1, :].any() and not bw[..., 0].any() and not bw[..., -1].any()


def test_synthetic_dataset_yields_edges_of_its_image():
    ds = SyntheticScenes(num_classes=5, height=16, width=24, num_samples=2, with_edges=True)
    item = ds[(1, True)]
    assert item["edge"].shape == (1, 16, 24) and item["edge"].dtype == torch.float32
    assert torch.equal(item["edge"].bool(), canny(item["image"][None])[0])
    assert collate([ds[0], ds[1]])["edge"].shape == (2, 1, 16, 24)
    assert "edge" not in SyntheticScenes(num_classes=5, height=16, width=24, num_samples=2)[0]


def test_edges_command_writes_pngs(tmp_path, capsys):
    out = tmp_path / "edges"
    assert main(["edges", "--preset", "synthetic", "--out", str(out), "--limit", "3", "--batch-size", "2",
                 "--device", "cpu"]) == 0
    assert sorted(os.listdir(out)) == ["000000.png", "000001.png", "000002.png"]
    arr = np.asarray(Image.open(out / "000001.png"))
    cfg_size = (64, 128)                                  # ecgan_synthetic preset
    assert arr.shape == cfg_size and set(np.unique(arr)) <= {0, 255}
    ds = SyntheticScenes(num_classes=8, height=64, width=128, num_samples=64, seed=0)
    assert np.array_equal(arr == 255, canny(ds[1]["image"][None])[0, 0].numpy())
    assert "hysteresis public" in capsys.readouterr().out
    assert main(["edges", "--preset", "synthetic", "--out", str(out), "--native-resolution"]) == 2
