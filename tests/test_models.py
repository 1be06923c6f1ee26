"""LGGAN model: shapes per preset, ablation switches, losses vs per-output public formulations,
class-loss batching, the 26/27 mask flag, VGG loading, host-sync freedom and gradients."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from semgan_fast.config import LGGANConfig, preset
from semgan_fast.models import (GeneratorOutput, LGGANGenerator, LGGANModel, MultiscaleDiscriminator, OneHotConv2d,
                                VGG19Features, instance_edges)
from semgan_fast.models.local import class_cross_entropy
from semgan_fast.models.losses import feature_matching_loss, hinge_d_loss, hinge_g_loss, weighted_feature_l1
from semgan_fast.models.vgg import VGGWeightsNotFoundError, default_vgg19_path

SMALL = dict(ngf=4, spade_hidden=8, num_resblocks=1, ndf=8, use_vgg=False)


def tiny(name: str = "cityscapes", **kw) -> LGGANConfig:
    """A preset's model config at reduced width; spatial size reduced to the smallest the preset allows."""
    cfg = preset(name).model
    size = {"cityscapes": (64, 128), "ade20k": (64, 64), "coco_stuff": (32, 32), "synthetic": (32, 64)}[name]
    return dataclasses.replace(cfg, **{"height": size[0], "width": size[1], **SMALL, **kw})


