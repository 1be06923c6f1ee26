"""CLI commands ``semgan export onnx``, ``semgan export trt`` and ``semgan infer``.

``--checkpoint`` accepts LGGAN and ECGAN checkpoints (other model types: an error naming the type).

Wire into ``semgan_fast/cli.py``'s ``build_parser`` with ``add_export_parsers(sub)``. Each command
returns an exit code: 0 on success, 2 for bad input (ValueError, raised to the caller's handler) and
for a missing TensorRT / GPU / plugin library (message on stderr).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys


def _source(args):
    """The model to export: --checkpoint (LGGAN or ECGAN), or a randomly initialised --preset generator
    (smoke tests, benchmarks; ``ecgan_*`` presets give ECGAN)."""
    from .inference import generator_from_checkpoint, random_generator

    if args.checkpoint:
        return generator_from_checkpoint(args.checkpoint)
    overrides = {}
    for name in ("ngf", "spade_hidden", "num_resblocks"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    if args.ablation:
        from semgan_fast.config import preset

        base = preset(args.preset).model
        row = base.ablation(args.ablation)
        overrides.update({f.name: getattr(row, f.name) for f in dataclasses.fields(row)
                          if f.name != "use_vgg" and getattr(row, f.name) != getattr(base, f.name)})
    print(f"semgan export: no --checkpoint; exporting a randomly initialised {args.preset!r} generator", file=sys.stderr)
    return random_generator(args.preset, seed=args.seed, **overrides)


def cmd_export_onnx(args) -> int:
    import numpy as np
    import torch

    from . import onnx_export as oe
    from .inference import build_inference_generator

    source = _source(args)
    generator = build_inference_generator(source, dtype=args.precision)
    model = oe.export_onnx(generator, args.out, graph=args.graph, batch=args.batch, height=args.height,
                           width=args.width, dynamic=not args.static, opset=args.opset, verbose=args.verbose)
    oe.check_model(model)
    kinds = {}
    for node in model.graph.node:
        key = f"{node.domain + '::' if node.domain else ''}{node.op_type}"
        kinds[key] = kinds.get(key, 0) + 1
    custom = {k: v for k, v in kinds.items() if "::" in k}
    print(f"semgan export onnx: {args.out} ({args.graph} graph, {args.precision}, opset {args.opset}, "
          f"{'static' if args.static else 'dynamic batch/H/W'}; {len(model.graph.node)} nodes"
          + (f"; custom {custom}" if custom else "") + ")")
    if args.check:
        labels, edge = generator.example_inputs(args.batch, args.height, args.width, seed=1)
        reference = build_inference_generator(source)          # fp32 PyTorch
        with torch.no_grad():
            expected = reference(labels, edge).numpy()
        feeds = oe.feeds_for(generator, labels, edge)
        runner = oe.run_onnxruntime if args.graph == "reference" else oe.run_reference_evaluator
        got = runner(model, feeds)
        err = float(np.abs(got - expected).max())
        tol = 1e-4 if args.precision == "fp32" else 2e-2
        print(f"  parity vs PyTorch fp32 ({'onnxruntime' if args.graph == 'reference' else 'ReferenceEvaluator'}): "
              f"max |diff| = {err:.3g} (tolerance {tol})")
        if not err <= tol:
            print("semgan export onnx: parity check FAILED", file=sys.stderr)
            return 1
    return 0


def cmd_export_trt(args) -> int:
    from .trt_build import TensorRTUnavailable, build_engine, import_tensorrt

    opt = args.opt_shape or args.max_shape
    onnx_path = args.onnx
    try:
        if args.checkpoint:
            import_tensorrt()      # fail fast (exit 2) before the export when TensorRT is missing
            from .inference import build_inference_generator, generator_from_checkpoint
            from .onnx_export import export_onnx

            onnx_path = os.path.splitext(args.out)[0] + ".onnx"
            generator = build_inference_generator(generator_from_checkpoint(args.checkpoint),
                                                  dtype="fp32" if args.fp32 else "fp16")
            export_onnx(generator, onnx_path, graph="deploy", batch=opt[0], height=opt[1], width=opt[2], dynamic=True)
            print(f"semgan export trt: deploy graph of {args.checkpoint} -> {onnx_path}")
        summary = build_engine(onnx_path, args.out, args.min_shape, opt, args.max_shape, fp16=not args.fp32,
                               plugin=args.plugin, timing_cache=args.timing_cache, workspace_gib=args.workspace_gib,
                               verbose=args.verbose)
    except TensorRTUnavailable as exc:
        print(f"semgan export trt: {exc}", file=sys.stderr)
        return 2
    print(f"semgan export trt: {args.out} (TensorRT {summary['tensorrt']}, "
          f"{'strongly typed' if summary['strongly_typed'] else 'weakly typed'}, fp16={summary['fp16']}, "
          f"built in {summary['build_seconds']:.1f} s)")
    return 0


def label_files(path: str) -> list[str]:
    """``--labels``: the .png label maps of a directory (sorted), or the one file given."""
    import glob

    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.png")))
        if not files:
            raise ValueError(f"--labels directory {path!r} holds no .png label maps")
        return files
    if not os.path.isfile(path):
        raise ValueError(f"--labels {path!r} does not exist")
    return [path]


class _TorchRunner:
    """``semgan infer --checkpoint``: the PyTorch inference generator (fused class ops) on a device, with
    the interface of ``TRTGenerator`` that ``cmd_infer`` uses."""

    def __init__(self, checkpoint: str, precision: str, device: str):
        import torch

        from .inference import build_inference_generator

        self.device = torch.device(device)
        self.generator = build_inference_generator(checkpoint, dtype=precision).to(self.device)
        self.uses_edge = self.generator.use_edge
        self.info = {"size_multiple": self.generator.size_multiple}

    def __call__(self, labels, edge=None):
        import torch

        with torch.no_grad():
            return self.generator(labels, edge)


def _runner(args):
    """(runner, device): a TensorRT engine (--engine) or the PyTorch generator of a checkpoint."""
    import torch

    if args.checkpoint:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return _TorchRunner(args.checkpoint, args.precision, device), torch.device(device)
    from .trt_infer import TRTGenerator

    return TRTGenerator(args.engine, plugin=args.plugin, cuda_graphs=not args.no_cuda_graphs), torch.device("cuda")


def cmd_infer(args) -> int:
    import time

    import torch

    from semgan_fast.imageio import load_label_map, save_image
    from semgan_fast.models.layers import instance_edges

    from .trt_build import TensorRTUnavailable

    files = label_files(args.labels)
    try:
        runner, device = _runner(args)
    except TensorRTUnavailable as exc:
        print(f"semgan infer: {exc}", file=sys.stderr)
        return 2
    mult = int(runner.info.get("size_multiple", 1))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    os.makedirs(args.out, exist_ok=True)
    timings = []
    for start in range(0, len(files), args.batch_size):
        chunk = files[start:start + args.batch_size]
        maps = [load_label_map(p) for p in chunk]
        shapes = {tuple(m.shape) for m in maps}
        if len(shapes) != 1:
            raise ValueError(f"label maps of one batch must share a size, got {sorted(shapes)} (use --batch-size 1)")
        height, width = shapes.pop()
        if height % mult or width % mult:
            raise ValueError(f"label maps must be {mult}-divisible in height and width, got {height}x{width}")
        labels = torch.stack(maps).to(torch.int32).to(device)
        edge = None
        if runner.uses_edge:
            instances = labels
            if args.instances:
                instances = torch.stack([load_label_map(os.path.join(args.instances, os.path.basename(p)))
                                         for p in chunk]).to(device)
            edge = instance_edges(instances)
        sync()
        t0 = time.perf_counter()
        images = runner(labels, edge)
        sync()
        timings.append((time.perf_counter() - t0) * 1e3)
        for path, image in zip(chunk, images):
            target = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0] + "_synth.png")
            save_image(image.cpu(), target)
            print(f"  {path} -> {target}")
    print(f"semgan infer: {len(files)} image(s); per-batch latency (ms): " + json.dumps([round(t, 3) for t in timings]))
    return 0


def _shape(value: str):
    parts = value.lower().replace(",", "x").split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected BxHxW, got {value!r}")
    return tuple(int(p) for p in parts)


def add_export_parsers(subparsers) -> None:
    """Adds ``export {onnx,trt}`` and ``infer`` to a ``semgan`` subparsers object."""
    from semgan_fast.config import PRESETS

    from .onnx_export import DEFAULT_OPSET, GRAPHS

    export = subparsers.add_parser("export", help="export the generator to ONNX / TensorRT")
    export_sub = export.add_subparsers(dest="export_command", required=True)

    onnx_p = export_sub.add_parser("onnx", help="inference generator -> ONNX (reference or deploy graph)")
    onnx_p.add_argument("--checkpoint", help="trained checkpoint (default: a randomly initialised --preset model)")
    onnx_p.add_argument("--preset", default="synthetic", choices=sorted(PRESETS))
    onnx_p.add_argument("--ablation", help="preset model only: LGGAN S1..S5, ECGAN Gi/Ge/Gt/Gs/Gl/Gc (Table 3 rows)")
    onnx_p.add_argument("--ngf", type=int, help="preset model only: generator width")
    onnx_p.add_argument("--spade-hidden", dest="spade_hidden", type=int, help="preset model only")
    onnx_p.add_argument("--num-resblocks", dest="num_resblocks", type=int, help="preset model only")
    onnx_p.add_argument("--seed", type=int, default=0, help="preset model only")
    onnx_p.add_argument("--out", required=True, help="output .onnx path")
    onnx_p.add_argument("--graph", choices=GRAPHS, default="reference",
                        help="reference: standard ops only (onnxruntime); deploy: semgan:: plugin nodes (TensorRT)")
    onnx_p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    onnx_p.add_argument("--batch", type=int, default=1, help="example / static batch")
    onnx_p.add_argument("--height", type=int, help="example / static height (default: the config's)")
    onnx_p.add_argument("--width", type=int, help="example / static width (default: the config's)")
    onnx_p.add_argument("--static", action="store_true", help="fixed batch and resolution (default: dynamic)")
    onnx_p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    onnx_p.add_argument("--check", action="store_true",
                        help="compare with PyTorch (onnxruntime for reference graphs, NumPy ReferenceEvaluator for deploy)")
    onnx_p.add_argument("--verbose", action="store_true")
    onnx_p.set_defaults(func=cmd_export_onnx)

    trt_p = export_sub.add_parser("trt", help="deploy ONNX -> TensorRT engine (needs TensorRT and a GPU)")
    trt_source = trt_p.add_mutually_exclusive_group(required=True)
    trt_source.add_argument("--onnx", help="deploy graph from `semgan export onnx --graph deploy`")
    trt_source.add_argument("--checkpoint", help="LGGAN / ECGAN checkpoint: exports its deploy graph (fp16 unless "
                            "--fp32, dynamic shapes) to <out without extension>.onnx, then builds the engine")
    trt_p.add_argument("--out", required=True, help="engine path")
    trt_p.add_argument("--min-shape", dest="min_shape", type=_shape, default=(1, 256, 256), help="BxHxW")
    trt_p.add_argument("--opt-shape", dest="opt_shape", type=_shape, default=None, help="BxHxW (default: max)")
    trt_p.add_argument("--max-shape", dest="max_shape", type=_shape, default=(8, 256, 512), help="BxHxW")
    trt_p.add_argument("--fp32", action="store_true",
                       help="no fp16 (default: fp16; TensorRT >= 11 needs an fp16 ONNX graph for it)")
    trt_p.add_argument("--plugin", help="libsemgan_trt_plugins.so (default: $SEMGAN_TRT_PLUGIN or build*/)")
    trt_p.add_argument("--timing-cache", dest="timing_cache", default="semgan_trt_timing.cache")
    trt_p.add_argument("--workspace-gib", dest="workspace_gib", type=float, default=8.0)
    trt_p.add_argument("--verbose", action="store_true")
    trt_p.set_defaults(func=cmd_export_trt)

    infer = subparsers.add_parser("infer", help="label maps -> images with a TensorRT engine (CUDA graphs) or, "
                                  "with --checkpoint, the PyTorch inference generator")
    infer_source = infer.add_mutually_exclusive_group(required=True)
    infer_source.add_argument("--engine", help="TensorRT engine from `semgan export trt`")
    infer_source.add_argument("--checkpoint", help="LGGAN / ECGAN checkpoint: PyTorch inference generator "
                              "(folded, fused class ops; no TensorRT needed)")
    infer.add_argument("--labels", required=True, help="a PNG of class ids, or a directory of them")
    infer.add_argument("--instances", help="directory of instance-id PNGs with the same file names")
    infer.add_argument("--out", default="generated")
    infer.add_argument("--batch-size", dest="batch_size", type=int, default=1)
    infer.add_argument("--plugin", help="--engine: libsemgan_trt_plugins.so (default: $SEMGAN_TRT_PLUGIN or build*/)")
    infer.add_argument("--no-cuda-graphs", dest="no_cuda_graphs", action="store_true", help="--engine only")
    infer.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="--checkpoint only")
    infer.add_argument("--device", help="--checkpoint only (default: cuda if available, else cpu)")
    infer.set_defaults(func=cmd_infer)
