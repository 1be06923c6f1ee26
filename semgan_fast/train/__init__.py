"""Training loop and checkpoints."""
from .checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from .trainer import Trainer

__all__ = ["Trainer", "CheckpointManager", "load_checkpoint", "save_checkpoint"]
