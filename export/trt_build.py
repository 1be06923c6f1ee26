"""``semgan export trt``: deploy ONNX graph -> TensorRT engine (needs the ``tensorrt`` Python package).

- Plugins: the ``semgan::ClassConv`` / ``semgan::OneHotConv`` nodes bind to the IPluginV3 creators of
  ``csrc/trt`` (library ``libsemgan_trt_plugins.so``; ``--plugin`` or ``SEMGAN_TRT_PLUGIN``), loaded
  into the plugin registry before parsing.
- Precision: TensorRT >= 11 only builds strongly typed networks, so fp16 must be in the graph
  (``semgan export onnx --precision fp16``: weights/convs fp16, norms, final tanh and the fusion in
  fp32). An fp16 graph is always built strongly typed. On TensorRT 10 an fp32 graph with ``fp16=True``
  uses the (weakly typed) builder flag ``BuilderFlag.FP16`` instead.
- One optimisation profile over batch and resolution (min / opt / max shapes of ``labels`` [B,H,W];
  ``edge`` [B,1,H,W] follows), and a timing cache file that is loaded if present and written back.
- A JSON sidecar ``<engine>.json`` keeps what ``semgan infer`` needs (inputs, classes, size multiple).

Where TensorRT is not importable every entry point raises ``TensorRTUnavailable`` with the reason;
the CLI prints it and exits with code 2.
"""
from __future__ import annotations

import ctypes
import glob
import json
import os

PLUGIN_ENV = "SEMGAN_TRT_PLUGIN"
PLUGIN_BASENAME = "libsemgan_trt_plugins.so"


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a GPU / the plugin library) is missing; the message says what and how to fix it."""


def import_tensorrt():
    """The ``tensorrt`` module, or TensorRTUnavailable with the import error."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"TensorRT is not available ({type(exc).__name__}: {exc}). Install TensorRT 10.x/11.x with its "
            "Python bindings (pip install tensorrt, on a machine that can reach NVIDIA's package index) and "
            "a CUDA GPU; the ONNX export (`semgan export onnx`) works without it.") from exc
    return trt


def trt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def find_plugin_library(path: str | None = None) -> str:
    """Plugin library path: explicit, $SEMGAN_TRT_PLUGIN, or a CMake build tree under the repository."""
    candidates = [path] if path else []
    if os.environ.get(PLUGIN_ENV):
        candidates.append(os.environ[PLUGIN_ENV])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates += sorted(glob.glob(os.path.join(root, "build*", "**", PLUGIN_BASENAME), recursive=True))
    for cand in candidates:
        if cand and os.path.isfile(cand):
            return cand
    raise TensorRTUnavailable(
        f"TensorRT plugin library {PLUGIN_BASENAME} not found (pass --plugin or set {PLUGIN_ENV}). Build it with "
        "CMake: add_subdirectory(csrc/trt) and -DTensorRT_ROOT=<TensorRT install>, target semgan_trt_plugins.")


def load_plugins(trt, path: str | None = None) -> str:
    """Loads the plugin library into TensorRT's plugin registry; returns its path."""
    lib = find_plugin_library(path)
    registry = trt.get_plugin_registry()
    if hasattr(registry, "load_library"):
        registry.load_library(lib)
    else:  # older bindings: make getCreators visible, then register through the shared-library loader
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    return lib


def _onnx_metadata(onnx_path: str) -> dict:
    import onnx

    model = onnx.load(onnx_path, load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _shape3(value, name: str) -> tuple[int, int, int]:
    if isinstance(value, str):
        value = [int(v) for v in value.lower().replace("x", ",").split(",") if v]
    value = tuple(int(v) for v in value)
    if len(value) != 3 or min(value) < 1:
        raise ValueError(f"{name} must be BxHxW (three positive integers), got {value}")
    return value


def build_engine(onnx_path: str, engine_path: str, min_shape, opt_shape, max_shape, fp16: bool = True,
                 plugin: str | None = None, timing_cache: str | None = None, workspace_gib: float = 8.0,
                 verbose: bool = False) -> dict:
    """Builds and writes the engine. Shapes are (batch, height, width) of ``labels``.

    Returns a summary dict (TensorRT version, typing mode, precision, paths, build seconds).
    """
    import time

    if not os.path.isfile(onnx_path):
        raise ValueError(f"ONNX file {onnx_path!r} does not exist")
    meta = _onnx_metadata(onnx_path)
    if meta.get("semgan.graph") not in (None, "deploy"):
        raise ValueError(f"{onnx_path} is a {meta.get('semgan.graph')!r} graph; TensorRT builds use the deploy graph "
                         "(semgan export onnx --graph deploy)")
    shapes = [_shape3(s, n) for s, n in ((min_shape, "min shape"), (opt_shape, "opt shape"), (max_shape, "max shape"))]
    for dim in range(3):
        if not shapes[0][dim] <= shapes[1][dim] <= shapes[2][dim]:
            raise ValueError(f"shapes must satisfy min <= opt <= max per dimension, got {shapes}")
    mult = int(meta.get("semgan.size_multiple", "1"))
    for shape in shapes:
        if shape[1] % mult or shape[2] % mult:
            raise ValueError(f"heights and widths must be multiples of {mult}, got {shape}")
    graph_fp16 = meta.get("semgan.precision") == "float16"

    trt = import_tensorrt()
    major = trt_major(trt)
    if fp16 and not graph_fp16 and major >= 11:
        raise ValueError("TensorRT >= 11 builds strongly typed networks only: export the graph in fp16 "
                         "(semgan export onnx --graph deploy --precision fp16)")
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    lib = load_plugins(trt, plugin)
    builder = trt.Builder(logger)
    strongly_typed = graph_fp16 or major >= 11
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.path.abspath(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2 ** 30))
    if fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)       # TensorRT 10, fp32 graph: weak typing
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name == "labels":
            profile.set_shape(tensor.name, *shapes)
        elif tensor.name == "edge":
            profile.set_shape(tensor.name, *[(b, 1, h, w) for b, h, w in shapes])
        else:
            raise ValueError(f"unexpected network input {tensor.name!r}")
    config.add_optimization_profile(profile)
    cache_blob = b""
    if timing_cache and os.path.isfile(timing_cache):
        with open(timing_cache, "rb") as f:
            cache_blob = f.read()
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    os.makedirs(os.path.dirname(os.path.abspath(engine_path)) or ".", exist_ok=True)
    with open(engine_path, "wb") as f:
        f.write(bytes(serialized))
    if timing_cache:
        with open(timing_cache, "wb") as f:
            f.write(bytes(config.get_timing_cache().serialize()))
    summary = {"tensorrt": trt.__version__, "strongly_typed": strongly_typed, "fp16": bool(fp16 or graph_fp16),
               "onnx": os.path.abspath(onnx_path), "engine": os.path.abspath(engine_path), "plugin": lib,
               "profile": {"min": shapes[0], "opt": shapes[1], "max": shapes[2]}, "build_seconds": seconds,
               "inputs": meta.get("semgan.inputs", "labels").split(","),
               "num_classes": int(meta.get("semgan.num_classes", "0")), "size_multiple": mult}
    with open(engine_path + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    return summary
