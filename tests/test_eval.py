"""Evaluation package: FID maths and network, image metrics, segmentation scores, ``evaluate``.

References are computed independently in numpy (np.cov, eigenvalues of the non-symmetric product
S1 S2, sliding-window SSIM, a transcription of SelectionGAN's Lua measures) or by hand."""
import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch

from semgan_fast.eval import fid as fidmod
from semgan_fast.eval.fid import (FID_WEIGHTS_FILENAME, FeatureStats, FIDInceptionV3, fid_from_features,
                                  fid_from_stats, frechet_distance, load_inception, resolve_inception_weights)
from semgan_fast.eval.metrics import (cityscapes_label_to_train_id, confusion_matrix, load_segmenter, psnr,
                                      segmentation_scores, selectiongan_psnr, selectiongan_sharpness_difference,
                                      selectiongan_ssim, sharpness_difference, ssim)


# ------------------------------------------------------------------------------- numpy references
def np_fid(x1: np.ndarray, x2: np.ndarray) -> float:
    mu1, mu2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    return np_frechet(mu1, s1, mu2, s2)


def np_frechet(mu1, s1, mu2, s2) -> float:
    # tr sqrt(S1 S2) from the eigenvalues of the non-symmetric product (real, >= 0 up to rounding).
    ev = np.linalg.eigvals(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


def np_gauss2d(size=11, sigma=1.5):
    ax = np.arange(size) - size // 2
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def np_ssim_plane(a: np.ndarray, b: np.ndarray, L: float, pad: int = 0) -> float:
    """Mean SSIM of two 2-D planes; statistics over every 11x11 window of the (zero-padded) planes."""
    if pad:
        a, b = np.pad(a, pad), np.pad(b, pad)
    w = np_gauss2d()
    wa = np.lib.stride_tricks.sliding_window_view(a, (11, 11))
    wb = np.lib.stride_tricks.sliding_window_view(b, (11, 11))
    mu_a, mu_b = (wa * w).sum((-1, -2)), (wb * w).sum((-1, -2))
    va = (wa * wa * w).sum((-1, -2)) - mu_a ** 2
    vb = (wb * wb * w).sum((-1, -2)) - mu_b ** 2
    cab = (wa * wb * w).sum((-1, -2)) - mu_a * mu_b
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * cab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return float(m.mean())


def lua_shift_grad(img: np.ndarray, axis: int) -> np.ndarray:
    """|shift(img) - img| with SpatialZeroPadding(1,-1,0,0) (axis=2) or (0,0,1,-1) (axis=1), [C,H,W]."""
    shifted = np.zeros_like(img)
    if axis == 2:
        shifted[:, :, 1:] = img[:, :, :-1]
    else:
        shifted[:, 1:, :] = img[:, :-1, :]
    return np.abs(shifted - img)


def lua_sharpness(pred: np.ndarray, true: np.ndarray) -> float:
    c, h, w = true.shape
    crop = (slice(None), slice(1, h - 1), slice(1, w - 1))
    diff = (np.abs(lua_shift_grad(pred, 2)[crop] - lua_shift_grad(true, 2)[crop])
            + np.abs(lua_shift_grad(pred, 1)[crop] - lua_shift_grad(true, 1)[crop]))
    err = 128 * 128 * diff.sum() / (c * h * w)
    return 10 * math.log10(255 * 255 / max(err, 1e-4))


# ---------------------------------------------------------------------------------------- FID maths
def test_feature_stats_streaming_matches_numpy():
    x = torch.randn(37, 5, dtype=torch.float64) * 3 + 10          # large mean: cancellation-prone
    stats = FeatureStats()
    for chunk in x.split([1, 9, 4, 23]):
        stats.update(chunk)
    assert stats.count == 37
    np.testing.assert_allclose(stats.mean.numpy(), x.numpy().mean(0), rtol=1e-13)
    np.testing.assert_allclose(stats.cov().numpy(), np.cov(x.numpy(), rowvar=False), rtol=1e-11, atol=1e-12)
    np.testing.assert_array_equal(stats.rows().numpy(), x.numpy())
    with pytest.raises(ValueError, match="width"):
        stats.update(torch.randn(2, 6))


def test_frechet_distance_diagonal_closed_form():
    d = 6
    mu1, mu2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    v1, v2 = torch.rand(d, dtype=torch.float64) + 0.1, torch.rand(d, dtype=torch.float64) * 3
    expected = float(((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * (v1 * v2).sqrt()).sum())
    got = frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2))
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert frechet_distance(mu1, torch.diag(v1), mu1, torch.diag(v1)) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_full_covariances_match_numpy_eig():
    d = 8
    a, b = torch.randn(d, d, dtype=torch.float64), torch.randn(d, d, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64), b @ b.T   # non-commuting SPD matrices
    mu1, mu2 = torch.randn(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    expected = np_frechet(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy())
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n1,n2,d", [(12, 9, 20), (60, 45, 10)])
def test_fid_row_and_covariance_routes_match_numpy(n1, n2, d):
    """Rank-deficient (N < D) and full-rank cases: the row route (nuclear norm of A B^T) and the
    covariance route (eigh of sqrt(S1) S2 sqrt(S1)) both match numpy's eigenvalues of S1 S2."""
    x1 = torch.randn(n1, d, dtype=torch.float64) * 2 + 1
    x2 = torch.randn(n2, d, dtype=torch.float64) @ torch.randn(d, d, dtype=torch.float64) * 0.5
    expected = np_fid(x1.numpy(), x2.numpy())
    by_rows = fid_from_features(x1, x2)
    a, b = FeatureStats(keep_rows=0), FeatureStats(keep_rows=0)       # forces the covariance route
    for chunk in x1.split(5):
        a.update(chunk)
    for chunk in x2.split(7):
        b.update(chunk)
    assert a.rows() is None
    by_cov = fid_from_stats(a, b)
    assert by_rows == pytest.approx(expected, rel=1e-6)
    assert by_cov == pytest.approx(expected, rel=1e-6)
    assert by_rows == pytest.approx(by_cov, rel=1e-9)
    assert fid_from_features(x1, x1.clone()) == pytest.approx(0.0, abs=1e-9)


def test_fid_needs_two_rows():
    with pytest.raises(ValueError, match="2 rows"):
        fid_from_features(torch.randn(1, 4), torch.randn(3, 4))


# ------------------------------------------------------------------------------------ FID network
def _published_style_state(net: FIDInceptionV3) -> dict:
    # The published file predates BatchNorm's num_batches_tracked buffers.
    return {k: v.clone() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def fid_net():
    return FIDInceptionV3()


def test_inception_key_names_and_shapes(fid_net):
    sd = fid_net.state_dict()
    # 94 BasicConv2d: stem 5, 3 x A (7), B (4), 4 x C (10), D (6), 2 x E (9); no auxiliary classifier.
    assert sum(k.endswith(".conv.weight") for k in sd) == 94
    assert not any(k.startswith("AuxLogits") for k in sd)
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.bn.running_var": (192,),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7dbl_5.conv.weight": (192, 128, 1, 7),
        "Mixed_6e.branch7x7_3.conv.weight": (192, 192, 7, 1),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # torchvision documents 27,161,264 parameters for inception_v3 (1000 classes, with the auxiliary
    # head: 768*128 + 2*128 + 128*768*25 + 2*768 + 768*1000 + 1000 = 3,326,696; main fc 2,049,000):
    # the shared trunk must hold exactly the rest.
    trunk = sum(p.numel() for name, p in fid_net.named_parameters() if not name.startswith("fc."))
    assert trunk == 27_161_264 - 3_326_696 - 2_049_000


def test_inception_fid_pooling_variants(fid_net):
    # Padding-excluding average: a constant map stays constant at the borders.
    ones = torch.ones(1, 2, 5, 6)
    torch.testing.assert_close(fidmod._avg_pool_no_pad(ones), ones)
    assert fid_net.Mixed_7b.pool == "avg" and fid_net.Mixed_7c.pool == "max"
    assert fid_net.Mixed_7b.branch_pool.bn.eps == 1e-3


def test_inception_loads_from_torch_hub_cache_and_forwards(tmp_path, monkeypatch, fid_net):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ValueError, match=FID_WEIGHTS_FILENAME) as info:
        resolve_inception_weights()
    assert os.path.join(str(tmp_path), "hub", "checkpoints") in str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_inception_weights(str(tmp_path / "nope.pth"))

    state = _published_style_state(fid_net)
    target = tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_FILENAME
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    net = load_inception()                               # found in the hub cache, no path given
    for key, value in state.items():
        torch.testing.assert_close(net.state_dict()[key], value, rtol=0, atol=0)
    assert not net.training
    with torch.inference_mode():
        feats = net(torch.rand(2, 3, 40, 56) * 2 - 1)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and (feats >= 0).all()   # pool of ReLU outputs

    bad = dict(state)
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="unexpected"):
        load_inception(str(tmp_path / "bad.pth"))


