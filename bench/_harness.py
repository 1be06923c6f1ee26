"""Shared benchmark helpers (timing, peak memory, environment record, JSON output).

Timing: on CUDA ``triton.testing.do_bench`` (flushes L2 before every call; quantiles 0.5/0.2/0.8);
on CPU ``time.perf_counter`` over ``rep`` calls after ``warmup`` calls (median/p20/p80).
Memory: on CUDA, peak ``max_memory_allocated`` during one call minus what was allocated before it
("extra" memory beyond the inputs); not measured on CPU (None). One untimed call precedes both
(autotuning, compilation).
Failures (e.g. out of memory) are recorded as NaN timings with the error text, never raised.
Usage pattern (see bench_*.py): ``args = parser(...).parse_args()``, build cases, ``measure(...)`` per
(case, provider, mode), ``write_json(args.out, op, rows)``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import time
from typing import Callable

import torch


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, help="path of the JSON file to write")
    p.add_argument("--small", action="store_true", help="small shapes (CPU run)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--warmup", type=int, default=None, help="CPU: warmup calls; CUDA: warmup ms (default 25)")
    p.add_argument("--rep", type=int, default=None, help="CPU: timed calls; CUDA: timed ms (default 100)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--threads", type=int, default=None, help="CPU: torch.set_num_threads")
    return p


def pick_device(args) -> torch.device:
    """The benchmark device (also applies ``--threads``)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.device:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment(device: torch.device) -> dict:
    """Device name and library versions for the JSON record."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                f"{torch.get_num_threads()} threads)")
    return {"device": name, "device_type": device.type, "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda, "python": platform.python_version(), "git_commit": commit,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int | None = None, rep: int | None = None,
            grad_to_none=None) -> dict:
    """Median / p20 / p80 wall time of ``fn()`` in milliseconds."""
    if device.type == "cuda":
        import triton.testing
        med, p20, p80 = triton.testing.do_bench(fn, warmup=warmup or 25, rep=rep or 100, grad_to_none=grad_to_none,
                                                quantiles=[0.5, 0.2, 0.8])
        return {"median_ms": med, "p20_ms": p20, "p80_ms": p80}
    for _ in range(1 if warmup is None else warmup):
        fn()
        _clear_grads(grad_to_none)
    times = []
    for _ in range(5 if rep is None else rep):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
        _clear_grads(grad_to_none)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    return {"median_ms": statistics.median(times), "p20_ms": q[1], "p80_ms": q[7]}


def _clear_grads(tensors) -> None:
    for t in tensors or ():
        t.grad = None


def peak_extra_bytes(fn: Callable[[], object], device: torch.device, grad_to_none=None) -> int | None:
    """Peak memory allocated during one call beyond what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    _clear_grads(grad_to_none)
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    _clear_grads(grad_to_none)
    return peak


