"""Trainer (LGGAN, ECGAN, cross-view LGGAN: the model class follows the config, ``models.build_model``):
TTUR Adam, linear LR decay, one generator and one discriminator step per iteration.

- Distributed: under ``torchrun`` the generator and discriminator are wrapped in
  DistributedDataParallel (NCCL on GPU, gloo on CPU); each rank draws its slice of the global batch
  from ``ResumableSampler``; logging, samples and checkpoints come from rank 0 only.
- Speed: bf16 autocast, or fp16 autocast with a GradScaler; channels_last; optional torch.compile;
  fused Adam on CUDA; the only host synchronisation is on logged steps.
- Safety: atomic checkpoints holding models, optimisers, schedulers, GradScaler, RNG states and the
  step (the step fixes the data position), so a killed run resumes on the same loss trajectory.
- Observability: tqdm (step, images/s, losses, ETA), a JSON-lines log, TensorBoard scalars and
  sample grids (when tensorboard is installed), peak GPU memory per logged window.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import random
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ExperimentConfig
from ..data import ResumableSampler, build_dataset, collate
from ..imageio import colorize_labels, make_grid, save_image
from ..models import LGGANModel, build_model
from .checkpoint import CheckpointManager, load_checkpoint
from .distributed import DistInfo, all_reduce_mean_, init_from_env

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} requested but CUDA is not available")
    return device


def linear_decay(total: int, decay_start: int | None):
    """LR multiplier: 1 until decay_start, then linear to 0 at ``total`` (the public schedule)."""
    def factor(step: int) -> float:
        if decay_start is None or step < decay_start:
            return 1.0
        return max(0.0, 1.0 - (step - decay_start) / max(1, total - decay_start))
    return factor


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def bare_module(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    compiled = torch._dynamo.eval_frame.OptimizedModule
    while isinstance(module, (torch.nn.parallel.DistributedDataParallel, compiled)):
        module = module._orig_mod if isinstance(module, compiled) else module.module
    return module


@contextlib.contextmanager
def unwrapped(model: LGGANModel):
    """Temporarily puts the bare generator and discriminator back, so state dicts have the bare keys."""
    wrapped = {name: getattr(model, name) for name in ("generator", "discriminator")}
    try:
        for name, module in wrapped.items():
            setattr(model, name, bare_module(module))
        yield model
    finally:
        for name, module in wrapped.items():
            setattr(model, name, module)


@dataclass
class StepResult:
    losses: dict[str, torch.Tensor]   # detached scalars, still on the device (no host sync)
    images: int


class Trainer:
    """Owns the model, optimisers, schedulers, data order and checkpoints of one run (one rank)."""

    def __init__(self, cfg: ExperimentConfig, device: str | torch.device | None = None,
                 dist_info: DistInfo | None = None):
        self.cfg = cfg
        t = cfg.train
        requested = torch.device(device) if device is not None else None
        device_type = requested.type if requested is not None else (
            "cuda" if t.device == "auto" and torch.cuda.is_available() else torch.device(
                "cpu" if t.device == "auto" else t.device).type)
        self.dist = dist_info if dist_info is not None else init_from_env(device_type)
        self.device = requested if requested is not None else resolve_device(t.device, self.dist.local_rank)
        if t.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {t.precision!r}")
        # Data first: a missing dataset fails before a large model is allocated.
        self.dataset = build_dataset(cfg.data, cfg.model)
        torch.manual_seed(t.seed)
        np.random.seed(t.seed)
        random.seed(t.seed)
        self.model = build_model(cfg.model).to(self.device)
        if t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        fused = t.fused_adam if t.fused_adam is not None else self.device.type == "cuda"
        adam = dict(betas=(t.beta1, t.beta2), eps=t.adam_eps, fused=fused or None)
        self.opt_g = torch.optim.Adam(self.model.generator_parameters(), lr=t.lr_g, **adam)
        self.opt_d = torch.optim.Adam(self.model.discriminator_parameters(), lr=t.lr_d, **adam)
        decay = linear_decay(t.iterations, t.decay_start)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, decay)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self._wrap_modules()
        self.step = 0
        self.checkpoints = CheckpointManager(os.path.join(t.out_dir, "checkpoints"), keep=t.keep_checkpoints)

    def _wrap_modules(self) -> None:
        """DDP around G and D when distributed, then torch.compile when asked (applied in place)."""
        t = self.cfg.train
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model.generator = torch.nn.parallel.DistributedDataParallel(self.model.generator, device_ids=ids)
            self.model.discriminator = torch.nn.parallel.DistributedDataParallel(self.model.discriminator,
                                                                                device_ids=ids)
        if t.compile:
            self.model.generator = torch.compile(self.model.generator)
            self.model.discriminator = torch.compile(self.model.discriminator)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "config": self.cfg.to_dict(),
            "model": self._model_state(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "world_size": self.dist.world_size,
        }

    def _model_state(self) -> dict:
        with unwrapped(self.model) as bare:
            return bare.state_dict()

    def load_state_dict(self, state: dict) -> None:
        with unwrapped(self.model) as bare:
            bare.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def save(self) -> str | None:
        """Checkpoint from rank 0 (other ranks return None)."""
        return self.checkpoints.save(self.state_dict(), self.step) if self.is_main else None

    def resume(self, source: str = "auto") -> str | None:
        """``auto``: newest usable checkpoint of this run, if any; a path: that file; ``none``: fresh start."""
        if source == "none":
            return None
        if source == "auto":
            found = self.checkpoints.load_latest()
            if found is None:
                return None
            state, path = found
        else:
            state, path = load_checkpoint(source), source
        self.load_state_dict(state)
        return path

    # ------------------------------------------------------------------------------------------ data
    def batches(self):
        """Infinite iterator of this rank's device batches continuing from ``self.step``."""
        d, t = self.cfg.data, self.cfg.train
        global_batch = t.batch_size * self.dist.world_size
        sampler = ResumableSampler(len(self.dataset), seed=d.seed + t.seed, flip=d.flip,
                                   start=self.step * global_batch, rank=self.dist.rank,
                                   world_size=self.dist.world_size, batch_size=t.batch_size)
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=t.batch_size, sampler=sampler,
                                             collate_fn=collate, num_workers=d.num_workers,
                                             pin_memory=self.device.type == "cuda",
                                             persistent_workers=d.num_workers > 0)
        memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        for batch in loader:
            moved = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            moved["image"] = moved["image"].contiguous(memory_format=memory_format)
            yield moved

    def _instance(self, batch):
        """The model's third input: ``model.condition(batch)`` when the model defines it (cross-view: the
        source view), else the instance map (when the config uses instance edges)."""
        condition = getattr(self.model, "condition", None)
        if condition is not None:
            return condition(batch)
        return batch["instance"] if self.cfg.model.use_instance_edge else None

    def _extra_inputs(self, batch) -> dict:
        """Ground-truth edges carried by the batch (precomputed or from the data set), for models whose
        losses take ``edges=`` (ECGAN); other models get nothing extra."""
        if "edge" in batch and "edges" in inspect.signature(self.model.generator_loss).parameters:
            return {"edges": batch["edge"]}
        return {}

    def _autocast(self):
        precision = self.cfg.train.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    # ------------------------------------------------------------------------------------------ step
    def train_step(self, batch: dict) -> StepResult:
        """One generator step then one discriminator step (the SPADE/LGGAN order)."""
        labels, image, instance = batch["label"], batch["image"], self._instance(batch)
        self.model.train()
        # D's gradients from the generator loss are discarded, so D skips DDP's all-reduce there.
        skip_d_sync = self.model.discriminator.no_sync() if self.dist.enabled else contextlib.nullcontext()
        with skip_d_sync:
            with self._autocast():
                g_total, g_terms, _ = self.model.generator_loss(labels, image, instance, **self._extra_inputs(batch))
            self.opt_g.zero_grad(set_to_none=True)
            self.scaler.scale(g_total).backward()
        self.scaler.step(self.opt_g)
        with torch.no_grad(), self._autocast():
            fake = self.model.generate(labels, instance)
        with self._autocast():
            d_total, d_terms = self.model.discriminator_loss(labels, image, fake, instance, **self._extra_inputs(batch))
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(d_total).backward()
        self.scaler.step(self.opt_d)
        self.scaler.update()
        self.sched_g.step()
        self.sched_d.step()
        self.step += 1
        losses = {"g_total": g_total.detach(), **g_terms, "d_total": d_total.detach(), **d_terms}
        return StepResult(losses=losses, images=labels.shape[0] * self.dist.world_size)

    @torch.no_grad()
    def save_samples(self, batch: dict, path: str):
        """Grid per sample: labels | real | the output's ``sample_columns()`` when it has them (ECGAN: edge,
        attention, I', I_g, I''; cross-view: source view first), else LGGAN's global | local | final |
        local weight | global weight."""
        self.model.eval()
        out = self.model.generate(batch["label"], self._instance(batch))
        self.model.train()
        columns = [colorize_labels(batch["label"], self.cfg.model.num_classes), batch["image"]]
        if hasattr(out, "sample_columns"):
            columns += out.sample_columns()
        else:
            columns.append(out.global_image)
            if out.local_image is not None:
                columns.append(out.local_image)
            columns.append(out.final)
            if out.weights is not None:
                columns += [(out.weights[:, i:i + 1] * 2 - 1).expand(-1, 3, -1, -1) for i in range(2)]
        grid = make_grid(columns)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_image(grid, path)
        return grid

    def _tensorboard(self):
        if not (self.cfg.train.tensorboard and self.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("tensorboard is not installed: TensorBoard logging disabled (pip install tensorboard)")
            return None
        return SummaryWriter(os.path.join(self.cfg.train.out_dir, "tensorboard"))

    def fit(self, iterations: int | None = None, progress: bool = True) -> dict[str, float]:
        """Trains until ``iterations`` total steps (default: the config's). Returns the last logged losses."""
        from tqdm import tqdm

        t = self.cfg.train
        total = t.iterations if iterations is None else iterations
        if self.step >= total:
            return {}
        main = self.is_main
        if main:
            os.makedirs(t.out_dir, exist_ok=True)
        log_file = open(os.path.join(t.out_dir, "log.jsonl"), "a") if main else None
        writer = self._tensorboard()
        last: dict[str, float] = {}
        bar = tqdm(total=total, initial=self.step, disable=not (progress and main), unit="it", dynamic_ncols=True)
        sample_batch = None
        window_start, window_images = time.perf_counter(), 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            for batch in self.batches():
                if sample_batch is None:
                    sample_batch = {k: v[: min(4, len(v))] for k, v in batch.items()}
                result = self.train_step(batch)
                window_images += result.images
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == total:
                    last = self._log(result, window_start, window_images, bar, log_file, writer)
                    window_start, window_images = time.perf_counter(), 0
                if main and (self.step % t.sample_every == 0 or self.step == total):
                    grid = self.save_samples(sample_batch, os.path.join(t.out_dir, "samples",
                                                                        f"step_{self.step:08d}.png"))
                    if writer is not None:
                        writer.add_image("samples", (grid + 1) / 2, self.step)
                if self.step % t.checkpoint_every == 0 or self.step == total:
                    self.save()
                if self.step >= total:
                    break
        finally:
            bar.close()
            if log_file is not None:
                log_file.close()
            if writer is not None:
                writer.close()
        return last

    def _log(self, result: StepResult, window_start, window_images, bar, log_file, writer) -> dict[str, float]:
        """Averages the step's losses over ranks and writes them (the loop's only host synchronisation)."""
        names = sorted(result.losses)
        stacked = torch.stack([result.losses[k].float() for k in names])
        values = all_reduce_mean_(stacked, self.dist).tolist()
        last = dict(zip(names, values))
        rate = window_images / max(time.perf_counter() - window_start, 1e-9)
        record = {"step": self.step, "images_per_s": rate, **last}
        if self.device.type == "cuda":
            record["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.is_main:
            bar.set_postfix(img_s=f"{rate:.2f}", g=f"{last['g_total']:.3f}", d=f"{last['d_total']:.3f}")
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            if writer is not None:
                for key, value in record.items():
                    if key != "step":
                        writer.add_scalar(key, value, self.step)
        return last