# ------------------------------------------------------------------------------------ image metrics
def test_ssim_psnr_sd_identical_images():
    x = torch.rand(2, 3, 16, 20)
    torch.testing.assert_close(ssim(x, x.clone()), torch.ones(2), rtol=0, atol=1e-6)
    assert torch.isinf(psnr(x, x.clone())).all()
    assert torch.isinf(sharpness_difference(x, x.clone())).all()
    # The cross-view script clamps its error at 1e-4: 10 log10(255^2 / 1e-4).
    cap = 10 * math.log10(255 ** 2 / 1e-4)
    torch.testing.assert_close(selectiongan_psnr(x, x), torch.full((2,), cap), rtol=1e-6, atol=0)
    torch.testing.assert_close(selectiongan_sharpness_difference(x, x), torch.full((2,), cap), rtol=1e-6, atol=0)
    torch.testing.assert_close(selectiongan_ssim(x, x), torch.ones(2), rtol=0, atol=1e-6)


def test_psnr_and_sharpness_hand_cases():
    x = torch.zeros(1, 3, 8, 9)
    y = torch.full_like(x, 0.1)
    assert psnr(x, y).item() == pytest.approx(20.0, abs=1e-4)                 # MSE 0.01
    assert psnr(x * 2, y * 2, data_range=2.0).item() == pytest.approx(20.0, abs=1e-4)
    ramp = torch.arange(9, dtype=torch.float32).mul(0.1).expand(1, 3, 8, 9).contiguous()
    # |dx| = 0.1, |dy| = 0 for the ramp, 0 for the flat image: mean grad diff 0.1 -> 10 dB.
    assert sharpness_difference(x, ramp).item() == pytest.approx(10.0, abs=1e-4)
    assert sharpness_difference(ramp, x).item() == pytest.approx(10.0, abs=1e-4)
    # Sharpness ignores a constant offset; PSNR does not.
    assert torch.isinf(sharpness_difference(x, y)).all()


