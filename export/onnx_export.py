"""``semgan export onnx``: inference generator -> ONNX (reference or deploy graph).

Graphs (``graph=``):
- "reference": standard ONNX operators only. ``class_conv`` is the exact masked grouped convolution
  (Equal + Cast one-hot, Mul, Pad, Conv with group=K) and ``onehot_conv`` is Equal + Cast + Concat +
  Pad + Conv (``inference.*_decomposed``). Runs in onnxruntime; used for parity checks.
- "deploy": ``class_conv`` / ``onehot_conv`` as ``semgan::ClassConv`` / ``semgan::OneHotConv`` nodes
  (``onnx_ops``) with the TensorRT plugin attributes; everything else standard. For TensorRT with
  the plugins of ``csrc/trt``; checked here with ``onnx.checker`` and the NumPy ReferenceEvaluator.

Inputs: ``labels`` int32 [B,H,W] and, for configs with the instance-edge channel, ``edge`` float32
[B,1,H,W]; output ``image`` float32 [B,3,H,W]. Dynamic axes (``dynamic=True``): batch and H, W as
multiples of the generator's size multiple (2**n_up). Precision ``fp16``: weights and convolutions in
fp16, instance norms / final tanh / weight-map softmax in fp32 (what a strongly typed TensorRT network
needs). The opset is pinned (default 18, supported by the TensorRT 10 ONNX parser); the model is
written as one file (no external-data sidecar) unless it exceeds protobuf's 2 GB limit.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings

import torch

from .inference import build_inference_generator
from .onnx_ops import DOMAIN, translation_table

GRAPHS = ("reference", "deploy")
DEFAULT_OPSET = 18
_PROTOBUF_LIMIT = 2 ** 31 - 2 ** 24   # stay clear of the 2 GiB protobuf limit


def _fused_backend(device: torch.device) -> str:
    """A fused backend that the custom ops run on this device (the exporter only needs their fake
    kernels, but the eager check call needs a real one)."""
    return "cpu" if device.type == "cpu" else "auto"


def _dynamic_shapes(generator, dynamic: bool):
    if not dynamic:
        return None
    mult = generator.size_multiple
    batch = torch.export.Dim("batch", min=1, max=1024)
    # H, W = multiple * h: divisibility is part of the shape spec, so no guard fails on it.
    height = mult * torch.export.Dim("h", min=1, max=8192 // mult)
    width = mult * torch.export.Dim("w", min=1, max=8192 // mult)
    shapes = {"labels": {0: batch, 1: height, 2: width}}
    shapes["edge"] = {0: batch, 2: height, 3: width} if generator.use_edge else None
    return shapes


class _Wrapper(torch.nn.Module):
    """Names the graph inputs (labels, edge) and fixes their dtypes for export."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, labels: torch.Tensor, edge: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(labels, edge)


def export_onnx(generator, path: str | None = None, graph: str = "reference", batch: int = 1,
                height: int | None = None, width: int | None = None, dynamic: bool = True,
                opset: int = DEFAULT_OPSET, verbose: bool = False):
    """Exports an inference generator (``build_inference_generator`` result, any dtype).

    Returns the ``onnx.ModelProto`` (also saved to ``path`` when given, as a single file). The
    generator's ops backend is switched for the export and restored afterwards.
    """
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    device = next(generator.buffers()).device
    height, width = height or generator.cfg.height, width or generator.cfg.width
    if dynamic:   # sizes 1 (batch) or 1 * multiple would be specialised to constants by torch.export
        batch = max(batch, 2)
        height, width = max(height, 2 * generator.size_multiple), max(width, 2 * generator.size_multiple)
    labels, edge = generator.example_inputs(batch, height, width, device=device)
    previous = generator.ops.backend
    generator.set_ops_backend("decomposed" if graph == "reference" else _fused_backend(device))
    table = translation_table() if graph == "deploy" else None
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    try:
        with sink, warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _Wrapper(generator).eval(), (labels, edge), dynamo=True, opset_version=opset, optimize=True,
                input_names=generator.input_names(), output_names=["image"],
                dynamic_shapes=_dynamic_shapes(generator, dynamic), custom_translation_table=table,
                external_data=False, verbose=verbose)
    finally:
        generator.set_ops_backend(previous)
    model = program.model_proto
    _annotate(model, generator, graph, dynamic)
    if path is not None:
        save_model(model, path)
    return model


def _annotate(model, generator, graph: str, dynamic: bool) -> None:
    meta = {"semgan.graph": graph, "semgan.precision": str(generator.dtype).replace("torch.", ""),
            "semgan.size_multiple": str(generator.size_multiple), "semgan.dynamic": str(int(dynamic)),
            "semgan.num_classes": str(generator.num_classes),
            "semgan.model_type": generator.model_type,
            "semgan.inputs": ",".join(generator.input_names())}
    cfg = getattr(generator, "cfg", None)
    if cfg is not None:
        import dataclasses
        meta["semgan.model_config"] = json.dumps(dataclasses.asdict(cfg))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def save_model(model, path: str) -> None:
    """Single-file save below the protobuf limit; external data (``<path>.data``) above it."""
    import onnx

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    if model.ByteSize() < _PROTOBUF_LIMIT:
        onnx.save_model(model, path)
    else:
        onnx.save_model(model, path, save_as_external_data=True, location=os.path.basename(path) + ".data")


def metadata(model) -> dict:
    return {p.key: p.value for p in model.metadata_props}


def custom_nodes(model) -> list:
    return [n for n in model.graph.node if n.domain == DOMAIN]


def check_model(model) -> None:
    """onnx.checker (full check, with our schemas registered)."""
    import onnx

    from .onnx_ops import register_schemas

    register_schemas()
    onnx.checker.check_model(model, full_check=True)


def feeds_for(generator, labels: torch.Tensor, edge: torch.Tensor | None) -> dict:
    feeds = {"labels": labels.to(torch.int32).cpu().numpy()}
    if generator.use_edge:
        feeds["edge"] = edge.float().cpu().numpy()
    return feeds


def run_onnxruntime(model, feeds: dict):
    """Runs a reference graph on onnxruntime's CPU provider; returns the image as a NumPy array."""
    import onnxruntime as ort

    data = model.SerializeToString() if not isinstance(model, (str, os.PathLike)) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(["image"], feeds)[0]


def run_reference_evaluator(model, feeds: dict):
    """Runs any graph (deploy graphs included) with onnx.reference + our NumPy class ops."""
    from .onnx_ops import reference_evaluator

    return reference_evaluator(model).run(["image"], feeds)[0]


def export_from_source(source, path: str, graph: str = "reference", precision: str = "fp32", **kwargs):
    """Checkpoint / model -> ONNX file. Returns (generator, model)."""
    generator = build_inference_generator(source, dtype=precision)
    return generator, export_onnx(generator, path, graph=graph, **kwargs)
