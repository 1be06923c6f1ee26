"""Benchmark ``class_pool`` (LGGAN's class-filtered global average pooling): the naive K masked copies
(reference), ``torch.compile`` of it, and the single-pass segment-sum backends.

Cases (GPU): Cityscapes, x [B, 64, 256, 512] with B = 1, 4, 8 and K = 35 (LGGAN's x_feature_local).
``--small`` (CPU): 64x128 and 128x256, B = 1, 2. Label maps are piecewise constant (16x16 random blocks).
Modes: fwd and fwd+bwd (grad of x). GB/s count the minimum traffic: x and labels read (+ grad_x written).

    python bench/bench_class_pool.py --out bench/results/class_pool_gpu.json
    python bench/bench_class_pool.py --small --threads 1 --out bench/results/class_pool_cpu.json
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

from semgan_fast.ops.class_pool import CLASS_POOL_BACKENDS, class_pool, class_pool_reference  # noqa: E402

def main():
    p = H.parser(__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=35)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--divisor", default="image", choices=["image", "area"])
    p.add_argument("--dtypes", default=None, help="comma list of fp32,fp16,bf16 (default: fp32 on CPU, fp32,bf16 on GPU)")
    p.add_argument("--modes", default="fwd,fwd+bwd")
    args = p.parse_args()
    device = H.pick_device(args)  # also applies --threads
    torch.manual_seed(0)
    shapes = ([(b, hw) for hw in ((64, 128), (128, 256)) for b in (1, 2)] if args.small
              else [(b, (256, 512)) for b in (1, 4, 8)])
    dtypes = (args.dtypes or ("fp32" if device.type == "cpu" else "fp32,bf16")).split(",")
    fast = H.benchmark_backends(CLASS_POOL_BACKENDS, device, ("triton", "cpu"))
    k_cls, channels, divisor = args.classes, args.channels, args.divisor
    rows, summary = [], []
    for dt_name in dtypes:
        dtype = H.DTYPES[dt_name]
        for batch, (height, width) in shapes:
            x = torch.randn(batch, channels, height, width, device=device).to(dtype)
            labels = H.block_labels(batch, height, width, k_cls, 16, device)
            grad = torch.randn(batch, k_cls, channels, device=device).to(dtype)
            bytes_fwd = x.numel() * x.element_size() + labels.numel() * labels.element_size()
            bytes_bwd = x.numel() * x.element_size() + labels.numel() * labels.element_size()

            def naive(t, lab):
                return class_pool_reference(t, lab, k_cls, divisor)

            providers = {"naive": naive}
            if not args.no_compile:
                providers["naive_compiled"] = H.compiled(naive)
            for name in fast:
                providers[name] = (lambda n: lambda t, lab: class_pool(t, lab, k_cls, divisor, backend=n))(name)
            for mode in args.modes.split(","):
                medians = {}
                for prov, fn in providers.items():
                    if mode == "fwd":
                        def run(fn=fn):
                            with torch.no_grad():
                                return fn(x, labels)
                        nbytes = bytes_fwd
                    else:
                        x.requires_grad_(True)

                        def run(fn=fn):
                            fn(x, labels)[0].backward(grad)
                        nbytes = bytes_fwd + bytes_bwd
                    row = H.measure(run, device, args, grad_to_none=[x] if mode != "fwd" else None, nbytes=nbytes,
                                    K=k_cls, C=channels, B=batch, H=height, W=width, divisor=divisor, dtype=dt_name,
                                    mode=mode, provider=prov)
                    rows.append(row)
                    medians[prov] = row["median_ms"]
                    x.requires_grad_(False)
                    x.grad = None
                H.add_speedups(summary, medians, fast, "naive", B=batch, H=height, W=width, dtype=dt_name, mode=mode)
    H.write_json(args.out, "class_pool", device, rows, summary=summary,
                 config={"label_block": 16, "small": args.small})


if __name__ == "__main__":
    main()
