"""Cross-view LGGAN: encoder input (source view + target semantics), dual discriminator losses (Eq. 8-9),
ablation rows, Dayton/CVUSA panel loading, the synthetic paired views, Trainer steps, checkpoint round
trip, CLI generate/edges and the pixel-level metrics through ``evaluate(generator_fn=...)``."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from semgan_fast.config import CrossViewConfig, DataConfig, ExperimentConfig, TrainConfig, preset, preset_for
from semgan_fast.data import build_dataset, collate
from semgan_fast.data.crossview import CrossViewPanels, SyntheticCrossView, panel_labels
from semgan_fast.models import CrossViewModel, build_generator_fn, build_inference_model, build_model
from semgan_fast.models.losses import feature_matching_loss, hinge_d_loss, hinge_g_loss
from semgan_fast.train import Trainer


def tiny(**kw) -> CrossViewConfig:
    base = dict(num_classes=4, height=32, width=32, ngf=4, spade_hidden=8, num_resblocks=1, ndf=4, n_layers_d=2,
                use_vgg=False, param_free_norm="batch")
    base.update(kw)
    return CrossViewConfig(**base)


def batch(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, cfg.num_classes, (b, cfg.height // 8, cfg.width // 8), generator=g)
    labels = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)
    image = torch.rand(b, 3, cfg.height, cfg.width, generator=g) * 2 - 1
    source = torch.rand(b, 3, cfg.height, cfg.width, generator=g) * 2 - 1
    return labels, image, source


def test_generator_reads_source_and_semantics():
    cfg = tiny()
    model = build_model(cfg).eval()
    assert isinstance(model, CrossViewModel)
    assert model.generator.encoder.conv1.weight.shape[1] == cfg.num_classes + 3     # [one-hot S_g | I_a]
    labels, _, source = batch(cfg)
    with torch.no_grad():
        out = model.generate(labels, source)
        other_source = model.generate(labels, source.flip(-1))
        other_labels = model.generate((labels + 1) % cfg.num_classes, source)
    assert out.final.shape == (2, 3, 32, 32) and out.per_class.shape == (2, 4, 3, 32, 32)
    assert torch.equal(out.source, source)
    assert not torch.allclose(out.final, other_source.final) and not torch.allclose(out.final, other_labels.final)
    with pytest.raises(ValueError, match="source must be"):
        model.generate(labels, None)
    with pytest.raises(ValueError, match="use_instance_edge=False"):
        build_model(tiny(use_instance_edge=True))


@pytest.mark.parametrize("with_image_d", [True, False])
def test_dual_discriminator_losses_follow_eq8_and_eq9(with_image_d):
    cfg = tiny(use_image_discriminator=with_image_d, lambda_l1=0.0, lambda_local_l1=0.0, lambda_class=0.0)
    model = build_model(cfg).eval()
    labels, image, source = batch(cfg)
    total, terms, out = model.generator_loss(labels, image, source)
    d = model.discriminator
    assert (d.image is not None) == with_image_d
    fakes = [out.final, out.global_image, out.local_image]
    with torch.no_grad():
        want_gan = sum(hinge_g_loss(d.semantic(labels, None, f), 1) for f in fakes)
        real_s = d.semantic(labels, None, image)
        want_fm = sum(feature_matching_loss(d.semantic(labels, None, f), real_s, 1) for f in fakes)
        want_fake = sum(hinge_d_loss(d.semantic(labels, None, f), 1, False) for f in fakes)
        want_real = 3 * hinge_d_loss(real_s, 1, True)
        if with_image_d:
            real_i = d.image(source, image)
            want_gan = want_gan + sum(hinge_g_loss(d.image(source, f), 1) for f in fakes)
            want_fm = want_fm + sum(feature_matching_loss(d.image(source, f), real_i, 1) for f in fakes)
            want_fake = want_fake + sum(hinge_d_loss(d.image(source, f), 1, False) for f in fakes)
            want_real = want_real + 3 * hinge_d_loss(real_i, 1, True)
    torch.testing.assert_close(terms["g_gan"], want_gan)
    torch.testing.assert_close(terms["g_feat"], 10 * want_fm)
    _, d_terms = model.discriminator_loss(labels, image, out, source)
    torch.testing.assert_close(d_terms["d_fake"], want_fake)
    torch.testing.assert_close(d_terms["d_real"], want_real)


@pytest.mark.parametrize("stage", ["S1", "S3", "S5"])
def test_ablation_rows_and_backward(stage):
    cfg = tiny().ablation(stage)
    assert isinstance(cfg, CrossViewConfig)
    model = build_model(cfg)
    labels, image, source = batch(cfg)
    total, terms, out = model.generator_loss(labels, image, source)
    assert ("g_local_l1" in terms) == (stage != "S1") and ("g_class" in terms) == (stage == "S5")
    assert "g_l1" in terms and torch.isfinite(total)
    total.backward()
    assert model.generator.encoder.conv1.weight.grad.abs().sum() > 0
    d_total, _ = model.discriminator_loss(labels, image, model.generate(labels, source), source)
    d_total.backward()
    if cfg.use_image_discriminator:
        assert model.discriminator.image.scales[0].conv0.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------- data
def write_panels(path, h, w, seed, label_values=(10, 20, 30, 40, 50, 60), jpeg=False):
    """A six-panel sample: panel p is filled with grey 40 * p + noise, label panels hold label values."""
    g = np.random.default_rng(seed)
    panels = [np.clip(40 * p + g.integers(0, 30, (h, w, 3)), 0, 255) for p in range(4)]
    la = np.repeat(np.array(label_values)[g.integers(0, 6, (h // 4, w // 4))], 4, 0).repeat(4, 1)
    lg = la.copy()
    lg[: h // 4, : w // 4] = 200                              # a value of no class -> "other"
    panels += [np.stack([la] * 3, -1), np.stack([lg] * 3, -1)]
    strip = np.concatenate(panels, axis=1).astype(np.uint8)
    Image.fromarray(strip).save(path, quality=95) if jpeg else Image.fromarray(strip).save(path)
    return strip


def test_crossview_panels_layout_directions_and_labels(tmp_path):
    split = tmp_path / "train"
    split.mkdir()
    strip = write_panels(split / "a.png", 16, 16, 0)
    write_panels(split / "b.jpg", 16, 16, 1, jpeg=True)
    ds = CrossViewPanels(str(tmp_path), "train", num_classes=7, height=16, width=16)
    assert len(ds) == 2
    item = ds[0]
    assert item["source"].shape == item["image"].shape == (3, 16, 16)
    torch.testing.assert_close(item["source"], torch.from_numpy(strip[:, :16].astype(np.float32)).permute(2, 0, 1)
                               / 127.5 - 1, atol=1e-5, rtol=0)
    torch.testing.assert_close(item["image"], torch.from_numpy(strip[:, 16:32].astype(np.float32)).permute(2, 0, 1)
                               / 127.5 - 1, atol=1e-5, rtol=0)
    want = torch.from_numpy(strip[:, 80:96, 0].astype(np.int64)) // 10 - 1
    want[:4, :4] = 6
    assert torch.equal(item["label"], want)
    g2a = CrossViewPanels(str(tmp_path), "train", num_classes=7, height=16, width=16, direction="g2a")[0]
    assert torch.equal(g2a["source"], item["image"]) and torch.equal(g2a["image"], item["source"])
    jpeg = ds[1]["label"]                                       # JPEG noise: nearest value within tolerance
    assert jpeg.min() >= 0 and jpeg.max() <= 6 and (jpeg[:4, :4] == 6).all()
    flipped = ds[(0, True)]
    assert torch.equal(flipped["label"], item["label"].flip(-1))
    assert torch.equal(flipped["source"], item["source"].flip(-1))
    assert torch.equal(panel_labels(torch.tensor([[10, 13, 200]]), 6), torch.tensor([[0, 0, 5]]))
    with pytest.raises(ValueError, match="num_classes must be 6"):
        panel_labels(torch.zeros(1, 1, dtype=torch.long), 9)
    with pytest.raises(ValueError, match="does not exist"):
        CrossViewPanels(str(tmp_path), "test")
    cfg = ExperimentConfig(model=tiny(num_classes=7, height=16, width=16), data=DataConfig(dataset="dayton",
                                                                                           root=str(tmp_path)))
    assert isinstance(build_dataset(cfg.data, cfg.model), CrossViewPanels)


def test_synthetic_cross_view_pairs():
    ds = SyntheticCrossView(num_classes=5, height=16, width=24, num_samples=3, seed=2)
    a, b = ds[1], ds[1]
    assert all(torch.equal(a[k], b[k]) for k in ("label", "image", "source"))
    assert a["source"].shape == (3, 16, 24) and not torch.allclose(a["source"], a["image"])
    f = ds[(1, True)]
    assert torch.equal(f["source"], a["source"].flip(-1)) and torch.equal(f["label"], a["label"].flip(-1))
    batch_ = collate([ds[0], ds[2]])
    assert batch_["source"].shape == (2, 3, 16, 24)
    cfg = preset("crossview_synthetic")
    assert isinstance(build_dataset(cfg.data, cfg.model), SyntheticCrossView)
    assert preset_for("lggan-crossview", "dayton").model.height == 256
    assert preset_for("lggan-crossview", "dayton64").model.height == 64


# ------------------------------------------------------------------------------------------------ trainer
def trainer_config(out_dir, iterations=2) -> ExperimentConfig:
    return ExperimentConfig(model=tiny(num_classes=5), data=DataConfig(dataset="synthetic", num_samples=4, seed=1,
                                                                       flip=False),
                            train=TrainConfig(batch_size=2, iterations=iterations, out_dir=str(out_dir),
                                              checkpoint_every=2, sample_every=1000, log_every=1, tensorboard=False))


def test_trainer_steps_samples_checkpoint_and_metrics(tmp_path):
    from semgan_fast.eval.evaluate import evaluate
    from semgan_fast.train.checkpoint import load_checkpoint

    cfg = trainer_config(tmp_path / "run")
    assert cfg.model_type == "lggan-crossview" and ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    trainer = Trainer(cfg)
    last = trainer.fit(progress=False)
    assert {"g_gan", "g_l1", "g_local_l1", "g_class", "d_total"} <= set(last)
    assert all(np.isfinite(v) for v in last.values())
    batch_ = next(trainer.batches())
    grid = trainer.save_samples(batch_, str(tmp_path / "s.png"))
    # labels, real, source, global, local, final, 2 weight maps
    assert grid.shape[-1] == 8 * 32 + 7 * 2
    resumed = Trainer(cfg)
    assert resumed.resume("auto") is not None and resumed.step == 2
    a, b = trainer._model_state(), resumed._model_state()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "ckpt_00000002.pt"))
    infer = build_inference_model(cfg, state["model"]).eval()
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(infer.generate(batch_["label"], batch_["source"]).final,
                                   trainer.model.generate(batch_["label"], batch_["source"]).final)
    report = evaluate(str(tmp_path / "run" / "checkpoints" / "ckpt_00000002.pt"), num_images=4, batch_size=2,
                      device="cpu", fid=False, generator_fn=build_generator_fn(state, "cpu"))
    m = report["metrics"]
    assert 0 < m["crossview_ssim"] <= 1 and np.isfinite(m["crossview_psnr"]) and np.isfinite(
        m["crossview_sharpness_difference"]) and np.isfinite(m["ssim"])


def test_cli_train_generate_and_edges(tmp_path, capsys):
    from semgan_fast.cli import main
    from semgan_fast.imageio import save_image, save_label_map

    cfg_path = tmp_path / "cv.json"
    cfg_path.write_text(json.dumps(trainer_config(tmp_path / "run", iterations=1).to_dict()))
    assert main(["train", "--config", str(cfg_path), "--no-progress"]) == 0
    assert "LGGAN cross-view" in capsys.readouterr().out
    ckpt = tmp_path / "run" / "checkpoints" / "ckpt_00000001.pt"
    (tmp_path / "labels").mkdir()
    (tmp_path / "sources").mkdir()
    save_label_map(torch.randint(0, 5, (32, 32)), str(tmp_path / "labels" / "p.png"))
    save_image(torch.rand(3, 40, 40) * 2 - 1, str(tmp_path / "sources" / "p.png"))
    out = tmp_path / "out"
    assert main(["generate", "--checkpoint", str(ckpt), "--labels", str(tmp_path / "labels"), "--out", str(out)]) == 2
    assert "--sources" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(ckpt), "--labels", str(tmp_path / "labels"), "--sources",
                 str(tmp_path / "sources"), "--out", str(out)]) == 0
    assert os.listdir(out) == ["p_synth.png"] and Image.open(out / "p_synth.png").size == (32, 32)
    # edges of a panel data set at native resolution (canny.m: Canny, then bicubic resize)
    (tmp_path / "d" / "train").mkdir(parents=True)
    write_panels(tmp_path / "d" / "train" / "s1.png", 24, 24, 3)
    edges_out = tmp_path / "edges"
    assert main(["edges", "--model", "lggan-crossview", "--preset", "dayton64", "--data-root", str(tmp_path / "d"),
                 "--out", str(edges_out), "--native-resolution"]) == 0
    arr = np.asarray(Image.open(edges_out / "s1.png"))
    assert arr.shape == (64, 64) and arr.dtype == np.uint8