def test_ssim_matches_numpy_reference():
    x = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    got = ssim(x, y)
    for b in range(2):
        ref = np.mean([np_ssim_plane(x[b, c].numpy(), y[b, c].numpy(), 1.0) for c in range(3)])
        assert got[b].item() == pytest.approx(ref, abs=1e-10)
    # float32 path agrees with the float64 one.
    torch.testing.assert_close(ssim(x.float(), y.float()).double(), got, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="window"):
        ssim(torch.rand(1, 3, 8, 30), torch.rand(1, 3, 8, 30))


def test_selectiongan_conventions_match_lua_transcription():
    x = torch.rand(2, 3, 14, 15, dtype=torch.float64)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    ssim_v, psnr_v, sd_v = selectiongan_ssim(y, x), selectiongan_psnr(y, x), selectiongan_sharpness_difference(y, x)
    for b in range(2):
        t, p = x[b].numpy(), y[b].numpy()
        luma = lambda im: (0.299 * im[0] + 0.587 * im[1] + 0.114 * im[2]) * 255  # noqa: E731
        assert ssim_v[b].item() == pytest.approx(np_ssim_plane(luma(t), luma(p), 255.0, pad=10), abs=1e-10)
        err = 128 * 128 * ((p - t) ** 2).mean()
        assert psnr_v[b].item() == pytest.approx(10 * math.log10(255 ** 2 / max(err, 1e-4)), abs=1e-9)
        assert sd_v[b].item() == pytest.approx(lua_sharpness(p, t), abs=1e-9)


