"""Benchmark of ``class_stack`` (per-class sub-generator stacks, ECGAN Eq. 6-7) against its baselines.

Providers:
  naive    ``class_stack_reference``: the public formulation (K masked copies, K stacks of convs).
  grouped  dense grouped convs (groups = K): masked [B, K*C, H, W] input, every layer one grouped conv.
  compile  ``torch.compile(naive, dynamic=False)`` (skipped with --no-compile).
  cpu / triton   our sparse engine (present (tile, class) pairs only, background fill), as available.
Modes: ``fwd`` and ``fwd+bwd`` (gradients for x and every layer's weight and bias).

Shapes: depth-3 stacks C = 64 -> 16 -> 16 -> 3, 3x3, reflect, LeakyReLU 0.2, tanh (ECGAN's class-specific
generation with one more hidden layer). GPU: Cityscapes K = 35, 256x512, B = 1, 4; ADE20K K = 151 and 52,
256x256, B = 1, 4. ``--small`` (CPU): K = 35 at 128x256 and K = 151 at 128x128, B = 1.
Labels: random classes on 16x16-pixel blocks (a tile and its halo see a few classes, as in label maps).

Counts: FLOPs are the multiply-adds each provider executes (dense providers: K full stacks; ours: the
items' windows, from ``class_stack_work``, so our TFLOP/s is achieved kernel throughput); fwd+bwd = 3x
forward. Minimum bytes: read x, labels and weights, write the [B, K, 3, H, W] output (backward: read
grad_out, write dx and the weight gradients). ``item_fraction`` = computed (tile, class) pairs / (K x tiles).

Usage:
  python bench/bench_class_stack.py --out bench/results/class_stack_gpu.json
  python bench/bench_class_stack.py --small --device cpu --out bench/results/class_stack_cpu.json
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

from semgan_fast.ops.class_stack import (CLASS_STACK_BACKENDS, DEFAULT_TILE, class_stack,  # noqa: E402
                                         class_stack_reference, class_stack_work)

WIDTHS, KERNEL = (16, 16, 3), 3
GPU_SHAPES = [  # (name, B, C, K, H, W)
    ("cityscapes", 1, 64, 35, 256, 512),
    ("cityscapes", 4, 64, 35, 256, 512),
    ("ade20k-151", 1, 64, 151, 256, 256),
    ("ade20k-151", 4, 64, 151, 256, 256),
    ("ade20k-52", 1, 64, 52, 256, 256),
    ("ade20k-52", 4, 64, 52, 256, 256),
]
SMALL_SHAPES = [
    ("cityscapes-half", 1, 64, 35, 128, 256),
    ("ade20k-151-small", 1, 64, 151, 128, 128),
]


def grouped_stack(x, labels, weights, biases):
    """Baseline: the K masked copies on channels, each layer one grouped conv (groups = K). Exact."""
    batch, channels, height, width = x.shape
    num_classes = weights[0].shape[0]
    onehot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).to(x.dtype)
    h = (x[:, None] * onehot[:, :, None]).reshape(batch, num_classes * channels, height, width)
    for index, (weight, bias) in enumerate(zip(weights, biases)):
        pad = weight.shape[-1] // 2
        h = F.conv2d(F.pad(h, (pad,) * 4, mode="reflect"), weight.flatten(0, 1), bias.flatten(), groups=num_classes)
        h = torch.tanh(h) if index == len(weights) - 1 else F.leaky_relu(h, 0.2)
    return h.view(batch, num_classes, -1, height, width)


def providers(device: torch.device, no_compile: bool) -> dict:
    out = {"naive": class_stack_reference, "grouped": grouped_stack}
    if not no_compile:
        out["compile"] = None  # built per case (fresh dynamo state)
    for name in _harness.benchmark_backends(CLASS_STACK_BACKENDS, device, ("cpu", "triton")):
        out[name] = (lambda n: lambda x, l, w, b: class_stack(x, l, w, b, backend=n))(name)
    return out


def run_case(shape, dtype, device, args, provs):
    name, batch, channels, num_classes, height, width = shape
    torch.manual_seed(0)
    x = torch.randn(batch, channels, height, width, device=device, dtype=dtype)
    labels = _harness.block_labels(batch, height, width, num_classes, 16, device)
    weights, biases, in_ch = [], [], channels
    for out_ch in WIDTHS:
        weights.append((torch.randn(num_classes, out_ch, in_ch, KERNEL, KERNEL, device=device)
                        / (in_ch * KERNEL)).to(dtype))
        biases.append((0.1 * torch.randn(num_classes, out_ch, device=device)).to(dtype))
        in_ch = out_ch
    work = class_stack_work(labels, num_classes, [KERNEL] * len(WIDTHS), tile=DEFAULT_TILE)
    grad_out = torch.randn(batch, num_classes, WIDTHS[-1], height, width, device=device, dtype=dtype)
    leaves = [t.clone().requires_grad_(True) for t in (x, *weights, *biases)]
    layers = len(WIDTHS)
    macs_per_pixel = sum(KERNEL * KERNEL * i * o for i, o in zip((channels, *WIDTHS[:-1]), WIDTHS))
    dense_flops = 2 * macs_per_pixel * batch * num_classes * height * width
    elem = x.element_size()
    param_bytes = sum(w.numel() + b.numel() for w, b in zip(weights, biases)) * elem
    out_bytes = batch * num_classes * WIDTHS[-1] * height * width * elem
    fwd_bytes = x.numel() * elem + labels.numel() * 4 + param_bytes + out_bytes
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        nbytes = fwd_bytes if mode == "fwd" else 2 * fwd_bytes + out_bytes
        for prov, fn in provs.items():
            if prov == "compile":
                fn = _harness.compiled(provs["naive"])
            flops = dense_flops * (work["pixel_work_vs_dense"] if prov in ("cpu", "triton") else 1.0)
            flops *= 1 if mode == "fwd" else 3
            if mode == "fwd":
                def call(fn=fn):
                    with torch.no_grad():
                        return fn(x, labels, weights, biases)
                grads = None
            else:
                def call(fn=fn):
                    fn(leaves[0], labels, leaves[1:1 + layers], leaves[1 + layers:]).backward(grad_out)
                grads = leaves
            rows.append(_harness.measure(call, device, args, grad_to_none=grads, flops=flops, nbytes=nbytes,
                                         shape=name, B=batch, C=channels, K=num_classes, H=height, W=width,
                                         depth=layers, dtype=str(dtype).replace("torch.", ""), mode=mode,
                                         provider=prov, item_fraction=round(work["item_fraction"], 4)))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def main():
    return _harness.run_op_main(__doc__.split("\n")[0], "class_stack", GPU_SHAPES, SMALL_SHAPES, providers, run_case,
                                widths=list(WIDTHS), kernel=KERNEL, tile=DEFAULT_TILE, padding_mode="reflect",
                                activations="leaky_relu(0.2) between, tanh last",
                                labels="random classes on 16x16-pixel blocks",
                                note="FLOPs = multiply-adds each provider executes x2; fwd+bwd = 3x forward")


if __name__ == "__main__":
    sys.exit(main())
