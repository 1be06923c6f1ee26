"""Benchmark ``class_l1`` (LGGAN's local L1 loss, Eq. 2): the naive per-class masked L1 (reference),
``torch.compile`` of it, and the single-pass backends.

Cases (GPU): Cityscapes, per_class_out [B, 35, 3, 256, 512] with B = 1, 4, 8 (C = 3: the class
generators output RGB; ``--channels`` changes it). ``--small`` (CPU): 64x128 and 128x256, B = 1, 2.
Label maps are piecewise constant (16x16 random blocks). Modes: fwd and fwd+bwd (grads of
per_class_out and image). GB/s count the minimum traffic: per_class_out, image, labels read
(+ both gradients written).

    python bench/bench_class_l1.py --out bench/results/class_l1_gpu.json
    python bench/bench_class_l1.py --small --threads 1 --out bench/results/class_l1_cpu.json
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

from semgan_fast.ops.class_l1 import CLASS_L1_BACKENDS, class_l1, class_l1_reference  # noqa: E402

def main():
    p = H.parser(__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=35)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--dtypes", default=None, help="comma list of fp32,fp16,bf16 (default: fp32 on CPU, fp32,bf16 on GPU)")
    p.add_argument("--modes", default="fwd,fwd+bwd")
    args = p.parse_args()
    device = H.pick_device(args)  # also applies --threads
    torch.manual_seed(0)
    shapes = ([(b, hw) for hw in ((64, 128), (128, 256)) for b in (1, 2)] if args.small
              else [(b, (256, 512)) for b in (1, 4, 8)])
    dtypes = (args.dtypes or ("fp32" if device.type == "cpu" else "fp32,bf16")).split(",")
    fast = H.benchmark_backends(CLASS_L1_BACKENDS, device, ("triton", "cpu"))
    k_cls, channels = args.classes, args.channels
    rows, summary = [], []
    for dt_name in dtypes:
        dtype = H.DTYPES[dt_name]
        for batch, (height, width) in shapes:
            out = torch.tanh(torch.randn(batch, k_cls, channels, height, width, device=device)).to(dtype)
            image = torch.tanh(torch.randn(batch, channels, height, width, device=device)).to(dtype)
            labels = H.block_labels(batch, height, width, k_cls, 16, device)
            elt = out.element_size()
            bytes_fwd = (out.numel() + image.numel()) * elt + labels.numel() * labels.element_size()
            bytes_bwd = (out.numel() + image.numel()) * elt

            providers = {"naive": class_l1_reference}
            if not args.no_compile:
                providers["naive_compiled"] = H.compiled(class_l1_reference)
            for name in fast:
                providers[name] = (lambda n: lambda o, i, lab: class_l1(o, i, lab, backend=n))(name)
            for mode in args.modes.split(","):
                medians = {}
                for prov, fn in providers.items():
                    if mode == "fwd":
                        def run(fn=fn):
                            with torch.no_grad():
                                return fn(out, image, labels)
                        nbytes = bytes_fwd
                    else:
                        out.requires_grad_(True)
                        image.requires_grad_(True)

                        def run(fn=fn):
                            fn(out, image, labels).backward()
                        nbytes = 2 * bytes_fwd + bytes_bwd
                    row = H.measure(run, device, args, grad_to_none=[out, image] if mode != "fwd" else None,
                                    nbytes=nbytes, K=k_cls, C=channels, B=batch, H=height, W=width, dtype=dt_name,
                                    mode=mode, provider=prov)
                    rows.append(row)
                    medians[prov] = row["median_ms"]
                    for t in (out, image):
                        t.requires_grad_(False)
                        t.grad = None
                H.add_speedups(summary, medians, fast, "naive", B=batch, H=height, W=width, dtype=dt_name, mode=mode)
    H.write_json(args.out, "class_l1", device, rows, summary=summary,
                 config={"label_block": 16, "small": args.small})


if __name__ == "__main__":
    main()
