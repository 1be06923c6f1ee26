"""Inference generators and ONNX export (semgan_fast.export): folding, parity, graph structure, CLI.

LGGAN:
- Inference generator vs the training generator (fp32, eval): every ablation shape of the network
  (S1, S2 add, S5 conv + weight map), batch / instance / sync-batch norms, local_classes ("other"
  generator), "more" upsampling; the three class-op implementations (fused, reference, decomposed);
  a resolution other than the config's (dynamic shapes); fp16 within the half-precision tolerance.
- Folding: no spectral-norm parametrisations, no batch norms, no classifier, frozen eval module.
- Reference graph at the cityscapes preset shape (256x512, 35 classes, reduced width): standard
  ops only, masked grouped conv (group=K) and Equal one-hot present, opset 18, single file;
  onnxruntime parity with the training generator.
- Deploy graph (dynamic batch/H/W): semgan::ClassConv / OneHotConv nodes with the plugin attributes,
  onnx.checker with our schemas, ReferenceEvaluator (NumPy ops) parity at two shapes from one
  export; fp16 deploy graph through the CLI (fp16 weights, fp32 norms / tanh / output).
ECGAN (``ECGANInference``):
- vs the training generator's final image, every backend, for the shapes of the network (class branch
  feeding G_s or dropped, no G_s, no G_t with the edge branch dropped, sync-batch / instance norm,
  "more", one-layer class branch); what is kept; the class branch's ops_backend follows the generator's.
- Folding: spectral norm incl. ClassLayer's per-class W_c / sigma_c (equal to ``effective_weight()``),
  batch norm, no projection head, frozen; source untouched. Dynamic batch / resolution vs a generator
  built for the other size; fp16 / bf16 within 2x the training generator's own low-precision error
  (vs fp64); multi-modal rejected; checkpoint round trip; unsupported model types named.
- Reference graph, dynamic: structure (one-hot Equal, grouped conv of class layer 2, folded norms),
  onnxruntime parity with the training generator and at a second batch / resolution. Deploy graph,
  dynamic: 9 OneHotConv + 1 ClassConv (class_stack layer 1) + the grouped conv of layer 2, attributes
  and weight shapes, ReferenceEvaluator parity at two batch / resolution combinations.
- CLI: fp16 deploy export of an ECGAN checkpoint (one-layer class branch: ClassConv with tanh) with
  --check (fp32 gate / tanh / output);
  ``semgan infer --checkpoint`` on CPU; cross-view checkpoints rejected by name.
Exports dominate the runtime (~5-25 s each on 2 cores): seven in all.
- NumPy reference ops vs the PyTorch reference ops (both paddings, stride 2, extra channels,
  out-of-range labels).
- CLI: `export trt` (--onnx or --checkpoint) / `infer --engine` without TensorRT exit with code 2 and a message.
"""
from __future__ import annotations

import argparse
import collections
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from semgan_fast.export import onnx_export as oe
from semgan_fast.export.inference import build_inference_generator, random_generator
from semgan_fast.export.onnx_ops import class_conv_numpy, onehot_conv_numpy
from semgan_fast.models.layers import instance_edges
from semgan_fast.ops.class_conv import class_conv_reference
from semgan_fast.ops.onehot_conv import onehot_conv_reference

TINY = dict(ngf=4, spade_hidden=8, num_resblocks=1)
SMALL = dict(TINY, height=32, width=64)      # smallest synthetic geometry ("normal": multiples of 32)


def _inputs(cfg, batch=2, seed=0, height=None, width=None):
    gen = torch.Generator().manual_seed(seed)
    h, w = height or cfg.height, width or cfg.width
    labels = torch.randint(0, cfg.num_classes, (batch, h, w), generator=gen)
    edge = instance_edges(torch.randint(0, 3, (batch, h, w), generator=gen)) if cfg.use_instance_edge else None
    return labels, edge


