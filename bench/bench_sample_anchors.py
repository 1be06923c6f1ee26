"""Benchmark: sample_anchors, ContrastiveSeg-style Python-loop sampler vs the vectorised one.

Cases (GPU defaults): B = 8 images, K = 35 classes, labels/predictions at 256x512 (blocky random class
regions, 20% of predictions wrong), embeddings D = 256 at stride 1 (256x512) and stride 8 (32x64); labels
are nearest-downsampled inside the op, as ContrastiveSeg does. max_samples = 1024, max_views = 100.
``--small``: B = 2, 64x128 labels, D = 64, max_views = 20 (CPU). Providers: loop (``sample_anchors_reference``),
vectorized, and compile (torch.compile of the vectorised sampler). ``host_sync_ops`` counts the aten ops
per call that read device data on the host (``.item()``, ``nonzero``, ``unique``, ...), recorded with a
dispatch mode on one extra call; on CUDA the vectorised sampler is also run under
``torch.cuda.set_sync_debug_mode("error")``.

    python bench/bench_sample_anchors.py --out bench/results/sample_anchors.json [--small]
"""
from __future__ import annotations

import functools
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402
from bench_pair_similarity_loss import blocky_labels  # noqa: E402

from semgan_fast.ops.sample_anchors import sample_anchors, sample_anchors_reference  # noqa: E402

SYNC_OPS = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive", "masked_select",
            "repeat_interleave", "bincount", "histc"}


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ in SYNC_OPS
        return func(*args, **(kwargs or {}))


def main():
    p = _harness.parser(__doc__.splitlines()[0])
    p.add_argument("--max-views", type=int, default=None, help="default 100 (ContrastiveSeg); 20 with --small")
    args = p.parse_args()
    device = _harness.pick_device(args)
    max_views = args.max_views or (20 if args.small else 100)
    if args.small:
        batch, n_cls, height, width, dim = 2, 35, 64, 128, 64
    else:
        batch, n_cls, height, width, dim = 8, 35, 256, 512, 256
    gen = torch.Generator().manual_seed(0)
    labels = blocky_labels(batch, height, width, n_cls, max(8, height // 8), gen)
    wrong = torch.rand(batch, height, width, generator=gen) < 0.2
    preds = torch.where(wrong, torch.randint(0, n_cls, (batch, height, width), generator=gen), labels)
    labels, preds = labels.to(device), preds.to(device)
    rows = []
    for stride in (1, 8):
        emb = torch.randn(batch, dim, height // stride, width // stride, generator=gen).to(device)
        kw = dict(max_samples=1024, max_views=max_views)
        providers = {
            "loop": lambda g: sample_anchors_reference(emb, labels[:, ::stride, ::stride], preds[:, ::stride, ::stride],
                                                       n_cls, generator=g, **kw),
            "vectorized": lambda g: sample_anchors(emb, labels, preds, n_cls, generator=g, **kw),
        }
        if not args.no_compile:
            providers["compile"] = _harness.compiled(
                functools.partial(sample_anchors, emb, labels, preds, n_cls, **kw))
        for name, fn in providers.items():
            g = torch.Generator(device=device).manual_seed(0)
            counter = SyncCounter()
            out = None
            try:
                with counter:
                    out = fn(g) if name != "compile" else fn(generator=g)
            except Exception as exc:  # noqa: BLE001
                print(f"{name} stride {stride}: {type(exc).__name__}: {exc}"[:200])
            call = (lambda fn=fn, g=g: fn(g)) if name != "compile" else (lambda fn=fn, g=g: fn(generator=g))
            row = _harness.measure(call, device, args, provider=name, batch=batch, classes=n_cls, height=height,
                                   width=width, stride=stride, dim=dim, host_sync_ops=counter.count if out else None,
                                   anchors=int(out.valid.sum()) if out is not None else None,
                                   n_view=int(out.n_view) if out is not None else None)
            if device.type == "cuda" and name == "vectorized":
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    fn(g)
                    row["cuda_sync_debug_error"] = "none"
                except RuntimeError as exc:
                    row["cuda_sync_debug_error"] = str(exc)[:200]
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            rows.append(row)
    _harness.write_json(args.out, "sample_anchors", device, rows, small=args.small, max_samples=1024,
                        max_views=max_views)


if __name__ == "__main__":
    main()