def test_standard_sharpness_matches_numpy():
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    y = torch.rand_like(x)
    got = sharpness_difference(x, y)
    for b in range(2):
        def g(im):
            return np.abs(np.diff(im, axis=2))[:, :-1, :] + np.abs(np.diff(im, axis=1))[:, :, :-1]
        m = np.abs(g(y[b].numpy()) - g(x[b].numpy())).mean()
        assert got[b].item() == pytest.approx(10 * math.log10(1 / m), abs=1e-9)


# --------------------------------------------------------------------------------- segmentation
def test_confusion_matrix_and_scores_hand_case():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 0, 2]]])
    cm = confusion_matrix(pred, target, 3, ignore_index=255)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    s = segmentation_scores(cm)
    assert s["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert s["pixel_accuracy"] == pytest.approx(3 / 5)
    assert s["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert s["pixels"] == 5 and s["classes_present"] == 3
    # A fourth class absent from both prediction and ground truth is left out of the mean; labels
    # outside [0, K) are not counted.
    target4 = torch.tensor([[[0, 0, 1], [1, 2, 7]]])
    s4 = segmentation_scores(confusion_matrix(pred, target4, 4, ignore_index=None))
    assert s4["miou"] == pytest.approx(s["miou"]) and math.isnan(s4["per_class_iou"][3])


def test_confusion_matrix_matches_numpy_bincount():
    k = 5
    target = torch.randint(0, k + 1, (3, 7, 9))
    target[target == k] = 255
    pred = torch.randint(0, k, (3, 7, 9))
    t, p = target.numpy().ravel(), pred.numpy().ravel()
    keep = t != 255
    ref = np.bincount(k * t[keep] + p[keep], minlength=k * k).reshape(k, k)
    np.testing.assert_array_equal(confusion_matrix(pred, target, k).numpy(), ref)


def test_cityscapes_train_ids():
    ids = torch.tensor([0, 6, 7, 8, 11, 17, 19, 20, 23, 24, 26, 33, 34, -1])
    assert cityscapes_label_to_train_id(ids).tolist() == [255, 255, 0, 1, 2, 5, 6, 7, 10, 11, 13, 18, 255, 255]
    mapped = cityscapes_label_to_train_id(torch.arange(35))
    assert sorted(set(mapped.tolist()) - {255}) == list(range(19))


SEGMENTER_SOURCE = '''
import torch

class TinySeg(torch.nn.Module):
    ignore_index = 255

    def __init__(self, k=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, k, 1)

    def forward(self, x):
        return self.conv(x)[..., ::2, ::2]      # half resolution: the evaluator resizes the scores

def make():
    return TinySeg()

def make_with_checkpoint(checkpoint):
    model = TinySeg()
    model.load_state_dict(torch.load(checkpoint))
    model.loaded_from = checkpoint
    return model
'''


@pytest.fixture
def segmenter_file(tmp_path):
    path = tmp_path / "tiny_segmenter.py"
    path.write_text(SEGMENTER_SOURCE)
    return str(path)


def test_load_segmenter_spec_and_checkpoint(tmp_path, segmenter_file):
    plain = load_segmenter(f"{segmenter_file}:make")
    state = {k: torch.randn_like(v) for k, v in plain.state_dict().items()}
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, wrapped)
    loaded = load_segmenter(f"{segmenter_file}:make", str(wrapped))
    torch.testing.assert_close(loaded.conv.weight, state["conv.weight"], rtol=0, atol=0)
    assert not loaded.training and not loaded.conv.weight.requires_grad
    raw = tmp_path / "raw.pth"
    torch.save(state, raw)
    custom = load_segmenter(f"{segmenter_file}:make_with_checkpoint", str(raw))
    assert custom.loaded_from == str(raw)
    torch.testing.assert_close(custom.conv.bias, state["conv.bias"], rtol=0, atol=0)
    scores = loaded(torch.zeros(2, 3, 8, 10))
    assert scores.shape == (2, 8, 4, 5)
    with pytest.raises(ValueError, match="module.path:factory"):
        load_segmenter("no_colon_here")
    with pytest.raises(ValueError, match="not found"):
        load_segmenter(f"{segmenter_file}:missing")
    with pytest.raises(ValueError, match="could not be imported"):
        load_segmenter("semgan_fast_no_such_module:make")
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="does not fit"):
        load_segmenter(f"{segmenter_file}:make", str(tmp_path / "wrong.pth"))