# ------------------------------------------------------------------------------------------------
# Inference generator (eager)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    dict(),                                                                   # S5, batch norm, edge
    dict(param_free_norm="instance"),
    dict(param_free_norm="syncbatch", use_local=False, use_class_loss=False, use_weight_map=False),  # S1
    dict(local_combine="add", use_class_loss=False, use_weight_map=False),   # S2
    dict(num_upsampling_layers="more", local_classes=5, use_instance_edge=False, height=64, width=64),
    dict(local_depth=3, local_hidden=5),                                      # deeper class sub-generators
], ids=["S5-batch", "S5-instance", "S1-syncbatch", "S2-add", "more-other-noedge", "deep-local"])
def test_inference_matches_training_generator(overrides):
    gen = random_generator("synthetic", **{**SMALL, **overrides})
    labels, edge = _inputs(gen.cfg)
    with torch.no_grad():
        expected = gen(labels, edge).final
        inf = build_inference_generator(gen)
        for backend in ("auto", "reference", "decomposed"):
            got = inf.set_ops_backend(backend)(labels.to(torch.int32), edge)
            assert got.dtype == torch.float32 and got.shape == expected.shape
            torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4, msg=f"backend {backend}")
    assert expected.abs().mean() > 1e-2   # a non-trivial image, so the comparison means something


def test_inference_generator_is_folded_and_frozen():
    gen = random_generator("synthetic", **SMALL)
    inf = build_inference_generator(gen)
    names = [n for n, _ in inf.named_modules()]
    assert not any("parametrizations" in n or "classifier" in n for n in names)
    assert not any(isinstance(m, (nn.BatchNorm2d,)) or type(m).__name__ == "ParamFreeSyncBatchNorm"
                   for m in inf.modules())
    assert not inf.training and all(not p.requires_grad for p in inf.parameters())
    # The source generator is untouched (still parametrised, still usable).
    assert any("parametrizations" in n for n, _ in gen.named_modules())
    labels, edge = _inputs(gen.cfg, batch=1)
    with torch.no_grad():
        gen(labels, edge)


