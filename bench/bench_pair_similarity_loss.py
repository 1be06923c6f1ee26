"""Benchmark: pair_similarity_loss (ECGAN Eq. 3), dense PyTorch BCELoss vs torch.compile of it vs ours.

Cases (GPU defaults): one image (``--batch``) of 64x128, 128x256, 256x512 pixels with N = 35 classes
(probabilities = softmax of random logits, labels a blocky random map). ``--small``: 16x32, 32x64,
64x128 (CPU). Modes: fwd, fwd+bwd. Providers: naive (``pair_similarity_loss_reference``: dense M x M
maps), compile (torch.compile of it), ours (backend "auto": Triton on CUDA, chunked PyTorch on CPU),
ours-stride2 (the documented [::2, ::2] sub-grid estimate, not the exact loss), and on CUDA
torch-chunked (the "cpu" backend's chunked PyTorch run on the GPU). ``gpairs_per_s`` counts the
B * M^2 ordered pairs of the exact loss per second. Naive runs that do not fit are recorded as NaN.

    python bench/bench_pair_similarity_loss.py --out bench/results/pair_similarity_loss.json [--small]
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

from semgan_fast.ops.pair_similarity_loss import pair_similarity_loss, pair_similarity_loss_reference  # noqa: E402


def _chunked_on_device(probs, labels):
    batch, n_cls = probs.shape[:2]
    return torch.ops.semgan.pair_similarity_loss(probs.reshape(batch, n_cls, -1), labels.reshape(batch, -1), 0,
                                                 False, "ieee", "cpu")


def blocky_labels(batch, height, width, n_cls, block, gen):
    """One class per block x block cell, nearest-upsampled: segmentation-like regions. Classes are drawn
    with Zipf-like frequencies (p ~ 1 / (k + 1)), so a few classes cover large areas, as in Cityscapes."""
    cells = (batch, -(-height // block), -(-width // block))
    weights = 1.0 / torch.arange(1, n_cls + 1, dtype=torch.float64)
    coarse = torch.multinomial(weights, cells[0] * cells[1] * cells[2], replacement=True, generator=gen)
    coarse = coarse.view(cells[0], 1, cells[1], cells[2])
    return F.interpolate(coarse.float(), scale_factor=block, mode="nearest")[:, 0, :height, :width].long()


def main():
    p = _harness.parser(__doc__.splitlines()[0])
    p.add_argument("--dtype", default="fp32", choices=sorted(_harness.DTYPES))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--classes", type=int, default=35)
    p.add_argument("--matmul-precision", default=None, choices=["highest", "high", "medium"],
                   help="torch.set_float32_matmul_precision (naive and ours alike)")
    args = p.parse_args()
    if args.matmul_precision:
        torch.set_float32_matmul_precision(args.matmul_precision)
    device = _harness.pick_device(args)
    dtype = _harness.DTYPES[args.dtype]
    sizes = [(16, 32), (32, 64), (64, 128)] if args.small else [(64, 128), (128, 256), (256, 512)]
    providers = {"naive": pair_similarity_loss_reference, "ours": pair_similarity_loss,
                 "ours-stride2": lambda p, y: pair_similarity_loss(p, y, stride=2)}
    if not args.no_compile:
        providers["compile"] = None
    if device.type == "cuda":
        providers["torch-chunked"] = _chunked_on_device
    gen = torch.Generator().manual_seed(0)
    rows = []
    for height, width in sizes:
        n_pix = height * width
        logits = 2 * torch.randn(args.batch, args.classes, height, width, generator=gen)
        probs = torch.softmax(logits, dim=1).to(device=device, dtype=dtype)
        labels = blocky_labels(args.batch, height, width, args.classes, max(2, height // 16), gen).to(device)
        pairs = args.batch * float(n_pix) ** 2
        for name, fn in providers.items():
            if name == "compile":
                fn = _harness.compiled(pair_similarity_loss_reference)
            x = probs.detach().clone().requires_grad_()
            loss_value = None
            try:
                with torch.no_grad():
                    loss_value = float(fn(probs, labels))
            except Exception as exc:  # noqa: BLE001 - recorded through measure()
                print(f"{name} {height}x{width}: {type(exc).__name__}")
                if device.type == "cuda":
                    torch.cuda.empty_cache()

            def fwd(fn=fn):
                with torch.no_grad():
                    return fn(probs, labels)

            def fwd_bwd(fn=fn, x=x):
                fn(x, labels).backward()

            for mode, call, grad in (("fwd", fwd, None), ("fwd+bwd", fwd_bwd, [x])):
                row = _harness.measure(call, device, args, grad_to_none=grad, provider=name, mode=mode,
                                       dtype=args.dtype, batch=args.batch, height=height, width=width,
                                       classes=args.classes, loss=loss_value)
                med = row["median_ms"]
                row["gpairs_per_s"] = pairs / (med * 1e-3) / 1e9 if med == med else float("nan")
                rows.append(row)
    _harness.write_json(args.out, "pair_similarity_loss", device, rows, small=args.small,
                        fp32_matmul_precision=torch.get_float32_matmul_precision())


if __name__ == "__main__":
    main()