# --------------------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from semgan_fast.config import preset
    from semgan_fast.train import Trainer

    out = tmp_path_factory.mktemp("run")
    cfg = preset("synthetic")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, height=32, width=64),
                              data=dataclasses.replace(cfg.data, num_samples=4),
                              train=dataclasses.replace(cfg.train, iterations=1, out_dir=str(out)))
    torch.manual_seed(0)
    return Trainer(cfg, "cpu").save()


@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory) -> str:
    # Variance-preserving random weights so the pool3 features are O(1), not vanishing.
    net = FIDInceptionV3()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / FID_WEIGHTS_FILENAME
    torch.save(_published_style_state(net), path)
    return str(path)


def test_evaluate_real_checkpoint_path(tmp_path, tiny_checkpoint, segmenter_file, random_inception_file):
    from semgan_fast.eval import evaluate
    from semgan_fast.models import LGGANModel
    from semgan_fast.config import ExperimentConfig
    from semgan_fast.data import build_dataset
    from semgan_fast.train.checkpoint import load_checkpoint

    seg_state = tmp_path / "seg.pth"
    torch.save(load_segmenter(f"{segmenter_file}:make").state_dict(), seg_state)
    out_json = tmp_path / "report" / "eval.json"
    report = evaluate(tiny_checkpoint, num_images=2, batch_size=2, device="cpu",
                      inception_weights=random_inception_file,
                      segmenter=f"{segmenter_file}:make", segmenter_checkpoint=str(seg_state),
                      out_json=str(out_json))
    assert json.loads(out_json.read_text()) == report
    assert report["step"] == 0 and report["num_images"] == 2 and report["device"] == "cpu"
    assert report["dataset"] == {"name": "synthetic", "root": None, "split": None, "size": 4}
    m = report["metrics"]
    assert m["fid"] is not None and m["fid"] > 0 and report["fid_details"]["num_real"] == 2
    assert 0 <= m["miou"] <= 1 and 0 <= m["pixel_accuracy"] <= 1
    assert report["segmentation"]["num_classes"] == 8 and len(report["segmentation"]["per_class_iou"]) == 8
    assert report["segmentation"]["pixels"] == 2 * 32 * 64
    assert "torch" in report["versions"]

    # Independent recomputation of the paired metrics from the checkpoint's generator.
    state = load_checkpoint(tiny_checkpoint)
    cfg = ExperimentConfig.from_dict(state["config"])
    model = LGGANModel(dataclasses.replace(cfg.model, use_vgg=False))
    model.load_state_dict({k: v for k, v in state["model"].items() if not k.startswith("vgg.")})
    model.eval()
    ds = build_dataset(cfg.data, cfg.model)
    labels = torch.stack([ds[i]["label"] for i in range(2)])
    instance = torch.stack([ds[i]["instance"] for i in range(2)])
    real = torch.stack([ds[i]["image"] for i in range(2)])
    with torch.no_grad():
        fake = model.generate(labels, instance).final.clamp(-1, 1)
    mse = ((fake - real) / 2).pow(2).mean(dim=(1, 2, 3)).double()
    assert m["psnr"] == pytest.approx((10 * torch.log10(1 / mse)).mean().item(), abs=1e-3)
    assert -1 <= m["ssim"] <= 1 and m["crossview_psnr"] > m["psnr"]   # the script's 255/128 scale adds ~6 dB


