"""LGGAN trainer: TTUR Adam, linear LR decay, one generator and one discriminator step per iteration,
atomic checkpoints with exact resume, a progress bar, a JSON-lines log and PNG sample grids."""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ExperimentConfig
from ..data import ResumableSampler, build_dataset, collate
from ..imageio import colorize_labels, make_grid, save_image
from ..models import LGGANModel
from .checkpoint import CheckpointManager, load_checkpoint


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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


@dataclass
class StepResult:
    losses: dict[str, torch.Tensor]   # detached scalars, still on the device (no host sync)
    images: int


class Trainer:
    """Owns the model, optimisers, schedulers, data order and checkpoints of one run."""

    def __init__(self, cfg: ExperimentConfig, device: str | torch.device | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device) if device is None else torch.device(device)
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        self.model = LGGANModel(cfg.model).to(self.device)
        t = cfg.train
        self.opt_g = torch.optim.Adam(self.model.generator_parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2))
        self.opt_d = torch.optim.Adam(self.model.discriminator_parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2))
        decay = linear_decay(t.iterations, t.decay_start)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, decay)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, decay)
        self.dataset = build_dataset(cfg.data, cfg.model)
        self.step = 0
        self.checkpoints = CheckpointManager(os.path.join(t.out_dir, "checkpoints"), keep=t.keep_checkpoints)

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def save(self) -> str:
        return self.checkpoints.save(self.state_dict(), self.step)

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
        """Infinite iterator of device batches continuing from ``self.step``."""
        d, t = self.cfg.data, self.cfg.train
        sampler = ResumableSampler(len(self.dataset), seed=d.seed + t.seed, flip=d.flip,
                                   start=self.step * t.batch_size)
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=t.batch_size, sampler=sampler,
                                             collate_fn=collate, num_workers=d.num_workers,
                                             pin_memory=self.device.type == "cuda")
        for batch in loader:
            yield {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def _instance(self, batch):
        return batch["instance"] if self.cfg.model.use_instance_edge else None

    # ------------------------------------------------------------------------------------------ step
    def train_step(self, batch: dict) -> StepResult:
        """One generator step then one discriminator step (the SPADE/LGGAN order)."""
        labels, image, instance = batch["label"], batch["image"], self._instance(batch)
        self.model.train()
        g_total, g_terms, _ = self.model.generator_loss(labels, image, instance)
        self.opt_g.zero_grad(set_to_none=True)
        g_total.backward()
        self.opt_g.step()
        with torch.no_grad():
            fake = self.model.generate(labels, instance)
        d_total, d_terms = self.model.discriminator_loss(labels, image, fake, instance)
        self.opt_d.zero_grad(set_to_none=True)
        d_total.backward()
        self.opt_d.step()
        self.sched_g.step()
        self.sched_d.step()
        self.step += 1
        losses = {"g_total": g_total.detach(), **g_terms, "d_total": d_total.detach(), **d_terms}
        return StepResult(losses=losses, images=labels.shape[0])

    @torch.no_grad()
    def save_samples(self, batch: dict, path: str) -> None:
        """Grid per sample: labels | real | global | local | final | local weight | global weight."""
        self.model.eval()
        out = self.model.generate(batch["label"], self._instance(batch))
        self.model.train()
        columns = [colorize_labels(batch["label"], self.cfg.model.num_classes), batch["image"], out.global_image]
        if out.local_image is not None:
            columns.append(out.local_image)
        columns.append(out.final)
        if out.weights is not None:
            columns += [(out.weights[:, i:i + 1] * 2 - 1).expand(-1, 3, -1, -1) for i in range(2)]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_image(make_grid(columns), path)

    def fit(self, iterations: int | None = None, progress: bool = True, log=print) -> dict[str, float]:
        """Trains until ``iterations`` total steps (default: the config's). Returns the last logged losses."""
        from tqdm import tqdm

        t = self.cfg.train
        total = t.iterations if iterations is None else iterations
        os.makedirs(t.out_dir, exist_ok=True)
        log_path = os.path.join(t.out_dir, "log.jsonl")
        last: dict[str, float] = {}
        bar = tqdm(total=total, initial=self.step, disable=not progress, unit="it", dynamic_ncols=True)
        sample_batch = None
        window_start, window_images = time.perf_counter(), 0
        with open(log_path, "a") as log_file:
            for batch in self.batches():
                if self.step >= total:
                    break
                if sample_batch is None:
                    sample_batch = {k: v[: min(4, len(v))] for k, v in batch.items()}
                result = self.train_step(batch)
                window_images += result.images
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == total:
                    # The only host synchronisation of the loop: every log_every steps.
                    last = {k: float(v) for k, v in result.losses.items()}
                    elapsed = time.perf_counter() - window_start
                    rate = window_images / max(elapsed, 1e-9)
                    window_start, window_images = time.perf_counter(), 0
                    bar.set_postfix(img_s=f"{rate:.2f}", g=f"{last['g_total']:.3f}", d=f"{last['d_total']:.3f}")
                    log_file.write(json.dumps({"step": self.step, "images_per_s": rate, **last}) + "\n")
                    log_file.flush()
                if self.step % t.sample_every == 0 or self.step == total:
                    self.save_samples(sample_batch, os.path.join(t.out_dir, "samples", f"step_{self.step:08d}.png"))
                if self.step % t.checkpoint_every == 0 or self.step == total:
                    self.save()
        bar.close()
        return last
