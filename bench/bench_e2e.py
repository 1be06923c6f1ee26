"""End-to-end benchmark: one LGGAN training step (generator step + discriminator step, as in
``semgan_fast.train.Trainer.train_step``), naive reference configuration vs ours, and the largest
per-GPU batch that fits.

Configurations:
  naive    every op on its plain-PyTorch reference (env ``SEMGAN_BACKEND=reference``), fp32, eager.
  ours     backend "auto" for every op, bf16 autocast on GPU (fp32 on CPU), eager.
  ours+compile   as ours, generator and discriminator under ``torch.compile`` (GPU; not with --no-compile).
Presets (GPU): ``cityscapes`` (35 classes + instance edge, 256x512, 35 class generators) and ``ade20k``
(151 classes, 256x256, 52 class generators), full model widths. ``--small`` (CPU): the ``synthetic``
preset (8 classes, 64x128, reduced widths). The images come from the procedural dataset rendered at
the preset's resolution and class count (the datasets themselves are not needed: the step's cost does
not depend on the pixels); one batch is built once and reused, so data loading is not timed. The VGG19
perceptual loss runs with torchvision's weights when the file is in the torch hub cache, else with
random weights (identical cost); the record says which.

Timing: ``--warmup`` untimed steps (default 3 on GPU, 1 on CPU; more with compile), then ``--rep`` timed
steps (default 10 on GPU, 3 on CPU), each bracketed by device synchronisations: median / p20 / p80 step
time; images/s = batch / median step time. Peak memory (CUDA): ``max_memory_allocated`` over the timed
steps (model, optimiser states and activations), also per image. If the naive configuration runs out
of memory at the requested batch, the batch is halved until it fits (recorded).
Max batch (GPU, ``ours`` eager): doubling from 1 until a step runs out of memory, then bisection; the
per-process memory is capped at ``--memory-cap-gib`` (default 79, what an 80 GB H100 exposes), so the
answer holds for an 80 GB GPU also when measured on a larger one.

    python bench/bench_e2e.py --out bench/results/e2e_gpu.json
    python bench/bench_e2e.py --small --threads 1 --out bench/results/e2e_cpu.json
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402

from semgan_fast.config import preset as make_preset  # noqa: E402
from semgan_fast.ops._dispatch import ENV_OVERRIDE  # noqa: E402

GPU_PRESETS = ("cityscapes", "ade20k")
CPU_PRESETS = ("synthetic",)


@contextlib.contextmanager
def backend_override(value: str | None):
    """Sets (or clears, for None) ``SEMGAN_BACKEND`` for the duration of the block."""
    old = os.environ.get(ENV_OVERRIDE)
    try:
        if value is None:
            os.environ.pop(ENV_OVERRIDE, None)
        else:
            os.environ[ENV_OVERRIDE] = value
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_OVERRIDE, None)
        else:
            os.environ[ENV_OVERRIDE] = old


def config_for(preset_name: str, config: str, device: torch.device, batch: int, out_dir: str):
    """ExperimentConfig of one benchmark configuration (``naive``, ``ours``, ``ours+compile``).
    Returns (cfg, env override, description dict)."""
    cfg = make_preset(preset_name)
    model = dataclasses.replace(cfg.model, use_vgg=False)  # attached after construction (see attach_vgg)
    naive = config == "naive"
    precision = "fp32" if naive or device.type != "cuda" else "bf16"
    train = dataclasses.replace(cfg.train, batch_size=batch, precision=precision, compile=config == "ours+compile",
                                device=str(device), out_dir=out_dir, tensorboard=False, log_every=10**9,
                                checkpoint_every=10**9, sample_every=10**9)
    data = dataclasses.replace(cfg.data, dataset="synthetic", num_samples=max(batch, 1), num_workers=0)
    cfg = dataclasses.replace(cfg, model=model, data=data, train=train)
    info = {"backend": "reference" if naive else "auto", "precision": precision, "compile": train.compile,
            "channels_last": train.channels_last}
    return cfg, ("reference" if naive else None), info


def attach_vgg(trainer, use_vgg: bool) -> str:
    """Puts the frozen VGG19 on the model (pretrained if cached, else random weights: same cost)."""
    if not use_vgg:
        return "off"
    from semgan_fast.models.vgg import VGG19Features, default_vgg19_path
    if os.path.isfile(default_vgg19_path()):
        vgg, kind = VGG19Features.from_pretrained(), "torchvision weights"
    else:
        vgg, kind = VGG19Features(), "random weights (weights file not cached; same cost)"
    trainer.model.vgg = vgg.to(trainer.device)
    return kind


def make_batch(trainer, batch: int) -> dict:
    """One device batch of ``batch`` samples (the procedural dataset at the preset's size)."""
    from semgan_fast.data import collate
    items = [trainer.dataset[i % len(trainer.dataset)] for i in range(batch)]
    moved = {k: (v.to(trainer.device) if torch.is_tensor(v) else v) for k, v in collate(items).items()}
    if trainer.cfg.train.channels_last:
        moved["image"] = moved["image"].contiguous(memory_format=torch.channels_last)
    return moved


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_steps(trainer, batch: dict, warmup: int, rep: int) -> dict:
    """Step-time quantiles (ms), images/s and peak memory of ``rep`` timed train steps."""
    device = trainer.device
    for _ in range(warmup):
        trainer.train_step(batch)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(rep):
        _sync(device)
        start = time.perf_counter()
        result = trainer.train_step(batch)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    losses = {k: float(v) for k, v in result.losses.items()}
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    med = statistics.median(times)
    n_img = batch["label"].shape[0]
    row = {"median_ms": med, "p20_ms": q[1], "p80_ms": q[7], "images_per_s": n_img / (med * 1e-3),
           "finite_losses": all(math.isfinite(v) for v in losses.values())}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        row.update(peak_bytes=peak, peak_bytes_per_image=peak / n_img)
    else:
        row.update(peak_bytes=None, peak_bytes_per_image=None)
    return row


def run_config(preset_name, config, device, batch, warmup, rep, use_vgg, halve_on_oom) -> dict:
    """One (preset, configuration) row; on OOM halves the batch if ``halve_on_oom`` (else NaN row)."""
    row = {"preset": preset_name, "config": config, "requested_batch": batch}
    while True:
        cfg, override, info = None, None, {}
        trainer = data = None
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cfg, override, info = config_for(preset_name, config, device, batch, tmp)
                if cfg.train.compile:
                    torch._dynamo.reset()  # a fresh compile per configuration
                with backend_override(override):
                    from semgan_fast.train import Trainer
                    trainer = Trainer(cfg, device)
                    row["vgg"] = attach_vgg(trainer, make_preset(preset_name).model.use_vgg)
                    data = make_batch(trainer, batch)
                    row.update(info, batch=batch, height=cfg.model.height, width=cfg.model.width,
                               classes=cfg.model.num_classes, local_generators=cfg.model.num_local_generators)
                    row.update(time_steps(trainer, data, warmup, rep))
            row.pop("error", None)
            break
        except Exception as exc:  # noqa: BLE001 - recorded, the benchmark goes on
            oom = _is_oom(exc)
            row.update(info, batch=batch, median_ms=math.nan, p20_ms=math.nan, p80_ms=math.nan,
                       images_per_s=math.nan, peak_bytes=None, peak_bytes_per_image=None,
                       error=("OOM: " if oom else "") + f"{type(exc).__name__}: {exc}"[:300])
            trainer = data = None
            _free(device)
            if oom and halve_on_oom and batch > 1:
                batch //= 2
                print(f"  {preset_name} {config}: out of memory, retrying with batch {batch}", flush=True)
                continue
            break
        finally:
            trainer = data = None
            _free(device)
    print(f"{preset_name} {config} batch={row.get('batch')}: {row['median_ms']:.1f} ms/step "
          f"[{row['p20_ms']:.1f}, {row['p80_ms']:.1f}], {row['images_per_s']:.2f} img/s"
          + (f", peak {row['peak_bytes'] / 2**30:.2f} GiB" if row.get("peak_bytes") else "")
          + (f"  ERROR {row['error']}" if "error" in row else ""), flush=True)
    return row


def max_batch_search(preset_name, device, cap_gib: float, limit: int, use_vgg: bool) -> dict:
    """Largest batch for which two ``ours`` (eager) training steps run under the memory cap."""
    total = torch.cuda.get_device_properties(device).total_memory
    cap = min(total, int(cap_gib * 2**30))
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    tried: dict[int, bool] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg, _, info = config_for(preset_name, "ours", device, 1, tmp)
            from semgan_fast.train import Trainer
            trainer = Trainer(cfg, device)
            attach_vgg(trainer, use_vgg)
            base = [trainer.dataset[0]]

            def fits(n: int) -> bool:
                if n in tried:
                    return tried[n]
                from semgan_fast.data import collate
                batch = None
                try:
                    batch = {k: (v.to(device) if torch.is_tensor(v) else v)
                             for k, v in collate(base * n).items()}
                    for _ in range(2):  # the first step also allocates the optimiser states
                        trainer.train_step(batch)
                    _sync(device)
                    ok = True
                except Exception as exc:  # noqa: BLE001
                    if not _is_oom(exc):
                        raise
                    ok = False
                finally:
                    batch = None
                    for opt in (trainer.opt_g, trainer.opt_d):
                        opt.zero_grad(set_to_none=True)
                    _free(device)
                tried[n] = ok
                print(f"  max-batch {preset_name}: batch {n} {'fits' if ok else 'OOM'}", flush=True)
                return ok

            lo, hi = 0, 1
            while hi <= limit and fits(hi):
                lo, hi = hi, hi * 2
            if hi > limit:
                best, note = lo, f"search stopped at the limit {limit}"
            else:
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
                best, note = lo, None
        row = {"preset": preset_name, "config": "ours", **info, "max_batch": best, "memory_cap_bytes": cap,
               "device_total_bytes": total, "tried": {str(k): v for k, v in sorted(tried.items())}}
        if note:
            row["note"] = note
    except Exception as exc:  # noqa: BLE001
        row = {"preset": preset_name, "config": "ours", "max_batch": None, "memory_cap_bytes": cap,
               "error": f"{type(exc).__name__}: {exc}"[:300], "tried": {str(k): v for k, v in tried.items()}}
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        _free(device)
    print(f"max batch {preset_name}: {row.get('max_batch')} (cap {cap / 2**30:.1f} GiB)", flush=True)
    return row


def main(argv=None):
    p = _harness.parser(__doc__.splitlines()[0])
    p.add_argument("--presets", default=None, help="comma list (default: cityscapes,ade20k on GPU, synthetic on CPU)")
    p.add_argument("--batch", type=int, default=None, help="per-step batch (default: 4 on GPU, the preset's on CPU)")
    p.add_argument("--configs", default=None, help="comma list of naive,ours,ours+compile (default: all that apply)")
    p.add_argument("--no-max-batch", action="store_true", help="skip the max batch search (GPU)")
    p.add_argument("--max-batch-limit", type=int, default=256)
    p.add_argument("--memory-cap-gib", type=float, default=79.0)
    p.add_argument("--no-vgg", action="store_true", help="leave out the VGG19 perceptual loss")
    args = p.parse_args(argv)
    device = _harness.pick_device(args)
    gpu = device.type == "cuda"
    presets = (args.presets.split(",") if args.presets else list(CPU_PRESETS if args.small or not gpu else GPU_PRESETS))
    configs = args.configs.split(",") if args.configs else (
        ["naive", "ours"] + (["ours+compile"] if gpu and not args.no_compile else []))
    warmup = max(1, args.warmup) if args.warmup is not None else (3 if gpu else 1)  # >= 1: lazy init untimed
    rep = args.rep if args.rep is not None else (10 if gpu else 3)
    rows, max_rows, skipped = [], [], []
    if not gpu:
        skipped.append("GPU cases (cityscapes/ade20k presets at full size, bf16, torch.compile, max batch search): "
                       "no CUDA device")
    for name in presets:
        batch = args.batch or (4 if gpu else make_preset(name).train.batch_size)
        use_vgg = make_preset(name).model.use_vgg and not args.no_vgg
        by_config = {}
        for config in configs:
            # torch.compile needs extra warm-up steps (compilation, recompilation for the D step).
            w = warmup + (3 if config == "ours+compile" and args.warmup is None else 0)
            row = run_config(name, config, device, batch, w, rep, use_vgg, halve_on_oom=config == "naive")
            by_config[config] = row
            rows.append(row)
        naive = by_config.get("naive")
        for config, row in by_config.items():
            if naive is not None and config != "naive" and row["images_per_s"] == row["images_per_s"] \
                    and naive["images_per_s"] == naive["images_per_s"]:
                row["speedup_vs_naive"] = row["images_per_s"] / naive["images_per_s"]
                if row.get("peak_bytes_per_image") and naive.get("peak_bytes_per_image"):
                    row["mem_per_image_ratio_vs_naive"] = naive["peak_bytes_per_image"] / row["peak_bytes_per_image"]
        if gpu and not args.no_max_batch:
            max_rows.append(max_batch_search(name, device, args.memory_cap_gib, args.max_batch_limit, use_vgg))
    _harness.write_json(args.out, "e2e_train", device, rows, max_batch=max_rows, skipped=skipped,
                        config={"warmup_steps": warmup, "timed_steps": rep, "small": args.small,
                                "memory_cap_gib": args.memory_cap_gib if gpu else None,
                                "data": "procedural dataset at the preset's size; one batch reused"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