def test_inference_other_resolution_matches_generator_built_for_it():
    """Dynamic resolution: one inference module, any multiple of 2**n_up (the training generator's
    latent size is fixed by its config, so compare with one configured for the new size)."""
    import dataclasses

    gen = random_generator("synthetic", **TINY)
    other = type(gen)(dataclasses.replace(gen.cfg, height=32, width=96))   # config: 64x128
    other.load_state_dict(gen.state_dict())
    other.eval()
    inf = build_inference_generator(gen)
    labels, edge = _inputs(other.cfg, batch=3, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(inf(labels, edge), other(labels, edge).final, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="multiples of 32"):
        inf(labels[:, :, :40], edge[:, :, :, :40])


def test_inference_fp16_close_to_fp32():
    gen = random_generator("synthetic", **SMALL)
    labels, edge = _inputs(gen.cfg)
    with torch.no_grad():
        ref32 = build_inference_generator(gen)(labels, edge)
        half = build_inference_generator(gen, dtype="fp16")
        out = half(labels, edge)
    assert half.dtype == torch.float16 and out.dtype == torch.float32
    assert (out - ref32).abs().max() < 2e-2


def test_build_inference_generator_rejects_unknown_sources():
    with pytest.raises(ValueError, match="no inference builder"):
        build_inference_generator(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="dtype"):
        build_inference_generator(random_generator("synthetic", **TINY), dtype="fp8")
    with pytest.raises(ValueError, match="ops_backend"):
        build_inference_generator(random_generator("synthetic", **TINY), ops_backend="fast")


def test_checkpoint_round_trip(tmp_path):
    from semgan_fast.config import preset
    from semgan_fast.models import LGGANModel
    from semgan_fast.train.checkpoint import save_checkpoint

    import dataclasses
    cfg = preset("synthetic")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **TINY, use_vgg=False, init_type="default"))
    model = LGGANModel(cfg.model).eval()
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint({"step": 3, "config": cfg.to_dict(), "model": model.state_dict()}, path)
    inf = build_inference_generator(path)
    labels, edge = _inputs(cfg.model, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(inf(labels, edge), model.generator(labels, edge).final, atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# ECGAN inference generator (eager)
# ------------------------------------------------------------------------------------------------

ECGAN_SMALL = dict(num_classes=5, height=32, width=64, spade_hidden=8)     # on top of the ecgan_synthetic preset


def _ecgan(**overrides):
    return random_generator("ecgan_synthetic", **{**ECGAN_SMALL, **overrides})


@pytest.mark.parametrize("overrides,kept", [
    (dict(class_image_fusion="semantic_preserving"), dict(class_generator=True, edge=True, refine=True)),
    (dict(param_free_norm="syncbatch"), dict(class_generator=False, edge=True, refine=True)),
    (dict(use_semantic_preserving=False), dict(class_generator=False, edge=True, refine=False)),       # I' final
    (dict(use_semantic_preserving=False, use_transfer=False, num_upsampling_layers="more", height=64, width=128),
     dict(class_generator=False, edge=False, refine=False)),                  # G_e does not reach I'
    (dict(param_free_norm="instance", use_instance_edge=False, class_layers=1, class_image_fusion="semantic_preserving",
          height=64, width=64), dict(class_generator=True, edge=True, refine=True)),
], ids=["fusion-batch", "syncbatch", "no-Gs", "no-Gs-no-Gt-more", "instance-noedge-1layer"])
def test_ecgan_inference_matches_training_generator(overrides, kept):
    """The final image (I'' with G_s, else I') of the training generator in eval mode, for every class-op
    backend; only the parts the final image needs are kept."""
    gen = _ecgan(**overrides)
    labels, edge = _inputs(gen.cfg)
    with torch.no_grad():
        expected = gen(labels, edge).final
        inf = build_inference_generator(gen)
        assert type(inf).__name__ == "ECGANInference"
        assert (inf.class_generator is not None, inf.edge_convs is not None, inf.refine) == \
            (kept["class_generator"], kept["edge"], kept["refine"])
        for backend in ("auto", "reference", "decomposed"):
            got = inf.set_ops_backend(backend)(labels.to(torch.int32), edge)
            assert got.dtype == torch.float32 and got.shape == expected.shape
            torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4, msg=f"backend {backend}")
            if inf.class_generator is not None:                     # the model's own branch follows the backend
                assert inf.class_generator.ops_backend == ("reference" if backend == "decomposed" else backend)
    assert expected.abs().mean() > 1e-2


def test_ecgan_inference_is_folded_and_frozen():
    """Spectral norm (incl. ClassLayer's per-class W_c / sigma_c) and batch norm folded, training heads
    gone, frozen eval module; the source generator is untouched."""
    from semgan_fast.models.ecgan import ClassLayer

    gen = _ecgan(class_image_fusion="semantic_preserving")
    source_layers = [m for m in gen.modules() if isinstance(m, ClassLayer)]
    assert source_layers and all(m.use_spectral_norm for m in source_layers)
    inf = build_inference_generator(gen)
    names = [n for n, _ in inf.named_modules()]
    assert not any("parametrizations" in n or "projection" in n or "style" in n for n in names)
    assert not any(isinstance(m, nn.BatchNorm2d) or type(m).__name__ == "ParamFreeSyncBatchNorm" for m in inf.modules())
    layers = [m for m in inf.modules() if isinstance(m, ClassLayer)]
    assert len(layers) == len(source_layers) and not any(m.use_spectral_norm or hasattr(m, "sn_u") for m in layers)
    with torch.no_grad():
        for folded, source in zip(layers, source_layers):
            torch.testing.assert_close(folded.class_weight, source.effective_weight(), atol=0, rtol=0)
    assert not inf.training and all(not p.requires_grad for p in inf.parameters())
    assert any("parametrizations" in n for n, _ in gen.named_modules()) and hasattr(source_layers[0], "sn_u")
    assert "class_weight" in dict(source_layers[0].named_parameters())   # still trainable in the source


def test_ecgan_inference_dynamic_batch_and_resolution():
    """One inference module, any batch and any multiple of 2**n_up, vs a generator configured for that size."""
    import dataclasses

    gen = _ecgan(class_image_fusion="semantic_preserving")
    other = type(gen)(dataclasses.replace(gen.cfg, height=64, width=96))
    other.load_state_dict(gen.state_dict())
    other.eval()
    inf = build_inference_generator(gen)
    labels, edge = _inputs(other.cfg, batch=3, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(inf(labels, edge), other(labels, edge).final, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="multiples of 32"):
        inf(labels[:, :, :40], edge[:, :, :, :40])
    with pytest.raises(ValueError, match="instance-edge"):
        inf(labels)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ecgan_inference_half_precision(dtype):
    """fp16 / bf16 convolutions and class ops (gates, tanh, output in fp32): error vs an fp64 run of the
    training generator <= 2x that of the training generator itself run in the same precision."""
    import copy

    gen = _ecgan(class_image_fusion="semantic_preserving")
    labels, edge = _inputs(gen.cfg)
    with torch.no_grad():
        ref64 = copy.deepcopy(gen).double()(labels, edge.double()).final
        ref_low = copy.deepcopy(gen).to(dtype)(labels, edge.to(dtype)).final.double()
        low = build_inference_generator(gen, dtype=dtype)
        out = low(labels, edge)
    assert low.dtype == dtype and out.dtype == torch.float32
    assert all(p.dtype == dtype for p in low.class_generator.parameters())
    err, ref_err = (out.double() - ref64).abs().max().item(), (ref_low - ref64).abs().max().item()
    assert err <= 2 * ref_err + 1e-4, (err, ref_err)


def test_ecgan_inference_rejects_multimodal():
    with pytest.raises(ValueError, match="multi-modal"):
        build_inference_generator(_ecgan(ngf=4, multimodal=True, z_dim=8))


def _save_ecgan_checkpoint(path, gen):
    from semgan_fast.config import ExperimentConfig, preset
    from semgan_fast.train.checkpoint import save_checkpoint

    exp = preset("ecgan_synthetic")
    cfg = ExperimentConfig(model=gen.cfg, data=exp.data, train=exp.train)
    save_checkpoint({"step": 7, "config": cfg.to_dict(),
                     "model": {f"generator.{k}": v for k, v in gen.state_dict().items()}}, str(path))


def test_ecgan_checkpoint_round_trip_and_unsupported_type(tmp_path):
    import dataclasses

    from semgan_fast.config import preset

    gen = _ecgan(class_image_fusion="semantic_preserving")
    path = tmp_path / "ecgan.pt"
    _save_ecgan_checkpoint(path, gen)
    inf = build_inference_generator(str(path))
    assert type(inf).__name__ == "ECGANInference" and inf.cfg == gen.cfg
    labels, edge = _inputs(gen.cfg, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(inf(labels, edge), gen(labels, edge).final, atol=2e-5, rtol=1e-4)
    crossview = {"step": 1, "config": preset("crossview_synthetic").to_dict(), "model": {}}
    with pytest.raises(ValueError, match="'lggan-crossview' has no inference export"):
        build_inference_generator(crossview)
    from semgan_fast.models import CrossViewGenerator

    with pytest.raises(ValueError, match="'lggan-crossview' has no inference export"):   # an LGGANGenerator subclass
        build_inference_generator(CrossViewGenerator(dataclasses.replace(preset("crossview_synthetic").model,
                                                                        use_vgg=False)))


# ------------------------------------------------------------------------------------------------
# NumPy reference ops (deploy-graph checker)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("padding_mode,activation,kernel", [("reflect", "tanh", 3), ("zeros", None, 5)])
def test_class_conv_numpy_matches_torch(padding_mode, activation, kernel):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 9, generator=gen)
    labels = torch.randint(-1, 5, (2, 7, 9), generator=gen)       # -1: out of range, class 3 of 4 may be absent
    weight = torch.randn(4, 2, 3, kernel, kernel, generator=gen)
    bias = torch.randn(4, 2, generator=gen)
    expected = class_conv_reference(x, labels, weight, bias, padding_mode, activation)
    got = class_conv_numpy(x.numpy(), labels.int().numpy(), weight.numpy(), bias.numpy(), padding_mode,
                           activation or "none")
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride,padding,padding_mode,n_extra,with_bias", [
    (1, 3, "reflect", 1, False), (2, 2, "zeros", 0, True), (1, 1, "zeros", 2, True)])
