"""TensorRT plugins (csrc/trt) and engines.

Without TensorRT (CI): the C++ plugin sources and the ONNX schemas must agree on plugin names,
version, namespace and attribute (PluginField) names, since TensorRT's ONNX parser passes node
attributes to the creator by name. The plugin library itself is not compiled here: no TensorRT
headers are available on this machine (see csrc/trt/CMakeLists.txt).

With TensorRT and a GPU: build an fp16 engine from the deploy graph with the plugin library
(SEMGAN_TRT_PLUGIN or a CMake build tree), run it through ``TRTGenerator`` (CUDA graphs) and compare
with the PyTorch inference generator; skipped otherwise, with the reason.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from semgan_fast.export import onnx_ops

CSRC = Path(__file__).resolve().parents[1] / "csrc" / "trt"


def _schema_attributes(name: str) -> set[str]:
    onnx = pytest.importorskip("onnx")
    onnx_ops.register_schemas()
    schema = onnx.defs.get_schema(name, onnx_ops.OPSET_VERSION, onnx_ops.DOMAIN)
    return set(schema.attributes) - {"plugin_namespace", "plugin_version"}


@pytest.mark.parametrize("op,source", [("ClassConv", "class_conv_plugin.cpp"), ("OneHotConv", "onehot_conv_plugin.cpp")])
def test_plugin_fields_match_onnx_schema(op, source):
    text = (CSRC / source).read_text()
    assert re.search(rf'constexpr char const\* kName = "{op}";', text), "plugin name must equal the ONNX op_type"
    parsed = set(re.findall(r'!std::strcmp\(f\.name, "(\w+)"\)', text))          # createPlugin
    declared = set(re.findall(r'field_names_\.emplace_back\("(\w+)"', text))     # getFieldNames
    serialized = set(re.findall(r'fields_\.add(?:Int|String)\("(\w+)"', text))   # getFieldsToSerialize
    expected = _schema_attributes(op)
    assert parsed == declared == serialized == expected


def test_plugin_namespace_and_version_match_exporter():
    common = (CSRC / "plugin_common.h").read_text()
    assert f'kPluginNamespace = "{onnx_ops.PLUGIN_NAMESPACE}"' in common
    assert f'kPluginVersion = "{onnx_ops.PLUGIN_VERSION}"' in common
    registration = (CSRC / "plugin_registration.cpp").read_text()
    assert "getCreators(int32_t& nbCreators)" in registration and "setLoggerFinder" in registration
    assert "nbCreators = 2" in registration


def _require_tensorrt():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (not installable on the CPU CI machines)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines need a CUDA GPU")
    from semgan_fast.export.trt_build import TensorRTUnavailable, find_plugin_library

    try:
        return find_plugin_library()
    except TensorRTUnavailable as exc:
        pytest.skip(str(exc))


def test_trt_engine_matches_pytorch(tmp_path):
    plugin = _require_tensorrt()
    from semgan_fast.export import onnx_export as oe
    from semgan_fast.export.inference import build_inference_generator, random_generator
    from semgan_fast.export.trt_build import build_engine
    from semgan_fast.export.trt_infer import TRTGenerator

    gen = random_generator("synthetic", ngf=8, spade_hidden=16, num_resblocks=2)
    fp32 = build_inference_generator(gen).cuda()
    half = build_inference_generator(gen, dtype="fp16")
    onnx_path = str(tmp_path / "deploy.onnx")
    oe.export_onnx(half, onnx_path, graph="deploy", dynamic=True)
    engine = str(tmp_path / "g.engine")
    build_engine(onnx_path, engine, (1, 32, 64), (2, 64, 128), (4, 128, 256), fp16=True, plugin=plugin,
                 timing_cache=str(tmp_path / "cache.bin"))
    runner = TRTGenerator(engine, plugin=plugin)
    for batch, height, width in [(2, 64, 128), (1, 32, 64)]:
        labels, edge = fp32.example_inputs(batch, height, width, device="cuda", seed=batch)
        with torch.no_grad():
            expected = fp32(labels, edge)
        got = runner(labels, edge)
        got_again = runner(labels, edge)               # CUDA-graph replay
        assert torch.equal(got, got_again)
        assert (got - expected).abs().max() < 3e-2
