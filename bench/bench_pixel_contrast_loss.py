"""Benchmark: pixel_contrast_loss, plain PyTorch (ContrastiveSeg formulation) vs torch.compile of it vs ours.

Cases (GPU defaults, D = 256): self-contrast with A = 1,024 / 4,096 / 16,384 / 65,536 anchors (labels in
[0, 35)), and 1,024 anchors against a full memory bank of 35 x 5,000 and 151 x 5,000 entries (bank
entries take no gradient). ``--small``: A = 256 / 1,024 / 2,048 and banks of 35 x 200 / 151 x 50 (CPU).
Modes: fwd, fwd+bwd. Providers: naive (``pixel_contrast_loss_reference``), compile (torch.compile of
it), ours (backend "auto": Triton on CUDA, chunked PyTorch on CPU), and on CUDA also torch-chunked (the
"cpu" backend's chunked PyTorch algorithm run on the GPU). FLOP counts are the plain algorithm's GEMMs
(fwd 2AMD; bwd 2AMD per gradient input). Naive runs that do not fit are recorded with NaN times.
fp32 products follow ``--matmul-precision`` (default "highest": exact fp32 in both naive and ours;
"high": TF32 in cuBLAS, tf32x3 in ours).

    python bench/bench_pixel_contrast_loss.py --out bench/results/pixel_contrast_loss.json [--small]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

from semgan_fast.ops.pixel_contrast_loss import (_matmul_precision, pixel_contrast_loss,  # noqa: E402
                                                 pixel_contrast_loss_reference)


def _chunked_on_device(anchors, labels, contrast, contrast_labels):
    """The "cpu" backend's algorithm (PyTorch chunks, custom backward) called on any device."""
    exclude_self = contrast is None
    if exclude_self:
        contrast, contrast_labels = anchors, labels
    return torch.ops.semgan.pixel_contrast_loss(anchors, labels, contrast, contrast_labels, exclude_self, 0.1, 0.07,
                                                _matmul_precision(), "cpu")[0]


def main():
    p = _harness.parser(__doc__.splitlines()[0])
    p.add_argument("--dtype", default="fp32", choices=sorted(_harness.DTYPES))
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--matmul-precision", default=None, choices=["highest", "high", "medium"],
                   help="torch.set_float32_matmul_precision for fp32 (applies to naive and ours alike)")
    args = p.parse_args()
    if args.matmul_precision:
        torch.set_float32_matmul_precision(args.matmul_precision)
    device = _harness.pick_device(args)
    dtype = _harness.DTYPES[args.dtype]
    dim = args.dim
    if args.small:
        self_sizes, banks, bank_anchors = [256, 1024, 2048], [(35, 200), (151, 50)], 256
    else:
        self_sizes, banks, bank_anchors = [1024, 4096, 16384, 65536], [(35, 5000), (151, 5000)], 1024
    providers = {"naive": pixel_contrast_loss_reference, "ours": pixel_contrast_loss}
    if not args.no_compile:
        providers["compile"] = None  # compiled per case
    if device.type == "cuda":
        providers["torch-chunked"] = _chunked_on_device
    gen = torch.Generator().manual_seed(0)

    cases = []
    for a in self_sizes:
        cases.append(dict(case="self", anchors=a, contrast=a, dim=dim, classes=35))
    for n_cls, size in banks:
        cases.append(dict(case=f"bank{n_cls}x{size}", anchors=bank_anchors, contrast=n_cls * size, dim=dim,
                          classes=n_cls))

    rows = []
    for case in cases:
        anchors = F.normalize(torch.randn(case["anchors"], dim, generator=gen), dim=1).to(device=device, dtype=dtype)
        labels = torch.randint(0, case["classes"], (case["anchors"],), generator=gen).to(device)
        if case["case"] == "self":
            contrast = contrast_labels = None
            grad_inputs = 2  # dA has row and column terms
        else:
            contrast = F.normalize(torch.randn(case["contrast"], dim, generator=gen), dim=1).to(device=device,
                                                                                                 dtype=dtype)
            contrast_labels = torch.arange(case["classes"]).repeat_interleave(case["contrast"] // case["classes"])
            contrast_labels = contrast_labels.to(device)
            grad_inputs = 1
        gemm = 2.0 * case["anchors"] * case["contrast"] * dim
        for name, fn in providers.items():
            if name == "compile":
                fn = _harness.compiled(pixel_contrast_loss_reference)
            x = anchors.detach().clone().requires_grad_()
            loss_value = None
            try:
                with torch.no_grad():
                    loss_value = float(fn(anchors, labels, contrast, contrast_labels))
            except Exception as exc:  # noqa: BLE001 - OOM etc. recorded below through measure()
                print(f"{name} {case}: {type(exc).__name__}")
                if device.type == "cuda":
                    torch.cuda.empty_cache()

            def fwd(fn=fn):
                with torch.no_grad():
                    return fn(anchors, labels, contrast, contrast_labels)

            def fwd_bwd(fn=fn, x=x):
                fn(x, labels, contrast, contrast_labels).backward()

            for mode, call, flops, grad in (("fwd", fwd, gemm, None),
                                            ("fwd+bwd", fwd_bwd, gemm * (1 + grad_inputs), [x])):
                rows.append(_harness.measure(call, device, args, grad_to_none=grad, flops=flops, provider=name,
                                             mode=mode, dtype=args.dtype, loss=loss_value, **case))
    _harness.write_json(args.out, "pixel_contrast_loss", device, rows, small=args.small,
                        fp32_matmul_precision=torch.get_float32_matmul_precision())


if __name__ == "__main__":
    main()