def test_onehot_conv_numpy_matches_torch(stride, padding, padding_mode, n_extra, with_bias):
    gen = torch.Generator().manual_seed(1)
    num_classes, kernel = 5, 2 * padding + 1 if padding_mode == "reflect" else 4
    labels = torch.randint(0, num_classes, (2, 9, 8), generator=gen)
    extra = torch.randn(2, n_extra, 9, 8, generator=gen) if n_extra else None
    weight = torch.randn(6, num_classes + n_extra, kernel, kernel, generator=gen)
    bias = torch.randn(6, generator=gen) if with_bias else None
    expected = onehot_conv_reference(labels, extra, weight, bias, padding, padding_mode, stride)
    got = onehot_conv_numpy(labels.int().numpy(), None if extra is None else extra.numpy(), weight.numpy(),
                            None if bias is None else bias.numpy(), stride, padding, padding_mode)
    assert got.shape == tuple(expected.shape)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Reference graph
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    gen = random_generator("synthetic", **SMALL)
    return gen, build_inference_generator(gen)


def test_reference_graph_preset_shape(tmp_path):
    """Reference graph at the cityscapes preset geometry (256x512, 35 classes + edge, "more"
    upsampling) at reduced width: structure and onnxruntime parity with the training generator."""
    gen = random_generator("cityscapes", **TINY)
    inf = build_inference_generator(gen)
    path = str(tmp_path / "model.onnx")
    model = oe.export_onnx(inf, path, graph="reference", dynamic=False)
    oe.check_model(model)
    assert os.listdir(tmp_path) == ["model.onnx"]                    # no external-data sidecar
    assert {(o.domain, o.version) for o in model.opset_import} >= {("", 18)}
    assert not oe.custom_nodes(model) and all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    assert counts["Equal"] >= 2 and counts["InstanceNormalization"] >= 1 and counts["ConvTranspose"] == 4
    groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert 35 in groups                                              # class_conv as a K-group conv
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [6, 1]      # int32 labels, fp32 edge
    meta = oe.metadata(model)
    assert meta["semgan.graph"] == "reference" and meta["semgan.size_multiple"] == "64"
    labels, edge = _inputs(gen.cfg, batch=1, seed=3)
    with torch.no_grad():
        expected = gen(labels, edge).final.numpy()
    got = oe.run_onnxruntime(path, oe.feeds_for(inf, labels, edge))
    assert got.shape == (1, 3, 256, 512)
    np.testing.assert_allclose(got, expected, atol=3e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# Deploy graph
# ------------------------------------------------------------------------------------------------

def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.fixture(scope="module")
def deploy_graph(tiny):
    _, inf = tiny
    return oe.export_onnx(inf, None, graph="deploy", dynamic=True)


def test_deploy_graph_structure(deploy_graph):
    model = deploy_graph
    oe.check_model(model)
    assert {("semgan", 1), ("", 18)} <= {(o.domain, o.version) for o in model.opset_import}
    custom = oe.custom_nodes(model)
    counts = collections.Counter(n.op_type for n in custom)
    assert counts == {"OneHotConv": 1 + 7, "ClassConv": 1}         # encoder + one per SPADE block; local branch
    for node in custom:
        a = _attrs(node)
        assert a["plugin_namespace"] == b"semgan" and a["plugin_version"] == b"1"
        if node.op_type == "ClassConv":
            assert (a["padding_mode"], a["activation"], a["has_bias"]) == (b"reflect", b"tanh", 1)
            assert len(node.input) == 4
        else:
            assert a["stride"] == 1 and a["has_extra"] == 1 and len(node.input) == 3 + a["has_bias"]
            assert (a["padding"], a["padding_mode"], a["has_bias"]) in {(3, b"reflect", 0), (1, b"zeros", 1)}
    assert not [n for n in model.graph.node if n.op_type in ("Equal", "OneHot")]   # no one-hot map built
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["labels"][0] == dims["edge"][0] and all(isinstance(d, str) for d in dims["labels"])
    assert dims["edge"][1] == 1


@pytest.mark.parametrize("batch,height,width", [(1, 32, 64), (2, 64, 32)])
def test_deploy_graph_reference_evaluator_parity(deploy_graph, tiny, batch, height, width):
    """One dynamic export, two batch/resolution combinations; NumPy class ops vs PyTorch."""
    _, inf = tiny
    labels, edge = inf.example_inputs(batch, height, width, seed=batch)
    with torch.no_grad():
        expected = inf(labels, edge).numpy()
    got = oe.run_reference_evaluator(deploy_graph, oe.feeds_for(inf, labels, edge))
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# ECGAN graphs
# ------------------------------------------------------------------------------------------------

def test_ecgan_reference_graph_dynamic():
    """Reference graph (standard ops, dynamic batch/H/W) of an ECGAN with every part the final image can
    need (G_e + G_t, G_s, the 2-layer class branch feeding G_s as the naive per-class stacks, instance
    edge, batch norm): structure, and
    onnxruntime parity with the training generator at its shape and with the inference generator at a
    second batch and resolution."""
    gen = _ecgan(class_image_fusion="semantic_preserving")
    inf = build_inference_generator(gen)
    model = oe.export_onnx(inf, None, graph="reference", dynamic=True)
    oe.check_model(model)
    assert not oe.custom_nodes(model) and all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    # one-hot maps (Equal): fc, 7 SPADE blocks, G_s, and the K masked convs of the class branch's first layer
    assert counts["Equal"] >= 9 and counts["ReduceMean"] == 1 and counts["Tanh"] >= 3 and counts["Sigmoid"] >= 3
    assert "BatchNormalization" not in counts and "InstanceNormalization" not in counts      # batch norm folded
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    layer2 = [n for n in model.graph.node if n.op_type == "Conv"
              and weights.get(n.input[1]) == (3, gen.cfg.class_hidden, 3, 3)]
    assert len(layer2) == gen.cfg.num_classes                        # the naive class branch: K stacks of 2 convs
    meta = oe.metadata(model)
    assert meta["semgan.model_type"] == "ecgan" and meta["semgan.size_multiple"] == "32"
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert all(isinstance(d, str) for d in dims["labels"]) and dims["edge"][1] == 1
    labels, edge = _inputs(gen.cfg, batch=1, seed=4)
    with torch.no_grad():
        expected = gen(labels, edge).final.numpy()
    np.testing.assert_allclose(oe.run_onnxruntime(model, oe.feeds_for(inf, labels, edge)), expected,
                               atol=3e-5, rtol=1e-4)
    labels, edge = inf.example_inputs(3, 64, 32, seed=5)
    with torch.no_grad():
        expected = inf(labels, edge).numpy()
    got = oe.run_onnxruntime(model, oe.feeds_for(inf, labels, edge))
    assert got.shape == (3, 3, 64, 32)
    np.testing.assert_allclose(got, expected, atol=3e-5, rtol=1e-4)


def test_ecgan_deploy_graph_dynamic():
    """Deploy graph (dynamic batch/H/W): semgan::OneHotConv for E's fc, every SPADE block and G_s's input
    conv; the 2-layer class branch (``class_stack``) as semgan::ClassConv (layer 1, no activation) + one
    grouped conv (group=K) + Tanh. Checker, attributes, weight shapes, and ReferenceEvaluator (NumPy
    ops) parity with the training generator and at a second batch / resolution."""
    gen = _ecgan(class_image_fusion="semantic_preserving")
    inf = build_inference_generator(gen)
    model = oe.export_onnx(inf, None, graph="deploy", dynamic=True)
    oe.check_model(model)
    custom = oe.custom_nodes(model)
    assert collections.Counter(n.op_type for n in custom) == {"OneHotConv": 1 + 7 + 1, "ClassConv": 1}
    assert not [n for n in model.graph.node if n.op_type in ("Equal", "OneHot")]
    k, channels, hidden = gen.cfg.num_classes, gen.trunk.out_channels, gen.cfg.class_hidden
    dense = 1 + channels + 3 + 3 + 3                                 # [edge, F, I', I_e', I_g]
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    extras = []
    for node in custom:
        a = _attrs(node)
        assert a["plugin_namespace"] == b"semgan" and a["plugin_version"] == b"1"
        if node.op_type == "ClassConv":
            assert (a["padding_mode"], a["activation"], a["has_bias"]) == (b"reflect", b"none", 1)
            assert weights[node.input[2]] == (k, hidden, channels, 3, 3)
        else:
            assert (a["stride"], a["padding"], a["padding_mode"], a["has_extra"], a["has_bias"]) == \
                (1, 1, b"zeros", 1, 1)
            extras.append(weights[node.input[2]][1] - k)
    assert sorted(extras) == [1] * 8 + [dense]                       # instance edge; G_s's dense input
    grouped = [n for n in model.graph.node if n.op_type == "Conv" and _attrs(n).get("group", 1) == k]
    assert len(grouped) == 1 and weights[grouped[0].input[1]] == (k * 3, hidden, 3, 3)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert all(isinstance(d, str) for d in dims["labels"])
    labels, edge = _inputs(gen.cfg, batch=1, seed=6)
    with torch.no_grad():
        expected = gen(labels, edge).final.numpy()
    np.testing.assert_allclose(oe.run_reference_evaluator(model, oe.feeds_for(inf, labels, edge)), expected,
                               atol=3e-5, rtol=1e-4)
    labels, edge = inf.example_inputs(2, 64, 32, seed=8)
    with torch.no_grad():
        expected = inf(labels, edge).numpy()
    np.testing.assert_allclose(oe.run_reference_evaluator(model, oe.feeds_for(inf, labels, edge)), expected,
                               atol=3e-5, rtol=1e-4)


def _cli(argv):
    from semgan_fast.export.cli import add_export_parsers

    parser = argparse.ArgumentParser(prog="semgan")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parsers(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_export_deploy_fp16(tmp_path, capsys):
    """semgan export onnx --graph deploy --precision fp16 --check: fp16 weights and convs, fp32
    instance norms, tanh and output; the built-in check runs the ReferenceEvaluator vs PyTorch fp32."""
    import onnx

    path = str(tmp_path / "deploy16.onnx")
    code = _cli(["export", "onnx", "--preset", "synthetic", "--ngf", "4", "--spade-hidden", "8", "--num-resblocks",
                 "1", "--graph", "deploy", "--precision", "fp16", "--static", "--batch", "1", "--height", "32",
                 "--width", "64", "--out", path, "--check"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "parity vs PyTorch fp32" in out
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)
             + list(model.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs and all(types[n.input[1]] == fp16 for n in convs)
    for node in model.graph.node:
        if node.op_type in ("InstanceNormalization", "Tanh", "Softmax"):
            assert types[node.input[0]] == fp32, node.op_type
        if node.domain == "semgan":
            assert types[node.output[0]] == fp16
    assert types["image"] == fp32 and oe.metadata(model)["semgan.precision"] == "float16"


def test_cli_ecgan_checkpoint_export_deploy_fp16(tmp_path, capsys):
    """semgan export onnx --checkpoint <ECGAN> --graph deploy --precision fp16 --check: fp16 weights,
    convs and plugin nodes; G_s's gate (ReduceMean), every Tanh and the output in fp32; the built-in check
    runs the ReferenceEvaluator against PyTorch fp32."""
    import onnx

    gen = _ecgan(class_image_fusion="semantic_preserving", class_layers=1)
    ckpt = tmp_path / "ecgan.pt"
    _save_ecgan_checkpoint(ckpt, gen)
    path = str(tmp_path / "ecgan16.onnx")
    code = _cli(["export", "onnx", "--checkpoint", str(ckpt), "--graph", "deploy", "--precision", "fp16",
                 "--static", "--batch", "1", "--out", path, "--check"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "parity vs PyTorch fp32 (ReferenceEvaluator)" in out
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)
             + list(model.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == fp16 for n in convs)
    for node in model.graph.node:
        if node.op_type in ("Tanh", "ReduceMean"):
            assert types[node.input[0]] == fp32, node.op_type
        if node.domain == "semgan":
            assert types[node.output[0]] == fp16
    classconv = [n for n in oe.custom_nodes(model) if n.op_type == "ClassConv"]
    assert len(classconv) == 1 and _attrs(classconv[0])["activation"] == b"tanh"      # one layer: tanh inside
    meta = oe.metadata(model)
    assert types["image"] == fp32 and meta["semgan.precision"] == "float16" and meta["semgan.model_type"] == "ecgan"


def test_cli_infer_checkpoint_ecgan(tmp_path, capsys):
    """semgan infer --checkpoint <ECGAN> (PyTorch inference generator, no TensorRT): label PNGs -> images
    equal to the training generator's (up to 8-bit quantisation)."""
    from PIL import Image

    from semgan_fast.imageio import save_label_map, to_uint8

    gen = _ecgan(use_instance_edge=False)
    ckpt = tmp_path / "ecgan.pt"
    _save_ecgan_checkpoint(ckpt, gen)
    labels, _ = _inputs(gen.cfg, batch=2, seed=7)
    (tmp_path / "labels").mkdir()
    for i, lab in enumerate(labels):
        save_label_map(lab, str(tmp_path / "labels" / f"m{i}.png"))
    code = _cli(["infer", "--checkpoint", str(ckpt), "--labels", str(tmp_path / "labels"), "--out",
                 str(tmp_path / "out"), "--batch-size", "2", "--device", "cpu"])
    assert code == 0 and "2 image(s)" in capsys.readouterr().out
    with torch.no_grad():
        expected = gen(labels).final
    for i in range(2):
        got = np.asarray(Image.open(tmp_path / "out" / f"m{i}_synth.png")).astype(np.int32)
        assert np.abs(got - to_uint8(expected[i]).astype(np.int32)).max() <= 1


def test_cli_rejects_unsupported_model_type(tmp_path):
    from semgan_fast.config import preset
    from semgan_fast.train.checkpoint import save_checkpoint

    path = tmp_path / "crossview.pt"
    save_checkpoint({"step": 1, "config": preset("crossview_synthetic").to_dict(), "model": {}}, str(path))
    for argv in (["export", "onnx", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")],
                 ["infer", "--checkpoint", str(path), "--labels", str(path), "--out", str(tmp_path / "o")]):
        with pytest.raises(ValueError, match="model type 'lggan-crossview' has no inference export"):
            _cli(argv)


# ------------------------------------------------------------------------------------------------
# TensorRT commands without TensorRT
# ------------------------------------------------------------------------------------------------

def _tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_tensorrt_importable(), reason="TensorRT is installed: the missing-TensorRT path is not reachable")
def test_trt_commands_without_tensorrt_exit_2(tmp_path, capsys):
    onnx_path = str(tmp_path / "m.onnx")
    import onnx
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), onnx_path)
    assert _cli(["export", "trt", "--onnx", onnx_path, "--out", str(tmp_path / "e.engine"),
                 "--max-shape", "2x64x128", "--min-shape", "1x64x128"]) == 2
    assert "TensorRT is not available" in capsys.readouterr().err
    labels = tmp_path / "labels.png"
    from semgan_fast.imageio import save_label_map
    save_label_map(torch.zeros(64, 128, dtype=torch.long), str(labels))
    assert _cli(["infer", "--engine", str(tmp_path / "e.engine"), "--labels", str(labels),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err or "TensorRT is not available" in err
    # --checkpoint: TensorRT is checked before the (slow) ONNX export
    ckpt = tmp_path / "ecgan.pt"
    _save_ecgan_checkpoint(ckpt, _ecgan(ngf=4))
    assert _cli(["export", "trt", "--checkpoint", str(ckpt), "--out", str(tmp_path / "e2.engine")]) == 2
    assert "TensorRT is not available" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "e2.onnx")
