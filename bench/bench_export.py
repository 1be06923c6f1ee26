"""Generator inference benchmark: eager (naive / fused), torch.compile, onnxruntime, TensorRT.

Shapes: the cityscapes preset (256x512, 35 classes + instance edge, full width ngf=64), batch 1
(latency) and batch 8 (throughput); ``--small``: the synthetic preset at reduced width (64x128,
8 classes), batch 1 and 2, for a CPU run. Weights are randomly initialised (inference cost does
not depend on their values).

Providers (each row also reports images/s = batch / median):
- eager_naive_fp32: inference generator with the papers' naive class ops (ops_backend="reference":
  K masked convolutions in the local branch, one_hot + cat + conv in SPADE), fp32;
- eager_fused_<dtype>: fused class ops (ops_backend="auto"); fp32 and bf16 on CPU, bf16 and fp16 on GPU;
- compile_fused_<dtype>: torch.compile of the fused generator (skip with --no-compile);
- onnxruntime_fp32: the reference ONNX graph on onnxruntime (CPU provider; the project's GPU machine
  has the CPU build);
- tensorrt_fp16: the deploy graph (fp16) as a TensorRT engine with the semgan plugins, CUDA graphs
  (only where TensorRT, a GPU and the plugin library exist; otherwise a row with the reason).

Usage: python bench/bench_export.py --out bench/results/export_cpu.json --small [--no-compile]
"""
from __future__ import annotations

import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

from semgan_fast.export import onnx_export as oe  # noqa: E402
from semgan_fast.export.inference import build_inference_generator, random_generator  # noqa: E402


def _cases(args):
    if args.small:
        gen = random_generator("synthetic", ngf=8, spade_hidden=16, num_resblocks=2)
        return gen, [(1, 64, 128), (2, 64, 128)]
    return random_generator("cityscapes"), [(1, 256, 512), (8, 256, 512)]


def main() -> None:
    parser = _harness.parser(__doc__)
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime provider")
    parser.add_argument("--no-trt", action="store_true", help="skip the TensorRT provider")
    args = parser.parse_args()
    device = _harness.pick_device(args)
    gen, shapes = _cases(args)
    cfg = gen.cfg
    rows = []
    dtypes = ["fp32", "bf16"] if device.type == "cpu" else ["bf16", "fp16"]
    generators = {"eager_naive_fp32": build_inference_generator(gen, "fp32", ops_backend="reference").to(device)}
    for dt in dtypes:
        generators[f"eager_fused_{dt}"] = build_inference_generator(gen, dt).to(device)
    compile_dtype = "fp32" if device.type == "cpu" else "fp16"
    onnx_model = None
    if not args.no_onnx:
        ref = build_inference_generator(gen)
        onnx_model = oe.export_onnx(ref, None, graph="reference", dynamic=True)
    trt_runner, trt_reason = None, None
    if not args.no_trt:
        trt_runner, trt_reason = _tensorrt_runner(gen, shapes)

    for batch, height, width in shapes:
        base = dict(batch=batch, height=height, width=width, classes=cfg.num_classes, ngf=cfg.ngf)
        labels, edge = generators["eager_naive_fp32"].example_inputs(batch, height, width, device=device)

        def record(provider, fn):
            row = _harness.measure(fn, device, args, provider=provider, **base)
            row["images_per_s"] = batch / (row["median_ms"] * 1e-3) if row["median_ms"] == row["median_ms"] else None
            rows.append(row)

        for name, model in generators.items():
            record(name, lambda m=model: _no_grad(m, labels, edge))
        if not args.no_compile:
            compiled = _harness.compiled(generators[f"eager_fused_{compile_dtype}"])
            record(f"compile_fused_{compile_dtype}", lambda: _no_grad(compiled, labels, edge))
        if onnx_model is not None:
            import onnxruntime as ort

            session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
            feeds = oe.feeds_for(generators["eager_naive_fp32"], labels, edge)
            record("onnxruntime_fp32", lambda: session.run(["image"], feeds))
        if trt_runner is not None:
            record("tensorrt_fp16", lambda: trt_runner(labels.to(torch.int32), edge))
        elif not args.no_trt:
            rows.append({"provider": "tensorrt_fp16", **base, "median_ms": float("nan"), "skipped": trt_reason})
    _harness.write_json(args.out, "generator_inference", device, rows,
                        model={"preset": "synthetic" if args.small else "cityscapes", "ngf": cfg.ngf,
                               "num_classes": cfg.num_classes, "instance_edge": cfg.use_instance_edge})


def _no_grad(model, labels, edge):
    with torch.no_grad():
        return model(labels, edge)


def _tensorrt_runner(gen, shapes):
    """(TRTGenerator, None) or (None, reason)."""
    from semgan_fast.export.trt_build import TensorRTUnavailable, build_engine
    from semgan_fast.export.trt_infer import TRTGenerator

    try:
        half = build_inference_generator(gen, "fp16")
        folder = tempfile.mkdtemp(prefix="semgan_trt_")
        onnx_path = os.path.join(folder, "deploy.onnx")
        oe.export_onnx(half, onnx_path, graph="deploy", dynamic=True)
        batches = [s[0] for s in shapes]
        height, width = shapes[0][1], shapes[0][2]
        engine = os.path.join(folder, "g.engine")
        build_engine(onnx_path, engine, (min(batches), height, width), (max(batches), height, width),
                     (max(batches), height, width), fp16=True, timing_cache=os.path.join(folder, "cache.bin"))
        return TRTGenerator(engine), None
    except TensorRTUnavailable as exc:
        return None, str(exc)


if __name__ == "__main__":
    main()