def batch(cfg: LGGANConfig, b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, cfg.num_classes, (b, cfg.height, cfg.width), generator=g)
    # blocky layout so classes form regions, plus a few random pixels
    coarse = torch.randint(0, cfg.num_classes, (b, cfg.height // 8, cfg.width // 8), generator=g)
    labels = torch.where(torch.rand(labels.shape, generator=g) < 0.8,
                         coarse.repeat_interleave(8, 1).repeat_interleave(8, 2), labels)
    instance = labels * 100 + (torch.arange(cfg.width) // 16).view(1, 1, -1)
    image = torch.rand(b, 3, cfg.height, cfg.width, generator=g) * 2 - 1
    return labels, image, instance


def random_vgg_state_dict() -> dict:
    """torchvision vgg19 state-dict layout (cfg "E" + classifier), built independently of our module."""
    cfg_e = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
    sd, idx, cin = {}, 0, 3
    for v in cfg_e:
        if v == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(v, cin, 3, 3) * 0.05
        sd[f"features.{idx}.bias"] = torch.randn(v) * 0.05
        idx, cin = idx + 2, v
    for i, (o, n) in zip((0, 3, 6), ((4096, 512 * 7 * 7), (4096, 4096), (1000, 4096))):
        sd[f"classifier.{i}.weight"] = torch.zeros(o, n)
        sd[f"classifier.{i}.bias"] = torch.zeros(o)
    return sd


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    torch.manual_seed(1)
    torch.save(random_vgg_state_dict(), path)
    return str(path)


# ----------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name,groups,classified", [("cityscapes", 35, 35), ("ade20k", 52, 51),
                                                    ("coco_stuff", None, None)])
def test_forward_shapes_per_preset(name, groups, classified):
    cfg = tiny(name)
    if groups is None:                                     # COCO-Stuff: every label channel is local
        assert cfg.local_classes is None and cfg.num_classes >= 182
        groups = classified = cfg.num_classes
    model = LGGANModel(cfg)
    labels, image, instance = batch(cfg, 2)
    with torch.no_grad():
        out = model.generate(labels, instance if cfg.use_instance_edge else None)
    b, h, w = 2, cfg.height, cfg.width
    assert cfg.num_local_generators == groups
    assert out.final.shape == out.global_image.shape == out.local_image.shape == (b, 3, h, w)
    assert out.per_class.shape == (b, groups, 3, h, w)
    assert out.weights.shape == (b, 2, h, w)
    assert out.class_logits.shape == (b, classified, classified)
    assert out.class_present.shape == (b, classified) and out.class_present.dtype == torch.bool
    for t in (out.final, out.global_image, out.local_image):
        assert torch.isfinite(t).all() and t.abs().max() <= 1
    torch.testing.assert_close(out.weights.sum(1), torch.ones(b, h, w))
    # present = class occurs in the sample (computed on device)
    expected_present = torch.stack([(labels == k).flatten(1).any(1) for k in range(classified)], dim=1)
    assert torch.equal(out.class_present, expected_present)


def test_ade20k_other_generator_pools_remaining_classes():
    cfg = tiny("ade20k")
    gen = LGGANGenerator(cfg).eval()
    labels, _, _ = batch(cfg, 2, seed=3)
    labels[:, :16, :16] = 120                      # make sure several "other" classes are present
    labels[:, 16:32, :16] = 60
    labels[:, 40:, 40:] = 150
    with torch.no_grad():
        out = gen(labels)
        x_encode, _ = gen.encoder(labels, None)
        features = gen.local_generator.up(gen.local_generator.trunk(x_encode))
    local = gen.local_generator
    for k in (0, 50, 51):
        mask = (labels >= 51) if k == 51 else (labels == k)
        masked = F.pad(features * mask.unsqueeze(1).float(), (3, 3, 3, 3), mode="reflect")
        expected = torch.tanh(F.conv2d(masked, local.class_weight[k], local.class_bias[k]))
        torch.testing.assert_close(out.per_class[:, k], expected, atol=1e-5, rtol=1e-4)
    # the classifier covers the 51 dedicated classes only
    assert gen.classifier.fc.out_features == 51 and out.class_logits.shape[1:] == (51, 51)


def test_deeper_class_sub_generators_equal_naive_per_class_stacks():
    """local_depth = 3: every class's sub-generator is a stack (class_stack), exactly the naive per-class
    formulation on the masked features (fp64), forward (the model's per-class images) and backward."""
    from semgan_fast.models.local import class_sub_generators
    from semgan_fast.ops import class_stack_reference

    cfg = tiny("cityscapes", local_depth=3, local_hidden=5, local_combine="add", use_class_loss=False,
               use_weight_map=False, use_instance_edge=False)
    gen = LGGANGenerator(cfg).double().eval()
    local = gen.local_generator
    weights, biases = local.class_parameters()
    assert [tuple(w.shape[1:3]) for w in weights] == [(5, 4), (5, 5), (3, 5)]
    labels, _, _ = batch(cfg, 2, seed=5)
    with torch.no_grad():
        per_class = gen(labels).per_class
        x_encode, _ = gen.encoder(labels, None)
        features = local.up(local.trunk(x_encode))
    expected = class_stack_reference(features, labels, weights, biases)
    torch.testing.assert_close(per_class, expected, atol=1e-12, rtol=1e-10)
    features.requires_grad_()
    grad = torch.randn_like(expected)
    got = torch.autograd.grad(class_sub_generators(features, labels, weights, biases), [features, weights[1]], grad)
    want = torch.autograd.grad(class_stack_reference(features, labels, weights, biases), [features, weights[1]], grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)


@pytest.mark.slow
def test_full_size_cityscapes_generator_forward():
    """One full-size generator forward (256x512, ngf 64, 35 local classes) on the CPU, no grad."""
    cfg = dataclasses.replace(preset("cityscapes").model, use_vgg=False)
    gen = LGGANGenerator(cfg).eval()
    labels = torch.randint(0, 35, (1, 256, 512))
    labels[:, :, :256] = 7
    with torch.no_grad():
        out = gen(labels, instance_edges(labels))
    assert out.final.shape == (1, 3, 256, 512) and out.per_class.shape == (1, 35, 3, 256, 512)
    assert out.class_logits.shape == (1, 35, 35) and out.weights.shape == (1, 2, 256, 512)
    assert torch.isfinite(out.final).all() and out.final.abs().max() <= 1


# --------------------------------------------------------------------------------------- ablation
@pytest.mark.parametrize("stage", ["S1", "S2", "S3", "S4", "S5"])
def test_ablation_switches(stage):
    cfg = tiny("synthetic").ablation(stage)
    model = LGGANModel(cfg)
    labels, image, instance = batch(cfg, 2)
    total, terms, out = model.generator_loss(labels, image, instance)
    expected_terms = {"g_gan", "g_feat"}
    gen = model.generator
    if stage == "S1":
        assert out.local_image is None and out.per_class is None and out.weights is None
        assert out.class_logits is None and out.final is out.global_image
        assert gen.local_generator is None and gen.classifier is None and gen.weight_map is None
        assert len(out.images()) == 1
    else:
        expected_terms.add("g_local_l1")
        assert out.local_image is not None and out.per_class is not None and len(out.images()) == 3
        if stage == "S2":
            assert gen.local_generator.fuse is None
            torch.testing.assert_close(out.local_image, out.per_class.sum(1))
        else:
            assert gen.local_generator.fuse is not None
        if stage in ("S4", "S5"):
            expected_terms.add("g_class")
            assert out.class_logits is not None and gen.classifier is not None
        else:
            assert out.class_logits is None and gen.classifier is None
        if stage == "S5":
            w = out.weights
            torch.testing.assert_close(out.final, w[:, :1] * out.local_image + w[:, 1:] * out.global_image)
        else:
            assert out.weights is None and gen.weight_map is None
            torch.testing.assert_close(out.final, 0.5 * (out.global_image + out.local_image))
    assert set(terms) == expected_terms
    torch.testing.assert_close(total.detach(), sum(terms.values()))
    d_total, d_terms = model.discriminator_loss(labels, image, out, instance)
    assert set(d_terms) == {"d_fake", "d_real"} and torch.isfinite(d_total)


# ----------------------------------------------------------------------------- host synchronisation
def test_no_host_sync_in_forward_and_losses_meta_device():
    """Everything runs on the meta device, where .item()/bool()/int() of a tensor raise: so no host
    sync and no data-dependent Python branch exists in generate, both losses or their backward."""
    with pytest.raises(RuntimeError):
        torch.zeros(1, device="meta").item()
    cfg = tiny("synthetic")
    with torch.device("meta"):
        model = LGGANModel(cfg)
    labels = torch.zeros(2, cfg.height, cfg.width, dtype=torch.long, device="meta")
    image = torch.zeros(2, 3, cfg.height, cfg.width, device="meta")
    out = model.generate(labels, labels)
    assert out.final.device.type == "meta" and out.final.shape == (2, 3, cfg.height, cfg.width)
    total, _, out = model.generator_loss(labels, image, labels)
    total.backward()
    d_total, _ = model.discriminator_loss(labels, image, out, labels)
    d_total.backward()
    assert model.generator.encoder.conv1.weight.grad.device.type == "meta"


@pytest.mark.slow
def test_generator_compiles_fullgraph():
    """torch.compile(fullgraph=True) fails on any graph break (.item(), data-dependent branch)."""
    cfg = tiny("synthetic", param_free_norm="syncbatch")
    gen = LGGANGenerator(cfg).eval()
    labels, _, instance = batch(cfg, 2)
    edge = instance_edges(instance)
    compiled = torch.compile(gen, fullgraph=True, backend="eager")
    with torch.no_grad():
        out, ref = compiled(labels, edge), gen(labels, edge)
    torch.testing.assert_close(out.final, ref.final)
    torch.testing.assert_close(out.class_logits, ref.class_logits)


# ------------------------------------------------------------------------------------- class loss
@pytest.mark.parametrize("b", [1, 3])
def test_class_loss_any_batch_size(b):
    torch.manual_seed(b)
    kc = 5
    logits = torch.randn(b, kc, kc, requires_grad=True)
    present = torch.rand(b, kc) < 0.6
    present[0, 1] = True
    loss = class_cross_entropy(logits, present)
    ref_terms = [F.cross_entropy(logits[i, k:k + 1], torch.tensor([k])) for i in range(b) for k in range(kc)
                 if present[i, k]]
    torch.testing.assert_close(loss, torch.stack(ref_terms).mean())
    loss.backward()
    assert torch.all(logits.grad[~present] == 0)          # void classes contribute nothing
    empty = class_cross_entropy(logits.detach(), torch.zeros(b, kc, dtype=torch.bool))
    assert float(empty) == 0.0                             # no NaN when nothing is present


@pytest.mark.parametrize("b", [1, 3])
def test_model_class_loss_batch_sizes(b):
    cfg = tiny("synthetic")
    model = LGGANModel(cfg)
    labels, image, instance = batch(cfg, b)
    labels[0] = 0                                          # sample 0 holds one class only
    _, terms, out = model.generator_loss(labels, image, instance)
    assert out.class_logits.shape == (b, cfg.num_classes, cfg.num_classes)
    assert out.class_present[0].tolist() == [True] + [False] * (cfg.num_classes - 1)
    torch.testing.assert_close(terms["g_class"], class_cross_entropy(out.class_logits, out.class_present).detach())


# --------------------------------------------------------------------------------------- 26 / 27
def test_mask_26_27_fix_and_bug_flag():
    cfg = tiny("cityscapes", height=64, width=128)
    fixed = LGGANModel(cfg)
    buggy = LGGANModel(dataclasses.replace(cfg, reproduce_mask_26_27_bug=True))
    labels, image, _ = batch(cfg, 2)
    labels[:, :16, :32] = 26
    labels[:, 16:32, :32] = 27
    per_class = torch.rand(2, 35, 3, cfg.height, cfg.width) * 2 - 1

    def reference(mask_of):
        return sum((image * (labels == mask_of[i]).unsqueeze(1).float() - per_class[:, i]).abs().mean()
                   for i in range(35))

    correct = list(range(35))
    public = correct.copy()
    public[27] = 26                                          # label_3_26 returned twice, label_3_27 never
    torch.testing.assert_close(fixed.local_l1(per_class, image, labels), reference(correct), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(buggy.local_l1(per_class, image, labels), reference(public), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(reference(correct), reference(public))
    with pytest.raises(ValueError, match="reproduce_mask_26_27_bug"):
        LGGANModel(dataclasses.replace(tiny("synthetic"), reproduce_mask_26_27_bug=True))


# -------------------------------------------------------------------------------------------- VGG
def test_vgg_missing_weights_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert default_vgg19_path() == str(tmp_path / "torch_home" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
    cfg = tiny("synthetic", use_vgg=True)
    with pytest.raises(VGGWeightsNotFoundError) as info:
        LGGANModel(cfg)                                      # default: torchvision cache under TORCH_HOME
    msg = str(info.value)
    for needle in (default_vgg19_path(), "vgg_weights", "use_vgg=False", "--no-vgg"):
        assert needle in msg
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        LGGANModel(dataclasses.replace(cfg, vgg_weights=str(tmp_path / "nope.pth")))


def test_vgg_loads_torchvision_key_names(vgg_file):
    sd = torch.load(vgg_file, weights_only=True)
    vgg = VGG19Features.from_pretrained(vgg_file)
    own = vgg.state_dict()
    assert set(own) == {k for k in sd if k.startswith("features.") and int(k.split(".")[1]) < 30}
    for k, v in own.items():
        assert torch.equal(v, sd[k])
    # the taps are relu1_1 .. relu5_1: check shapes and relu1_1 by hand
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    feats = vgg(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4),
                                                   (512, 2, 2)]
    torch.testing.assert_close(feats[0], F.relu(F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"],
                                                         padding=1)))
    assert not any(p.requires_grad for p in vgg.parameters())
    bad = dict(sd)
    del bad["features.28.weight"]
    with pytest.raises(ValueError, match="features.28.weight"):
        VGG19Features().load_torchvision_state_dict(bad)


def test_vgg_loss_and_state_dict_excludes_vgg(vgg_file):
    cfg = tiny("synthetic", use_vgg=True, vgg_weights=vgg_file)
    model = LGGANModel(cfg)
    labels, image, instance = batch(cfg, 1)
    _, terms, out = model.generator_loss(labels, image, instance)
    assert "g_vgg" in terms and torch.isfinite(terms["g_vgg"])
    # equals the public per-output VGGLoss (x lambda_vgg) summed over final, global, local
    weights = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    with torch.no_grad():
        real = model.vgg(image)
        expected = sum(sum(w * (f - r).abs().mean() for w, f, r in zip(weights, model.vgg(img), real))
                       for img in out.images()) * cfg.lambda_vgg
    torch.testing.assert_close(terms["g_vgg"], expected, rtol=1e-4, atol=1e-6)
    sd = model.state_dict()
    assert not any(k.startswith("vgg.") for k in sd)
    LGGANModel(cfg).load_state_dict(sd)                      # strict load without VGG keys


# ------------------------------------------------------------------------- discriminator and losses
def test_discriminator_batched_outputs_equal_separate_calls_and_dense_scale():
    cfg = tiny("synthetic")
    d = MultiscaleDiscriminator(cfg.num_classes, True, cfg.ndf, 2, 4, True).eval()  # eval: fixed SN sigma
    labels, image, instance = batch(cfg, 2)
    edge = instance_edges(instance)
    fakes = [torch.rand_like(image) * 2 - 1 for _ in range(3)]
    with torch.no_grad():
        batched = d(labels, edge, torch.cat(fakes))
        for n, f in enumerate(fakes):
            single = d(labels, edge, f)
            for s in range(2):
                for a, b in zip(batched[s], single[s]):
                    torch.testing.assert_close(a[n * 2:(n + 1) * 2], b, atol=1e-5, rtol=1e-4)
        # reference: SPADE concatenates [one-hot | edge | image] and average-pools the concatenation
        dense = torch.cat([F.one_hot(labels, cfg.num_classes).permute(0, 3, 1, 2).float(), edge, fakes[0]], 1)
        ref0 = d.scales[0](dense=dense)
        ref1 = d.scales[1](dense=F.avg_pool2d(dense, 3, 2, 1, count_include_pad=False))
        single = d(labels, edge, fakes[0])
        for a, b in zip(single[0] + single[1], ref0 + ref1):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert [f.shape[1] for f in single[0]] == [8, 16, 32, 64, 1]   # ndf 8, n_layers_d 4


def test_batched_losses_equal_public_per_output_sums():
    torch.manual_seed(0)
    reps, b = 3, 2
    shapes = [[(8, 9, 9), (16, 5, 5), (1, 4, 4)], [(8, 5, 5), (16, 3, 3), (1, 2, 2)]]
    fake = [[torch.randn(reps * b, *s) for s in scale] for scale in shapes]
    real = [[torch.randn(b, *s) for s in scale] for scale in shapes]
    per = [[[t[n * b:(n + 1) * b] for t in scale] for scale in fake] for n in range(reps)]
    # SPADE GANLoss (hinge): mean over scales of the per-scale loss on the last output
    g_ref = sum(sum(-p[-1].mean() for p in pn) / 2 for pn in per)
    d_fake_ref = sum(sum(F.relu(1 + p[-1]).mean() for p in pn) / 2 for pn in per)
    d_real_ref = sum(F.relu(1 - p[-1]).mean() for p in real) / 2
    fm_ref = sum(sum(sum((f - r).abs().mean() for f, r in zip(pf[:-1], pr[:-1])) for pf, pr in zip(pn, real)) / 2
                 for pn in per)
    torch.testing.assert_close(hinge_g_loss(fake, reps), g_ref)
    torch.testing.assert_close(hinge_d_loss(fake, reps, real=False), d_fake_ref)
    torch.testing.assert_close(hinge_d_loss(real, 1, real=True), d_real_ref)
    torch.testing.assert_close(feature_matching_loss(fake, real, reps), fm_ref)
    feats_fake = [torch.randn(reps * b, 4, 3, 3), torch.randn(reps * b, 2, 2, 2)]
    feats_real = [torch.randn(b, 4, 3, 3), torch.randn(b, 2, 2, 2)]
    vgg_ref = sum(0.5 * (feats_fake[0][n * b:(n + 1) * b] - feats_real[0]).abs().mean()
                  + 2.0 * (feats_fake[1][n * b:(n + 1) * b] - feats_real[1]).abs().mean() for n in range(reps))
    torch.testing.assert_close(weighted_feature_l1(feats_fake, feats_real, (0.5, 2.0), reps), vgg_ref)


def test_discriminator_loss_accepts_tensor_or_output():
    cfg = tiny("synthetic")
    model = LGGANModel(cfg).eval()                           # eval: identical SN sigma for both calls
    labels, image, instance = batch(cfg, 2)
    with torch.no_grad():
        out = model.generate(labels, instance)
        a, ta = model.discriminator_loss(labels, image, out, instance)
        stacked = torch.stack(out.images(), dim=1)           # [B, N, 3, H, W]
        b, tb = model.discriminator_loss(labels, image, stacked, instance)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ta["d_real"], tb["d_real"])


# ----------------------------------------------------------------------------------------- layers
def test_onehot_conv2d_matches_dense_conv_and_takes_spectral_norm():
    torch.manual_seed(0)
    labels = torch.randint(0, 5, (2, 9, 11))
    extra = torch.randn(2, 2, 9, 11)
    dense = torch.cat([F.one_hot(labels, 5).permute(0, 3, 1, 2).float(), extra], 1)
    for kwargs in (dict(kernel_size=7, padding=3, padding_mode="reflect"), dict(kernel_size=4, stride=2, padding=2),
                   dict(kernel_size=3, padding=1)):
        conv = OneHotConv2d(5, 2, 6, **kwargs)
        pad = kwargs.get("padding", 0)
        ref_in = F.pad(dense, (pad,) * 4, mode="reflect") if kwargs.get("padding_mode") == "reflect" else dense
        ref = F.conv2d(ref_in, conv.weight, conv.bias, stride=kwargs.get("stride", 1),
                       padding=0 if kwargs.get("padding_mode") == "reflect" else pad)
        torch.testing.assert_close(conv(labels, extra), ref)
        torch.testing.assert_close(conv.forward_dense(dense), ref)
    conv = OneHotConv2d(5, 0, 4, 3, padding=1)
    raw = conv.weight.detach().clone()
    torch.nn.utils.parametrizations.spectral_norm(conv)
    conv.eval()
    sigma = torch.linalg.matrix_norm(raw.reshape(4, -1), ord=2)
    torch.testing.assert_close(conv.weight, raw / sigma, rtol=1e-3, atol=1e-5)
    out = conv(labels, None)
    out.sum().backward()
    assert conv.parametrizations.weight.original.grad is not None


def test_instance_edges_match_spade_get_edges():
    torch.manual_seed(0)
    inst = torch.randint(0, 3, (2, 7, 9))
    t = inst.unsqueeze(1)
    edge = torch.zeros_like(t, dtype=torch.bool)                 # SPADE get_edges, literally
    edge[:, :, :, 1:] |= t[:, :, :, 1:] != t[:, :, :, :-1]
    edge[:, :, :, :-1] |= t[:, :, :, 1:] != t[:, :, :, :-1]
    edge[:, :, 1:, :] |= t[:, :, 1:, :] != t[:, :, :-1, :]
    edge[:, :, :-1, :] |= t[:, :, 1:, :] != t[:, :, :-1, :]
    assert torch.equal(instance_edges(inst), edge.float())
    assert instance_edges(torch.ones(1, 4, 4, dtype=torch.long)).sum() == 0


# -------------------------------------------------------------------------------------- gradients
def test_backward_steps_give_finite_grads():
    cfg = tiny("synthetic")
    model = LGGANModel(cfg)
    opt_g = torch.optim.Adam(model.generator_parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(model.discriminator_parameters(), lr=4e-4, betas=(0.0, 0.9))
    labels, image, instance = batch(cfg, 2)
    for _ in range(2):
        d_before = [None if p.grad is None else p.grad.clone() for p in model.discriminator_parameters()]
        g_total, _, _ = model.generator_loss(labels, image, instance)
        opt_g.zero_grad(set_to_none=True)
        g_total.backward()
        grads = {n: p.grad for n, p in model.generator.named_parameters()}
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), \
            [n for n, g in grads.items() if g is None or not torch.isfinite(g).all()]
        # the generator step leaves D's weight gradients untouched (and D still trainable)
        for p, before in zip(model.discriminator_parameters(), d_before):
            assert p.requires_grad and (p.grad is None if before is None else torch.equal(p.grad, before))
        for name in ("encoder.conv1.weight", "local_generator.class_weight", "local_generator.fuse.weight",
                     "classifier.fc.weight", "weight_map.out.weight", "global_generator.conv_img.weight"):
            assert grads[name].abs().sum() > 0, name
        opt_g.step()
        with torch.no_grad():
            fake = model.generate(labels, instance)
        d_total, _ = model.discriminator_loss(labels, image, fake, instance)
        opt_d.zero_grad(set_to_none=True)
        d_total.backward()
        d_grads = {n: p.grad for n, p in model.discriminator.named_parameters()}
        assert all(g is not None and torch.isfinite(g).all() for g in d_grads.values())
        assert d_grads["scales.0.conv0.weight"].abs().sum() > 0 and d_grads["scales.1.conv0.weight"].abs().sum() > 0
        opt_d.step()
        assert torch.isfinite(g_total) and torch.isfinite(d_total)


def test_input_validation():
    cfg = tiny("synthetic")
    gen = LGGANGenerator(cfg)
    labels, _, _ = batch(cfg, 1)
    with pytest.raises(ValueError, match="instance"):
        LGGANModel(cfg).generate(labels, None)
    with pytest.raises(ValueError, match="labels"):
        gen(labels[:, :16], instance_edges(labels[:, :16]))
    with pytest.raises(ValueError, match="multiples"):
        LGGANGenerator(dataclasses.replace(cfg, height=48))
    assert isinstance(GeneratorOutput(final=labels.float(), global_image=labels.float()).detach(), GeneratorOutput)
