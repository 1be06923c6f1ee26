"""ECGAN: ablation rows, module formulas (Eq. 1, 2, 6-7), class-specific stacks vs the naive per-class
formulation, loss weights (Eq. 8-10), label generator modes, contrastive loss with a memory bank,
multi-modal synthesis, host-sync freedom, a few Trainer steps and a checkpoint round trip."""
import os

import pytest
import torch
import torch.nn.functional as F

from semgan_fast.config import DataConfig, ECGANConfig, ExperimentConfig, TrainConfig, preset
from semgan_fast.models import ECGANModel, SmallSegNet, build_inference_model, build_model
from semgan_fast.models.ecgan import ClassSpecificGenerator, EdgeImageBranches, SemanticPreserving
from semgan_fast.ops import class_stack_reference
from semgan_fast.models.layers import instance_edges
from semgan_fast.models.losses import feature_matching_loss, hinge_d_loss, hinge_g_loss
from semgan_fast.ops.pair_similarity_loss import pair_similarity_loss_reference
from semgan_fast.train import Trainer


def tiny(**kw) -> ECGANConfig:
    base = dict(num_classes=4, height=32, width=64, ngf=8, spade_hidden=8, num_upsampling_layers="normal", ndf=4,
                n_layers_d=2, use_vgg=False, param_free_norm="batch", class_hidden=4, proj_dim=8, contrast_stride=4,
                max_samples=64, max_views=4, segmenter_width=4, sim_stride=2)
    base.update(kw)
    return ECGANConfig(**base)


