"""Where a run's files go: its log folder and its checkpoint folder, read from the trainer."""

from __future__ import annotations

from pathlib import Path

from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["last_checkpoint_path", "run_dir"]


def run_dir(trainer: Trainer) -> Path:
    """The run's output folder: the logger's versioned log dir, else the root dir.

    Read from the logger itself: ``trainer.log_dir`` is a collective call under DDP, which
    hangs when only rank 0 makes it (as rank-zero-only callbacks do).
    """
    logger = trainer.logger
    folder = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    return Path(folder or trainer.default_root_dir)


def last_checkpoint_path(trainer: Trainer) -> Path:
    """Where this run's ``last.ckpt`` goes: the ModelCheckpoint's folder, else ``checkpoints/``."""
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath is not None:
        return Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"
    return run_dir(trainer) / "checkpoints" / "last.ckpt"
