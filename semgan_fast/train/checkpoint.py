"""Atomic checkpoints: write to a temporary file in the same directory, flush, fsync, rename.

A checkpoint is a dict with a format marker; loading checks the marker and the required keys and
raises ``ValueError`` naming the file when it is missing, truncated or not ours. ``CheckpointManager``
keeps the newest N files and, when the newest is corrupt, falls back to the previous one with a warning.
It also holds ``best.pt``, the checkpoint with the best evaluation metric so far: written with the same
atomic writer, outside the rotation, and never picked by ``load_latest`` (a run resumes from its newest
state, not its best one). Its state carries the record ``{"metric", "value", "step"}`` under "best".
"""
from __future__ import annotations

import glob
import os
import re
import warnings

import torch

FORMAT = "semgan_fast.checkpoint/1"
REQUIRED_KEYS = ("format", "step", "config", "model")
BEST_NAME = "best.pt"


def save_checkpoint(state: dict, path: str) -> None:
    """Atomically writes ``state`` (plus the format marker) to ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({**state, "format": FORMAT}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    # Persist the rename itself.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Loads and validates a checkpoint. Only load files you trust (they hold pickled RNG states)."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated zip, bad pickle, ...
        raise ValueError(f"checkpoint {path!r} is corrupt or truncated: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path!r} is not a semgan_fast checkpoint (format marker missing)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path!r} lacks keys {missing}")
    return state


class CheckpointManager:
    """Numbered checkpoints ``ckpt_<step>.pt`` in a directory, keeping the newest ``keep``."""

    PATTERN = re.compile(r"ckpt_(\d+)\.pt$")

    def __init__(self, directory: str, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory, self.keep = directory, keep

    def path_for(self, step: int) -> str:
        return os.path.join(self.directory, f"ckpt_{step:08d}.pt")

    def checkpoints(self) -> list[str]:
        """Existing checkpoint paths, oldest first."""
        found = []
        for path in glob.glob(os.path.join(self.directory, "ckpt_*.pt")):
            match = self.PATTERN.search(path)
            if match:
                found.append((int(match.group(1)), path))
        return [p for _, p in sorted(found)]

    def save(self, state: dict, step: int) -> str:
        path = self.path_for(step)
        save_checkpoint(state, path)
        for old in self.checkpoints()[:-self.keep]:
            os.remove(old)
        return path

    @property
    def best_path(self) -> str:
        return os.path.join(self.directory, BEST_NAME)

    def save_best(self, state: dict) -> str:
        """Atomically (over)writes ``best.pt``; the numbered checkpoints and their rotation are untouched."""
        save_checkpoint(state, self.best_path)
        return self.best_path

    def read_best_record(self) -> dict | None:
        """The "best" record ({"metric", "value", "step"}) of ``best.pt``, or None when there is no usable
        file (a corrupt one is reported with a warning). Reads the file memory-mapped: the weights are not
        loaded."""
        path = self.best_path
        if not os.path.isfile(path):
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception as exc:  # truncated or foreign file: it will be replaced by the next best
            warnings.warn(f"ignoring unusable best checkpoint {path!r}: {type(exc).__name__}: {exc}")
            return None
        record = state.get("best") if isinstance(state, dict) and state.get("format") == FORMAT else None
        if not isinstance(record, dict) or not {"metric", "value", "step"} <= record.keys():
            warnings.warn(f"ignoring best checkpoint {path!r}: it holds no best-metric record")
            return None
        return dict(record)

    def load_latest(self, map_location="cpu") -> tuple[dict, str] | None:
        """Newest loadable checkpoint and its path, skipping corrupt ones with a warning; None if none."""
        for path in reversed(self.checkpoints()):
            try:
                return load_checkpoint(path, map_location), path
            except ValueError as exc:
                warnings.warn(f"skipping unusable checkpoint: {exc}")
        return None