def test_evaluate_oracle_generator_and_constant_segmenter(tiny_checkpoint):
    from semgan_fast.eval import evaluate

    class ClassZero(torch.nn.Module):
        def forward(self, x):
            scores = torch.zeros(x.shape[0], 8, x.shape[2], x.shape[3])
            scores[:, 0] = 1
            return scores

    report = evaluate(tiny_checkpoint, num_images=3, batch_size=2, device="cpu", fid=False,
                      segmenter=ClassZero(), generator_fn=lambda batch: batch["image"])
    m = report["metrics"]
    assert m["ssim"] == pytest.approx(1.0, abs=1e-6) and m["crossview_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["psnr"] is None and "MSE 0" in report["notes"]["psnr"]
    assert m["fid"] is None and "disabled" in report["notes"]["fid"]
    # Constant prediction "class 0": accuracy = share of class-0 pixels, mIoU = IoU_0 / #classes present.
    from semgan_fast.config import ExperimentConfig
    from semgan_fast.data import build_dataset
    from semgan_fast.train.checkpoint import load_checkpoint
    cfg = ExperimentConfig.from_dict(load_checkpoint(tiny_checkpoint)["config"])
    ds = build_dataset(cfg.data, cfg.model)
    labels = torch.stack([ds[i]["label"] for i in range(3)])
    share0 = (labels == 0).double().mean().item()
    present = len(labels.unique())
    assert m["pixel_accuracy"] == pytest.approx(share0)
    assert m["miou"] == pytest.approx(share0 / present)


def test_evaluate_fid_availability(tmp_path, monkeypatch, tiny_checkpoint):
    from semgan_fast.eval import evaluate

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))            # empty hub cache
    with pytest.raises(ValueError, match="does not exist"):
        evaluate(tiny_checkpoint, device="cpu", inception_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match=FID_WEIGHTS_FILENAME):
        evaluate(tiny_checkpoint, device="cpu", fid=True)
    with pytest.raises(ValueError, match="contradicts"):
        evaluate(tiny_checkpoint, device="cpu", fid=False, inception_weights="x.pth")
    report = evaluate(tiny_checkpoint, num_images=2, batch_size=2, device="cpu",
                      generator_fn=lambda batch: -batch["image"],
                      segmenter=lambda images: torch.zeros(images.shape[0], 5, 4, 4))
    assert report["metrics"]["fid"] is None and FID_WEIGHTS_FILENAME in report["notes"]["fid"]
    assert report["generator"] == "generator_fn"
    # A 5-class segmenter against 8 label channels without a target_transform is flagged.
    assert "predicts 5 classes" in report["notes"]["segmentation"]
    assert report["segmentation"]["num_classes"] == 5 and 0 <= report["metrics"]["miou"] <= 1
    with pytest.raises(ValueError, match="expected images of shape"):
        evaluate(tiny_checkpoint, num_images=1, device="cpu", generator_fn=lambda batch: batch["image"][:, :1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluate_on_cuda_matches_cpu(tiny_checkpoint, random_inception_file):
    from semgan_fast.eval import evaluate

    x = torch.rand(2, 3, 20, 24)
    y = torch.rand(2, 3, 20, 24)
    for fn in (ssim, psnr, sharpness_difference, selectiongan_ssim, selectiongan_psnr,
               selectiongan_sharpness_difference):
        torch.testing.assert_close(fn(x.cuda(), y.cuda()).cpu(), fn(x, y), rtol=1e-4, atol=1e-4)
    pred, target = torch.randint(0, 4, (2, 5, 6)), torch.randint(0, 5, (2, 5, 6))
    assert torch.equal(confusion_matrix(pred.cuda(), target.cuda(), 4).cpu(), confusion_matrix(pred, target, 4))
    kwargs = dict(num_images=3, batch_size=2, inception_weights=random_inception_file)
    on_gpu = evaluate(tiny_checkpoint, device="cuda", **kwargs)["metrics"]
    on_cpu = evaluate(tiny_checkpoint, device="cpu", **kwargs)["metrics"]
    for key in ("ssim", "psnr", "sharpness_difference", "crossview_ssim"):
        assert on_gpu[key] == pytest.approx(on_cpu[key], rel=1e-3, abs=1e-3), key
    assert on_gpu["fid"] == pytest.approx(on_cpu["fid"], rel=0.05, abs=1e-3)
