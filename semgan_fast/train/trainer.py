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
- Evaluation (``eval_every`` > 0): every ``eval_every`` steps and at the last step, rank 0 generates the
  first ``eval_images`` items of the validation split with the bare generator in eval mode under
  no_grad (``semgan_fast.eval.evaluate.score_generator``, the ``semgan eval`` code path), logs the
  metrics (tqdm, TensorBoard "eval/...", a JSON-lines record with "eval"), broadcasts ``eval_metric``'s
  value to the other ranks (their only wait) and, when it beats the best so far, writes
  ``checkpoints/best.pt`` atomically. The best record {"metric", "value", "step"} is part of every
  checkpoint, and a resumed run also reads ``best.pt``'s own record, so a better best.pt is never
  replaced by a worse one. Evaluation and sample grids run on forked RNG states: they do not change
  the training trajectory, and every rank keeps drawing the same random numbers.
- Exactness checks: precision "fp64" runs model and batches in float64 (tests only).
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import math
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
from .distributed import DistInfo, all_reduce_grads_mean_, all_reduce_mean_, broadcast_, init_from_env

PRECISIONS = ("fp32", "bf16", "fp16", "fp64")

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
        if t.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {t.precision!r}")
        # float64 parameters and batches ("fp64", numerical checks); None: the model's own float32.
        self.param_dtype = torch.float64 if t.precision == "fp64" else None
        # Data first: a missing dataset (or validation split, or FID weights) fails before a large model is
        # allocated and long before the first evaluation.
        self.dataset = build_dataset(cfg.data, cfg.model)
        self.val_dataset, self.eval_split = self._validation_data()
        self._inception = None
        self._real_stats = None      # Inception statistics of the validation images, computed once
        self.best: dict | None = None  # {"metric", "value", "step"} of the best evaluation so far
        torch.manual_seed(t.seed)
        np.random.seed(t.seed)
        random.seed(t.seed)
        self.model = build_model(cfg.model).to(self.device, dtype=self.param_dtype)
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
        # Trainable parameters outside G and D (ECGAN's trained-alongside segmenter): DDP does not wrap
        # them, so their gradients are averaged across ranks by hand before the optimiser step.
        wrapped = {id(p) for p in itertools.chain(self.model.generator.parameters(),
                                                  self.model.discriminator.parameters())}
        self._unwrapped_g = [p for p in self.model.generator_parameters() if id(p) not in wrapped]
        self._unwrapped_d = [p for p in self.model.discriminator_parameters() if id(p) not in wrapped]
        if t.eval_every and self.is_main and t.eval_metric == "fid":
            from ..eval.fid import load_inception

            self._inception = load_inception(t.inception_weights, self.device)
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

    def _validation_data(self):
        """(validation dataset, split name) when ``eval_every`` > 0, else (None, None). Checks everything
        the evaluation needs now: the metric, the split's files, the image size and the FID weights."""
        t = self.cfg.train
        if t.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0: off), got {t.eval_every}")
        if not t.eval_every:
            return None, None
        from ..eval.evaluate import EVAL_SPLITS, METRIC_DIRECTIONS, metric_supported
        from ..eval.fid import resolve_inception_weights

        if t.eval_metric not in METRIC_DIRECTIONS:
            raise ValueError(f"eval_metric must be one of {sorted(METRIC_DIRECTIONS)}, got {t.eval_metric!r}")
        if t.eval_images < 0 or t.eval_batch_size < 0:
            raise ValueError(f"eval_images and eval_batch_size must be >= 0 (0: all / batch_size), got "
                             f"{t.eval_images} and {t.eval_batch_size}")
        reason = metric_supported(t.eval_metric, self.cfg.model.height, self.cfg.model.width)
        if reason is not None:
            raise ValueError(f"eval_metric={t.eval_metric!r}: {reason}")
        d = self.cfg.data
        split = t.eval_split or ("val" if d.dataset == "synthetic" else EVAL_SPLITS.get(d.dataset))
        try:
            dataset = build_dataset(d, self.cfg.model, split)
        except ValueError as exc:
            raise ValueError(f"eval_every={t.eval_every} needs the validation split {split!r} of {d.dataset} "
                             f"(root {d.root!r}): {exc}") from exc
        count = len(dataset) if not t.eval_images else min(t.eval_images, len(dataset))
        if t.eval_metric == "fid":
            if count < 2:
                raise ValueError(f"eval_metric='fid' needs at least 2 validation images, got {count}")
            try:
                resolve_inception_weights(t.inception_weights)
            except ValueError as exc:
                raise ValueError(f"eval_metric='fid' (eval_every={t.eval_every}): {exc}; or choose another "
                                 "eval_metric (--eval-metric l1 / ssim / psnr)") from exc
        return dataset, split

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
            "best": None if self.best is None else dict(self.best),
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
        self.best = self._same_metric(state.get("best"), "the checkpoint")

    def _same_metric(self, record: dict | None, where: str) -> dict | None:
        """``record`` when it scores this run's eval_metric, else None (a warning when it is for another)."""
        if record is None:
            return None
        if record.get("metric") != self.cfg.train.eval_metric:
            if self.cfg.train.eval_every:
                warnings.warn(f"{where} holds a best {record.get('metric')!r} value, this run selects by "
                              f"{self.cfg.train.eval_metric!r}: the best so far starts afresh")
            return None
        return dict(record)

    def _adopt_best_on_disk(self) -> None:
        """Takes ``best.pt``'s record when it beats the resumed state's (best.pt was written after the newest
        numbered checkpoint, e.g. just before a crash), so the resumed run never overwrites it with worse."""
        if not self.cfg.train.eval_every:
            return
        from ..eval.evaluate import is_improvement

        on_disk = self._same_metric(self.checkpoints.read_best_record(), repr(self.checkpoints.best_path))
        if on_disk is not None and is_improvement(on_disk["metric"], float(on_disk["value"]),
                                                  None if self.best is None else float(self.best["value"])):
            self.best = on_disk

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
                self._adopt_best_on_disk()
                return None
            state, path = found
        else:
            state, path = load_checkpoint(source), source
        self.load_state_dict(state)
        self._adopt_best_on_disk()
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
            moved = self._to_device(batch)
            moved["image"] = moved["image"].contiguous(memory_format=memory_format)
            yield moved

    def _to_device(self, batch: dict) -> dict:
        """Batch tensors on the run's device; floating ones in float64 under precision "fp64"."""
        moved = {}
        for key, value in batch.items():
            if torch.is_tensor(value):
                value = value.to(self.device, non_blocking=True)
                if self.param_dtype is not None and value.is_floating_point():
                    value = value.to(self.param_dtype)
            moved[key] = value
        return moved

    def _forked_rng(self):
        """Context restoring the CPU (and this device's CUDA) RNG state on exit: rank-0-only work (samples,
        evaluation) must not shift the random stream, which every rank draws identically."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices, device_type="cuda")

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
        if precision in ("fp32", "fp64"):
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
        all_reduce_grads_mean_(self._unwrapped_g, self.dist)
        self.scaler.step(self.opt_g)
        with torch.no_grad(), self._autocast():
            fake = self.model.generate(labels, instance)
        with self._autocast():
            d_total, d_terms = self.model.discriminator_loss(labels, image, fake, instance, **self._extra_inputs(batch))
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(d_total).backward()
        all_reduce_grads_mean_(self._unwrapped_d, self.dist)
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
        with self._forked_rng(), unwrapped(self.model) as bare:
            out = bare.generate(batch["label"], self._instance(batch))
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

    # ------------------------------------------------------------------------------------ evaluation
    def validate(self) -> dict[str, float | None]:
        """Scores the current generator on the validation split (call on rank 0 only): ``eval_metric``
        plus the cheap paired metrics (l1, psnr, and ssim where the images are large enough); FID only
        when it is the eval_metric. Bare generator, eval mode, no_grad, forked RNG; the training mode and
        the random stream are left as they were. Returns {metric: value}."""
        from ..eval.evaluate import metric_supported, score_generator

        t = self.cfg.train
        if self.val_dataset is None:
            raise ValueError("validate() needs eval_every > 0 (the validation split is built only then)")
        h, w = self.cfg.model.height, self.cfg.model.width
        paired = [name for name in dict.fromkeys(("l1", "psnr", "ssim", t.eval_metric))
                  if name != "fid" and metric_supported(name, h, w) is None]
        count = len(self.val_dataset) if not t.eval_images else min(t.eval_images, len(self.val_dataset))
        was_training = self.model.training
        self.model.eval()
        try:
            with self._forked_rng(), unwrapped(self.model) as bare:
                def generate(batch: dict) -> torch.Tensor:
                    batch = self._to_device(batch)
                    with self._autocast():
                        return bare.generate(batch["label"], self._instance(batch)).final

                scores = score_generator(generate, self.val_dataset, count, t.eval_batch_size or t.batch_size,
                                         self.device, paired=paired, inception=self._inception,
                                         real_stats=self._real_stats, num_workers=self.cfg.data.num_workers,
                                         inference_mode=False)
        finally:
            self.model.train(was_training)
        if self._inception is not None:
            self._real_stats = scores.real_stats   # the validation images do not change
        return {name: value for name, value in scores.metrics.items() if name in paired or name == t.eval_metric}

    def evaluate_and_keep_best(self, bar=None, log_file=None, writer=None) -> dict:
        """One evaluation (every rank calls it; rank 0 computes, the others wait for its result): updates
        ``self.best`` and, when the metric improved, writes ``best.pt``. Returns the logged record."""
        from ..eval.evaluate import _json_safe, is_improvement

        t = self.cfg.train
        start = time.perf_counter()
        metrics = self.validate() if self.is_main else {}
        value = metrics.get(t.eval_metric)
        # Every rank learns the value (and so keeps the same best record); also the other ranks' wait.
        shared = torch.tensor([math.nan if value is None else value], dtype=torch.float64, device=self.device)
        value = float(broadcast_(shared, self.dist).item())
        improved = is_improvement(t.eval_metric, value, None if self.best is None else float(self.best["value"]))
        if improved:
            self.best = {"metric": t.eval_metric, "value": value, "step": self.step}
            if self.is_main:
                self.checkpoints.save_best(self.state_dict())
        record = {"step": self.step, "eval": metrics, "eval_metric": t.eval_metric, "improved": improved,
                  "best": None if self.best is None else self.best["value"],
                  "best_step": None if self.best is None else self.best["step"],
                  "eval_s": time.perf_counter() - start}
        if self.is_main:
            if bar is not None and not bar.disable:
                best = "" if self.best is None else f" (best {self.best['value']:.4g} at step {self.best['step']})"
                bar.write(f"eval step {self.step}: {t.eval_metric} {value:.4g}{best}")
            if log_file is not None:
                log_file.write(json.dumps(_json_safe(record)) + "\n")
                log_file.flush()
            if writer is not None:
                for name, metric in metrics.items():
                    if metric is not None and math.isfinite(metric):
                        writer.add_scalar(f"eval/{name}", metric, self.step)
                if self.best is not None and math.isfinite(self.best["value"]):
                    writer.add_scalar(f"eval/best_{t.eval_metric}", self.best["value"], self.step)
        return record

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
                # Before the periodic checkpoint, so a checkpoint of this step holds this step's best record.
                if t.eval_every and (self.step % t.eval_every == 0 or self.step == total):
                    self.evaluate_and_keep_best(bar, log_file, writer)
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