def batch(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, cfg.num_classes, (b, cfg.height // 8, cfg.width // 8), generator=g)
    labels = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)
    image = torch.rand(b, 3, cfg.height, cfg.width, generator=g) * 2 - 1
    return labels, image, labels * 10


ROW_TERMS = {
    "Gi": {"g_gan", "g_feat"},
    "Ge": {"g_gan", "g_feat"},
    "Gt": {"g_gan", "g_feat"},
    "Gs": {"g_gan", "g_feat"},
    "Gl": {"g_gan", "g_feat", "g_sim"},
    "Gc": {"g_gan", "g_feat", "g_sim", "g_contrast", "g_class_l1"},
}


def test_ablation_rows_map_to_switches():
    full = ECGANConfig()
    names = ECGANConfig.ABLATION_ROWS
    assert full.ablation(names[0]) == full.ablation("Gi")
    expect = {"Gi": 0, "Ge": 1, "Gt": 2, "Gs": 3, "Gl": 4, "Gc": 5}
    switches = ("use_edge", "use_transfer", "use_semantic_preserving", "use_label_generator", "use_contrastive")
    for short, level in expect.items():
        row = full.ablation(short)
        assert [getattr(row, s) for s in switches] == [level > i for i in range(5)]
        assert row.use_class_specific == row.use_contrastive
    assert full.ablation("E + G_i + G_e") == full.ablation("Ge")
    with pytest.raises(ValueError, match="ablation row"):
        full.ablation("S3")
    with pytest.raises(ValueError, match="needs use_edge"):
        build_model(tiny(use_edge=False, use_transfer=True))


@pytest.mark.parametrize("row", list(ROW_TERMS))
def test_rows_build_the_right_modules_outputs_and_losses(row):
    cfg = tiny().ablation(row)
    model = build_model(cfg)
    assert isinstance(model, ECGANModel)
    g = model.generator
    assert (g.branches.edge_convs is not None) == cfg.use_edge
    assert (g.semantic_preserving is not None) == cfg.use_semantic_preserving
    assert (model.label_generator is not None) == cfg.use_label_generator
    assert (g.class_generator is not None) == cfg.use_class_specific and (g.projection is not None) == cfg.use_contrastive
    labels, image, instance = batch(cfg)
    total, terms, out = model.generator_loss(labels, image, instance)
    assert set(terms) == ROW_TERMS[row] and torch.isfinite(total)
    shape = (2, 3, cfg.height, cfg.width)
    assert out.final.shape == shape and out.image.shape == shape
    assert (out.edge is not None) == cfg.use_edge and out.refined == cfg.use_semantic_preserving
    assert out.final is (out.refined_image if cfg.use_semantic_preserving else out.image)
    if cfg.use_class_specific:
        assert out.per_class.shape == (2, 4, 3, cfg.height, cfg.width)
        torch.testing.assert_close(out.class_image, out.per_class.sum(1))
        assert out.embeddings.shape == (2, cfg.proj_dim, cfg.height // 4, cfg.width // 4)
    total.backward()
    with torch.no_grad():
        fake = model.generate(labels, instance)
    d_total, d_terms = model.discriminator_loss(labels, image, fake, instance)
    assert set(d_terms) == ({"d_fake", "d_real", "d_seg"} if cfg.use_label_generator else {"d_fake", "d_real"})
    d_total.backward()
    columns = fake.sample_columns()
    assert len(columns) == 1 + 2 * cfg.use_edge + cfg.use_class_specific + cfg.use_semantic_preserving


# --------------------------------------------------------------------------------- module formulas
def test_edge_transfer_follows_eq1():
    torch.manual_seed(1)
    branches = EdgeImageBranches(6, [4, 3, 2], use_edge=True, use_transfer=True, use_spectral_norm=False)
    x = torch.randn(2, 6, 5, 7)
    image, edge = branches(x)
    xi = xe = x
    for ci, ce in zip(branches.image_convs, branches.edge_convs):
        xi, xe = ci(F.leaky_relu(xi, 0.2)), ce(F.leaky_relu(xe, 0.2))
        xi = torch.sigmoid(xe) * xi + xi
    i_i = torch.tanh(branches.image_out(F.leaky_relu(xi, 0.2)))
    i_e = torch.tanh(branches.edge_out(F.leaky_relu(xe, 0.2)))
    torch.testing.assert_close(edge, i_e)
    torch.testing.assert_close(image, torch.sigmoid(i_e) * i_i + i_i)
    no_transfer = EdgeImageBranches(6, [4, 3, 2], True, False, False)
    no_transfer.load_state_dict(branches.state_dict())
    img2, _ = no_transfer(x)
    assert not torch.allclose(img2, image)


def test_semantic_preserving_follows_eq2_with_dense_one_hot():
    torch.manual_seed(2)
    n, dense_ch = 5, 7
    sp = SemanticPreserving(n, dense_ch, use_spectral_norm=False).double()
    labels = torch.randint(0, n, (2, 6, 9))
    dense = torch.randn(2, dense_ch, 6, 9, dtype=torch.float64)
    script_f = torch.cat([F.one_hot(labels, n).permute(0, 3, 1, 2).double(), dense], dim=1)
    f_c = F.conv2d(F.leaky_relu(script_f, 0.2), sp.conv_in.weight, sp.conv_in.bias, padding=1)
    gamma = torch.sigmoid(f_c.mean(dim=(2, 3), keepdim=True))
    f_prime = sp.conv_mid(F.leaky_relu(f_c * gamma + f_c, 0.2))
    assert f_prime.shape[1] == n + dense_ch                        # C + N + 3 + 3 channels
    expected = torch.tanh(sp.conv_out(F.leaky_relu(f_prime, 0.2)))
    torch.testing.assert_close(sp(labels, dense), expected)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_class_specific_stack_equals_naive_per_class_formulation(layers):
    torch.manual_seed(3)
    k, c = 4, 5
    gen = ClassSpecificGenerator(c, k, layers, hidden=3, kernel_size=3, use_spectral_norm=True).double().eval()
    feats = torch.randn(2, c, 7, 9, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, k - 1, (2, 7, 9))                     # class k-1 absent
    per_class, total = gen(feats, labels)
    weights = [layer.effective_weight() for layer in gen.layers]
    ref = class_stack_reference(feats, labels, weights, [layer.class_bias for layer in gen.layers])
    torch.testing.assert_close(per_class, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(total, ref.sum(1))
    grad = torch.randn_like(per_class)
    g_ours = torch.autograd.grad(per_class, [feats, gen.layers[-1].class_weight], grad)
    g_ref = torch.autograd.grad(ref, [feats, gen.layers[-1].class_weight], grad)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_per_class_spectral_norm_bounds_each_class():
    torch.manual_seed(4)
    gen = ClassSpecificGenerator(6, 3, 1, 4, 3, use_spectral_norm=True)
    layer = gen.layers[0]
    with torch.no_grad():
        layer.class_weight.mul_(torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1, 1, 1))
    layer.reset_spectral_state(steps=50)
    w = layer.eval().effective_weight().reshape(3, 3, -1)
    sigma = torch.linalg.matrix_norm(w, ord=2)
    torch.testing.assert_close(sigma, torch.ones(3), rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------------- loss weights
def test_adversarial_feature_matching_and_d_weights_follow_eq8_to_10():
    cfg = tiny(use_label_generator=False, use_contrastive=False, use_class_specific=False, lambda_gan=1.5)
    model = build_model(cfg).eval()       # eval: no power-iteration or BN-statistic updates between calls
    labels, image, instance = batch(cfg)
    edge = instance_edges(instance)
    total, terms, out = model.generator_loss(labels, image, instance)
    real_edge = model.real_edges(image)
    d = model.discriminator
    with torch.no_grad():
        pi, pf, pe = d(labels, edge, out.image), d(labels, edge, out.final), d(labels, edge, out.edge)
        ri, re = d(labels, edge, image), d(labels, edge, real_edge)
    want_gan = 1.5 * (hinge_g_loss(pi, 1) + 2 * hinge_g_loss(pf, 1) + hinge_g_loss(pe, 1))
    want_fm = 10 * (feature_matching_loss(pi, ri, 1) + 2 * feature_matching_loss(pf, ri, 1)
                    + feature_matching_loss(pe, re, 1))
    torch.testing.assert_close(terms["g_gan"], want_gan)
    torch.testing.assert_close(terms["g_feat"], want_fm)
    torch.testing.assert_close(total.detach(), want_gan + want_fm)
    _, d_terms = model.discriminator_loss(labels, image, out.detach(), instance)
    want_fake = hinge_d_loss(pi, 1, False) + 2 * hinge_d_loss(pf, 1, False) + hinge_d_loss(pe, 1, False)
    want_real = 3 * hinge_d_loss(ri, 1, True) + hinge_d_loss(re, 1, True)
    torch.testing.assert_close(d_terms["d_fake"], want_fake)
    torch.testing.assert_close(d_terms["d_real"], want_real)


def test_similarity_loss_and_generator_step_leaves_segmenter_alone():
    cfg = tiny(use_contrastive=False, use_class_specific=False, lambda_feat=0.0, sim_stride=4)
    model = build_model(cfg).eval()
    labels, image, instance = batch(cfg)
    total, terms, out = model.generator_loss(labels, image, instance)
    lg = model.label_generator
    with torch.no_grad():
        p1, p2 = lg.probs(out.image, (32, 64)), lg.probs(out.final, (32, 64))
    want = sum(pair_similarity_loss_reference(p[:, :, ::4, ::4], labels[:, ::4, ::4]) for p in (p1, p2))
    torch.testing.assert_close(terms["g_sim"], want.float(), rtol=1e-5, atol=1e-6)
    total.backward()
    assert all(p.grad is None for p in lg.parameters())            # frozen in the G step
    assert model.generator.trunk.fc.weight.grad is not None
    d_total, d_terms = model.discriminator_loss(labels, image, out.detach(), instance)
    d_total.backward()
    assert all(p.grad is not None for p in lg.parameters())         # trained on real images in the D step
    ids = {id(p) for p in model.discriminator_parameters()}
    assert all(id(p) in ids for p in lg.parameters())


def test_frozen_and_external_segmenters(tmp_path):
    with pytest.raises(ValueError, match="needs segmenter_checkpoint"):
        build_model(tiny(segmenter_mode="frozen"))
    net = SmallSegNet(4, 4)
    path = tmp_path / "seg.pt"
    torch.save({"state_dict": net.state_dict()}, path)
    model = build_model(tiny(segmenter_mode="frozen", segmenter_checkpoint=str(path)))
    img = torch.rand(1, 3, 32, 64) * 2 - 1
    torch.testing.assert_close(model.label_generator.network(img), net(img))
    assert not any(p.requires_grad for p in model.label_generator.parameters())
    assert "d_seg" not in model.discriminator_loss(*batch(model.cfg)[:2], model.generate(*batch(model.cfg)[::2]),
                                                   batch(model.cfg)[2])[1]
    mod = tmp_path / "myseg.py"
    mod.write_text("import torch\n\ndef build():\n    return torch.nn.Conv2d(3, 4, 1)\n")
    ext = build_model(tiny(segmenter=f"{mod}:build", segmenter_mode="frozen"))
    assert ext.label_generator.external and not any(k.startswith("label_generator.") for k in ext.state_dict())
    ext.load_state_dict(ext.state_dict())                            # missing segmenter keys are expected
    ext.train()
    assert not ext.label_generator.network.training
    with pytest.raises(ValueError, match="used frozen"):
        build_model(tiny(segmenter=f"{mod}:build"))


def test_contrastive_loss_with_memory_bank_and_class_l1():
    cfg = tiny(memory_bank=True, memory_size=8, lambda_feat=0.0)
    model = build_model(cfg)
    labels, image, instance = batch(cfg)
    _, terms1, _ = model.generator_loss(labels, image, instance)
    assert float(terms1["g_contrast"]) == 0.0                        # empty bank: no contrast entries yet
    assert int(model.memory_bank.pixel_filled.sum()) > 0
    total, terms2, out = model.generator_loss(labels, image, instance)
    assert float(terms2["g_contrast"]) > 0 and torch.isfinite(total)
    total.backward()
    assert model.generator.projection.net[0].weight.grad.abs().sum() > 0
    assert any(k.startswith("memory_bank.") for k in model.state_dict())
    from semgan_fast.ops import class_l1_reference
    want = class_l1_reference(out.per_class.detach(), image, labels)
    torch.testing.assert_close(terms2["g_class_l1"], want.float())


def test_multimodal_style_encoder_kl_and_sampling():
    cfg = tiny(multimodal=True, z_dim=8, use_label_generator=False, use_contrastive=False,
               use_class_specific=False, lambda_feat=0.0)
    model = build_model(cfg)
    labels, image, instance = batch(cfg)
    total, terms, out = model.generator_loss(labels, image, instance)
    assert out.mu.shape == (2, 8) and "g_kld" in terms
    want = 0.05 * -0.5 * torch.sum(1 + out.logvar - out.mu ** 2 - out.logvar.exp())
    torch.testing.assert_close(terms["g_kld"], want.detach())
    total.backward()
    assert model.generator.style_encoder.fc_mu.weight.grad is not None
    model.eval()
    with torch.no_grad():
        a = model.generate(labels, instance, z=torch.zeros(2, 8))
        b = model.generate(labels, instance, z=torch.ones(2, 8))
        c = model.generate(labels, instance, z=torch.zeros(2, 8))
    assert not torch.allclose(a.final, b.final) and not torch.allclose(a.edge, b.edge)   # edges vary too
    torch.testing.assert_close(a.final, c.final)


def test_no_host_sync_meta_device():
    """generate, both losses and backward run on the meta device (no .item(), no data-dependent branch)."""
    cfg = tiny(memory_bank=True, memory_size=8)
    with torch.device("meta"):
        model = ECGANModel(cfg)
    labels = torch.zeros(2, 32, 64, dtype=torch.long, device="meta")
    image = torch.zeros(2, 3, 32, 64, device="meta")
    total, _, out = model.generator_loss(labels, image, labels)
    total.backward()
    d_total, _ = model.discriminator_loss(labels, image, out.detach(), labels)
    d_total.backward()
    assert model.generator.trunk.fc.weight.grad.device.type == "meta"


# --------------------------------------------------------------------------------- trainer
def trainer_config(out_dir, iterations=3, **model_kw) -> ExperimentConfig:
    model = tiny(num_classes=5, **model_kw)
    return ExperimentConfig(model=model, data=DataConfig(dataset="synthetic", num_samples=4, seed=1),
                            train=TrainConfig(batch_size=2, iterations=iterations, out_dir=str(out_dir), beta2=0.999,
                                              checkpoint_every=2, sample_every=1000, log_every=1, tensorboard=False))


def test_trainer_steps_finite_samples_and_checkpoint_round_trip(tmp_path):
    cfg = trainer_config(tmp_path / "run", iterations=2, memory_bank=True, memory_size=8)
    assert cfg.model_type == "ecgan"
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, ECGANModel)
    last = trainer.fit(progress=False)
    assert {"g_gan", "g_sim", "g_contrast", "g_class_l1", "d_seg"} <= set(last)
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values())
    batch_ = next(trainer.batches())
    grid = trainer.save_samples({k: v[:2] for k, v in batch_.items()}, str(tmp_path / "s.png"))
    # labels, real, edge, attention, I', I_g, I''
    assert grid.shape[-1] == 7 * 64 + 6 * 2
    resumed = Trainer(cfg)
    assert resumed.resume("auto").endswith("ckpt_00000002.pt") and resumed.step == 2
    a, b = trainer._model_state(), resumed._model_state()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert int(resumed.model.memory_bank.pixel_filled.sum()) > 0
    infer = build_inference_model(cfg, a).eval()
    trainer.model.eval()
    labels, _, instance = batch(cfg.model)
    with torch.no_grad():
        torch.testing.assert_close(infer.generate(labels, instance).final, trainer.model.generate(labels, instance).final)


def test_synthetic_preset_and_cli_train_generate(tmp_path, capsys):
    from semgan_fast.cli import main
    from semgan_fast.imageio import save_label_map

    assert preset("ecgan_synthetic").model_type == "ecgan"
    cfg_path = tmp_path / "ecgan.json"
    import json
    cfg_path.write_text(json.dumps(trainer_config(tmp_path / "run", iterations=1).to_dict()))
    assert main(["train", "--config", str(cfg_path), "--no-progress", "--model", "ecgan"]) == 0
    assert main(["train", "--config", str(cfg_path), "--no-progress", "--model", "lggan"]) == 2
    assert "does not match" in capsys.readouterr().err
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    save_label_map(torch.randint(0, 5, (32, 64)), str(labels_dir / "x.png"))
    ckpt = tmp_path / "run" / "checkpoints" / "ckpt_00000001.pt"
    assert main(["generate", "--checkpoint", str(ckpt), "--labels", str(labels_dir), "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 0
    assert sorted(os.listdir(tmp_path / "o")) == ["x_edge.png", "x_synth.png"]


def test_bad_configs_are_clear():
    with pytest.raises(ValueError, match="contrast_stride"):
        build_model(tiny(contrast_stride=3))
    with pytest.raises(ValueError, match="class_image_fusion"):
        build_model(tiny(class_image_fusion="semantic_preserving", use_semantic_preserving=False))
    with pytest.raises(ValueError, match="model_type"):
        ExperimentConfig(model=tiny(), model_type="lggan")
    model = build_model(tiny(class_image_fusion="semantic_preserving"))
    labels, image, instance = batch(model.cfg)
    assert torch.isfinite(model.generator_loss(labels, image, instance)[0])
    with pytest.raises(ValueError, match="ECGANOutput"):
        model.discriminator_loss(labels, image, torch.zeros(2, 1, 3, 32, 64), instance)


@pytest.mark.slow
def test_generator_compiles_fullgraph():
    """torch.compile(fullgraph=True) fails on any graph break (.item(), data-dependent branch)."""
    from semgan_fast.models.layers import instance_edges

    cfg = tiny()
    model = build_model(cfg).eval()
    labels, _, instance = batch(cfg)
    edge = instance_edges(instance)
    compiled = torch.compile(model.generator, fullgraph=True, backend="eager")
    with torch.no_grad():
        out, ref = compiled(labels, edge), model.generator(labels, edge)
    torch.testing.assert_close(out.final, ref.final)
    torch.testing.assert_close(out.per_class, ref.per_class)