def measure(fn: Callable[[], object], device: torch.device, args=None, grad_to_none=None, flops: float | None = None,
            nbytes: float | None = None, **fields) -> dict:
    """One result row: ``fields`` + timings + peak extra memory + TFLOP/s and GB/s when counts are given.
    Errors (OOM, unsupported) become NaN timings with ``error`` set."""
    row = dict(fields)
    try:
        fn()  # first call outside the measurements: Triton autotuning, torch.compile, lazy init
        _clear_grads(grad_to_none)
        row["peak_extra_bytes"] = peak_extra_bytes(fn, device, grad_to_none)
        row.update(time_ms(fn, device, getattr(args, "warmup", None), getattr(args, "rep", None), grad_to_none))
    except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
        row.update(median_ms=math.nan, p20_ms=math.nan, p80_ms=math.nan, error=f"{type(exc).__name__}: {exc}"[:300])
        row.setdefault("peak_extra_bytes", None)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    med = row["median_ms"]
    if flops is not None:
        row["tflops"] = flops / (med * 1e-3) / 1e12 if med == med else math.nan
    if nbytes is not None:
        row["gbps"] = nbytes / (med * 1e-3) / 1e9 if med == med else math.nan
    print(_format(row), flush=True)
    return row


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn, dynamic=False)`` after resetting dynamo (one fresh compile per case)."""
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def _format(row: dict) -> str:
    keys = [k for k in row if k not in ("median_ms", "p20_ms", "p80_ms", "peak_extra_bytes", "tflops", "gbps", "error")]
    head = " ".join(f"{k}={row[k]}" for k in keys)
    mem = row.get("peak_extra_bytes")
    mem_s = "" if mem is None else f" peak+={mem / 2**20:.1f}MiB"
    extra = "".join(f" {k}={row[k]:.3g}" for k in ("tflops", "gbps") if k in row and row[k] == row[k])
    err = f" ERROR {row['error']}" if "error" in row else ""
    return f"{head}: {row['median_ms']:.3f} ms [{row['p20_ms']:.3f}, {row['p80_ms']:.3f}]{mem_s}{extra}{err}"


def write_json(path: str, op: str, device: torch.device, rows: list[dict], **extra) -> None:
    payload = {"op": op, "environment": environment(device), **extra, "results": rows}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=str)
    print(f"wrote {path}")


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def benchmark_backends(table, device: torch.device, names) -> list[str]:
    """The backends of an op's ``BackendTable`` among ``names`` that run on ``device``, in that order. The Triton
    interpreter (CPU tensors) is a correctness tool, not a provider."""
    return [n for n in names if table.backends[n].available(device) and not (n == "triton" and device.type != "cuda")]


def add_speedups(summary: list[dict], medians: dict, fast: list[str], base: str, **fields) -> None:
    """Appends (and prints) one entry per fast provider: ``fields``, the provider, its speedup vs ``base`` and,
    when timed, vs ``<base>_compiled``."""
    for name in fast:
        entry = {**fields, "provider": name, f"speedup_vs_{base}": medians[base] / medians[name]}
        if f"{base}_compiled" in medians:
            entry["speedup_vs_compiled"] = medians[f"{base}_compiled"] / medians[name]
        summary.append(entry)
        print("  ", " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()),
              flush=True)


def block_labels(batch: int, height: int, width: int, num_classes: int, block: int, device) -> torch.Tensor:
    """Random classes on ``block`` x ``block`` pixel blocks, int64 [B, H, W]: a tile sees a few classes, as in
    real label maps (the benchmarks' label model)."""
    coarse = torch.randint(0, num_classes, (batch, -(-height // block), -(-width // block)), device=device)
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :height, :width].contiguous()


def add_ratios(rows: list[dict], group_keys=("shape", "B", "K", "dtype", "mode")) -> None:
    """speedup_vs_naive / speedup_vs_compile / mem_ratio_vs_naive for every row of a group (rows sharing
    ``group_keys``) that holds a "naive" (and "compile") provider."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in group_keys), {})[r["provider"]] = r
    for group in groups.values():
        for r in group.values():
            for base in ("naive", "compile"):
                ref = group.get(base)
                if ref is not None and r["median_ms"] == r["median_ms"] and ref["median_ms"] == ref["median_ms"]:
                    r[f"speedup_vs_{base}"] = ref["median_ms"] / r["median_ms"]
            ref = group.get("naive")
            if ref is not None and r.get("peak_extra_bytes") and ref.get("peak_extra_bytes"):
                r["mem_ratio_vs_naive"] = r["peak_extra_bytes"] / ref["peak_extra_bytes"]


def run_op_main(description: str, op: str, gpu_shapes: list, small_shapes: list, providers: Callable,
                run_case: Callable, **extra) -> int:
    """The common main of the per-op scripts: options (``parser`` + ``--dtypes`` / ``--shapes``), every
    (dtype, shape) through ``run_case(shape, dtype, device, args, providers(device, no_compile))``, ratios,
    a summary and the JSON record (``extra`` goes into it). Small shapes with ``--small`` or without CUDA."""
    p = parser(description)
    p.add_argument("--dtypes", default=None, help="comma list (default: float32 on CPU, float32,bfloat16 on GPU)")
    p.add_argument("--shapes", default=None, help="comma list of shape names to run (default: all of the mode)")
    args = p.parse_args()
    device = pick_device(args)
    shapes = small_shapes if args.small or device.type != "cuda" else gpu_shapes
    if args.shapes:
        keep = set(args.shapes.split(","))
        shapes = [s for s in shapes if s[0] in keep]
    dtypes = args.dtypes or ("float32" if device.type == "cpu" else "float32,bfloat16")
    provs = providers(device, args.no_compile)
    print(f"providers: {list(provs)}", flush=True)
    rows = []
    for dtype in [getattr(torch, d) for d in dtypes.split(",")]:
        for shape in shapes:
            rows.extend(run_case(shape, dtype, device, args, provs))
    add_ratios(rows)
    for r in rows:
        if "speedup_vs_naive" in r and r["provider"] != "naive":
            vs_compile = "" if "speedup_vs_compile" not in r else f", {r['speedup_vs_compile']:.2f}x vs compile"
            print(f"{r['shape']} B={r['B']} K={r['K']} {r['dtype']} {r['mode']} {r['provider']}: "
                  f"{r['speedup_vs_naive']:.2f}x vs naive{vs_compile}")
    write_json(getattr(args, "out"), op, device, rows, **extra)
    return 0 if all(not math.isnan(r["median_ms"]) or "error" in r for r in rows) else 1
