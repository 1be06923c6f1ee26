"""Benchmark of ``class_conv`` (LGGAN's K masked copies + K per-class convs) against its baselines.

Providers:
  naive    ``class_conv_reference``: the public per-class loop (K masked copies, K convs).
  grouped  one dense grouped conv (groups = K) over the masked [B, K*C, H, W] input.
  compile  ``torch.compile(naive, dynamic=False)`` (skipped with --no-compile).
  cpu / triton / cuda   our exact gather backends, as available on the device.
Modes: ``fwd`` and ``fwd+bwd`` (gradients for x, weight, bias; upstream gradient fixed).

Shapes (GPU default): Cityscapes B = 1, 4, 8 (C = 64, O = 3, K = 35, 256x512, 7x7, reflect, tanh)
and ADE20K K = 151 and 52 (256x256, B = 1, 4). ``--small`` (CPU): K = 35 at 128x256 and 256x512
(B = 1) and K = 151 at 128x128.
Labels: random classes on 16x16-pixel blocks (a tile sees a few classes, as in real label maps).

Counts: useful FLOPs = 2*k*k*C*O per pixel forward, 3x that for fwd+bwd (dx and dW). Minimum bytes:
forward reads x, labels, weight and writes out; backward reads grad_out, out, x, labels, weight and
writes dx, dweight, dbias. Ratios (speedup vs naive / vs compile, peak-memory ratio) are added per
(shape, mode, dtype).

Usage:
  python bench/bench_class_conv.py --out bench/results/class_conv_gpu.json
  python bench/bench_class_conv.py --small --device cpu --out bench/results/class_conv_cpu.json
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

from semgan_fast.ops.class_conv import CLASS_CONV_BACKENDS, class_conv, class_conv_reference  # noqa: E402

GPU_SHAPES = [  # (name, B, C, O, K, H, W, k)
    ("cityscapes", 1, 64, 3, 35, 256, 512, 7),
    ("cityscapes", 4, 64, 3, 35, 256, 512, 7),
    ("cityscapes", 8, 64, 3, 35, 256, 512, 7),
    ("ade20k-151", 1, 64, 3, 151, 256, 256, 7),
    ("ade20k-151", 4, 64, 3, 151, 256, 256, 7),
    ("ade20k-52", 1, 64, 3, 52, 256, 256, 7),
    ("ade20k-52", 4, 64, 3, 52, 256, 256, 7),
]
SMALL_SHAPES = [
    ("cityscapes-half", 1, 64, 3, 35, 128, 256, 7),
    ("cityscapes", 1, 64, 3, 35, 256, 512, 7),
    ("ade20k-151-small", 1, 64, 3, 151, 128, 128, 7),
]
PADDING, ACTIVATION = "reflect", "tanh"


def grouped_conv(x, labels, weight, bias, padding_mode=PADDING, activation=ACTIVATION):
    """Baseline: all K masked copies stacked on channels, one grouped conv (groups = K). Exact."""
    batch, channels, height, width = x.shape
    num_classes, out_ch, _, kernel, _ = weight.shape
    pad = kernel // 2
    onehot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).to(x.dtype)     # [B, K, H, W]
    masked = (x[:, None] * onehot[:, :, None]).reshape(batch, num_classes * channels, height, width)
    masked = F.pad(masked, (pad,) * 4, mode="reflect" if padding_mode == "reflect" else "constant")
    out = F.conv2d(masked, weight.reshape(num_classes * out_ch, channels, kernel, kernel),
                   None if bias is None else bias.reshape(-1), groups=num_classes)
    out = out.view(batch, num_classes, out_ch, height, width)
    return torch.tanh(out) if activation == "tanh" else out


def providers(device: torch.device, no_compile: bool) -> dict:
    naive = lambda x, l, w, b: class_conv_reference(x, l, w, b, PADDING, ACTIVATION)  # noqa: E731
    out = {"naive": naive, "grouped": grouped_conv}
    if not no_compile:
        out["compile"] = None  # built per case (fresh dynamo state)
    for name in _harness.benchmark_backends(CLASS_CONV_BACKENDS, device, ("cpu", "triton", "cuda")):
        out[name] = (lambda n: lambda x, l, w, b: class_conv(x, l, w, b, PADDING, ACTIVATION, backend=n))(name)
    return out


def counts(batch, channels, out_ch, num_classes, height, width, kernel, elem, mode):
    pixels = batch * height * width
    fwd_flops = 2 * kernel * kernel * channels * out_ch * pixels
    x_b, lab_b = pixels * channels * elem, pixels * 4
    w_b = num_classes * out_ch * channels * kernel * kernel * elem
    out_b = num_classes * out_ch * pixels * elem
    fwd_bytes = x_b + lab_b + w_b + num_classes * out_ch * elem + out_b
    if mode == "fwd":
        return fwd_flops, fwd_bytes
    bwd_bytes = 2 * out_b + x_b + lab_b + w_b + x_b + w_b + num_classes * out_ch * elem
    return 3 * fwd_flops, fwd_bytes + bwd_bytes


def run_case(shape, dtype, device, args, provs):
    name, batch, channels, out_ch, num_classes, height, width, kernel = shape
    torch.manual_seed(0)
    x = torch.randn(batch, channels, height, width, device=device, dtype=dtype)
    labels = _harness.block_labels(batch, height, width, num_classes, 16, device)
    w = (torch.randn(num_classes, out_ch, channels, kernel, kernel, device=device) / (channels * kernel)).to(dtype)
    b = (0.1 * torch.randn(num_classes, out_ch, device=device)).to(dtype)
    grad_out = torch.randn(batch, num_classes, out_ch, height, width, device=device, dtype=dtype)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        flops, nbytes = counts(batch, channels, out_ch, num_classes, height, width, kernel, x.element_size(), mode)
        for prov, fn in provs.items():
            if prov == "compile":
                fn = _harness.compiled(provs["naive"])
            if mode == "fwd":
                def call(fn=fn):
                    with torch.no_grad():
                        return fn(x, labels, w, b)
                grads = None
            else:
                def call(fn=fn):
                    fn(leaves[0], labels, leaves[1], leaves[2]).backward(grad_out)
                grads = leaves
            rows.append(_harness.measure(call, device, args, grad_to_none=grads, flops=flops, nbytes=nbytes,
                                         shape=name, B=batch, C=channels, O=out_ch, K=num_classes, H=height,
                                         W=width, k=kernel, dtype=str(dtype).replace("torch.", ""), mode=mode,
                                         provider=prov))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def main():
    return _harness.run_op_main(__doc__.split("\n")[0], "class_conv", GPU_SHAPES, SMALL_SHAPES, providers, run_case,
                                padding_mode=PADDING, activation=ACTIVATION,
                                labels="random classes on 16x16-pixel blocks", flops_per_pixel_fwd="2*k*k*C*O",
                                note="fwd+bwd FLOPs = 3x forward; bytes = minimum traffic (see module docstring)")


if __name__ == "__main__":
    sys.exit(main())
