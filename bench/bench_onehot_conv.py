"""Benchmark ``onehot_conv`` (SPADE's shared 3x3 conv on the segmap) against the dense conv on the
materialised one-hot map, and against ``torch.compile`` of that dense reference.

Cases (GPU): Cityscapes K = 35 classes + 1 instance-edge channel (36 input channels) and ADE20K
K = 151 (no edge), -> 128 output channels, 3x3, zero pad 1, at SPADE's resolutions 32x64 ... 256x512.
``--small`` (CPU): resolutions up to 128x256. Label maps are piecewise constant (8x8 random blocks, an
upper bound on the class changes a real segmap has); the fast paths' cost does not depend on K.

Modes: fwd, and fwd+bwd (grads of weight, bias and the edge channel). TFLOP/s are *dense-equivalent*
(2*B*Ho*Wo*O*(K+E)*k*k per forward, x3 for fwd+bwd) for every provider, so they compare directly; GB/s
count the minimum traffic of the gather formulation (labels, extra, output; + grad_out, dextra).

    python bench/bench_onehot_conv.py --out bench/results/onehot_conv_gpu.json
    python bench/bench_onehot_conv.py --small --out bench/results/onehot_conv_cpu.json
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

from semgan_fast.ops.onehot_conv import ONEHOT_CONV_BACKENDS, onehot_conv, onehot_conv_reference  # noqa: E402

DATASETS = {"cityscapes": (35, 1), "ade20k": (151, 0)}  # name: (K classes, E extra channels)


def main():
    p = H.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out-channels", type=int, default=128)
    p.add_argument("--dtypes", default=None, help="comma list of fp32,fp16,bf16 (default: fp32 on CPU, fp32,bf16 on GPU)")
    p.add_argument("--modes", default="fwd,fwd+bwd")
    args = p.parse_args()
    device = H.pick_device(args)  # also applies --threads
    torch.manual_seed(0)
    resolutions = [(32, 64), (64, 128), (128, 256)] if args.small else [(32, 64), (64, 128), (128, 256), (256, 512)]
    dtypes = (args.dtypes or ("fp32" if device.type == "cpu" else "fp32,bf16")).split(",")
    fast = H.benchmark_backends(ONEHOT_CONV_BACKENDS, device, ("cuda", "triton", "cpu"))
    ksize, pad, out_ch = 3, 1, args.out_channels
    rows, summary = [], []
    for dname in DATASETS:
        num_classes, n_extra = DATASETS[dname]
        for dt_name in dtypes:
            dtype = H.DTYPES[dt_name]
            for height, width in resolutions:
                labels = H.block_labels(args.batch, height, width, num_classes, 8, device)
                extra = (torch.rand(args.batch, n_extra, height, width, device=device) > 0.9).to(dtype) \
                    if n_extra else None
                weight = (torch.randn(out_ch, num_classes + n_extra, ksize, ksize, device=device) * 0.05).to(dtype)
                bias = torch.randn(out_ch, device=device).to(dtype)
                leaves = [t for t in (extra, weight, bias) if t is not None]
                pixels = args.batch * height * width
                flops_fwd = 2.0 * pixels * out_ch * (num_classes + n_extra) * ksize * ksize
                elt = weight.element_size()
                bytes_fwd = pixels * (labels.element_size() + n_extra * elt + out_ch * elt)
                bytes_bwd = pixels * (labels.element_size() + 2 * n_extra * elt + out_ch * elt)

                def dense(lab, ex, w, b):
                    return onehot_conv_reference(lab, ex, w, b, pad, "zeros")

                providers = {"dense": dense}
                if not args.no_compile:
                    providers["dense_compiled"] = H.compiled(dense)
                for name in fast:
                    providers[name] = (lambda n: lambda lab, ex, w, b: onehot_conv(lab, ex, w, b, pad, "zeros",
                                                                                   backend=n))(name)
                grad = torch.randn(args.batch, out_ch, height, width, device=device).to(dtype)
                for mode in args.modes.split(","):
                    medians = {}
                    for prov, fn in providers.items():
                        if mode == "fwd":
                            def run(fn=fn):
                                with torch.no_grad():
                                    return fn(labels, extra, weight, bias)
                            flops, nbytes = flops_fwd, bytes_fwd
                        else:
                            for t in leaves:
                                t.requires_grad_(True)

                            def run(fn=fn):
                                fn(labels, extra, weight, bias).backward(grad)
                            flops, nbytes = 3 * flops_fwd, bytes_fwd + bytes_bwd
                        row = H.measure(run, device, args, grad_to_none=leaves if mode != "fwd" else None,
                                        flops=flops, nbytes=nbytes, dataset=dname, K=num_classes, E=n_extra,
                                        O=out_ch, B=args.batch, H=height, W=width, dtype=dt_name, mode=mode,
                                        provider=prov)
                        rows.append(row)
                        medians[prov] = row["median_ms"]
                        for t in leaves:
                            t.requires_grad_(False)
                            t.grad = None
                    H.add_speedups(summary, medians, fast, "dense", dataset=dname, H=height, W=width,
                                   dtype=dt_name, mode=mode)
    H.write_json(args.out, "onehot_conv", device, rows, summary=summary,
                 config={"kernel": ksize, "padding": pad, "padding_mode": "zeros", "label_block": 8,
                         "small": args.small})


if __name__ == "__main__":
    main()
