"""Surviving long runs: a checkpoint on SIGTERM, exact resumption, a stop on NaN/inf loss.

``diffusion-pl fit`` adds all three to every run (Lightning's "persistent callbacks"). With them a
preempted run resumed by ``--ckpt_path last`` continues as if it had never stopped: the same
step, learning rate, optimizer and EMA state (Lightning restores those), the same batches (the
DataModule's loader resumes mid-epoch) and the same draws of t and ε (:class:`StepSeed`, which
also gives each DDP rank its own).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from diffusion_pl.callbacks.sample_grid import run_dir

__all__ = [
    "FinalCheckpoint",
    "SigtermCheckpoint",
    "StepSeed",
    "StopOnNonFinite",
    "last_checkpoint_path",
    "step_seed",
]


def last_checkpoint_path(trainer: Trainer) -> Path:
    """Where this run's ``last.ckpt`` goes: the ModelCheckpoint's folder, else ``checkpoints/``."""
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath is not None:
        return Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}"
    return run_dir(trainer) / "checkpoints" / "last.ckpt"


class SigtermCheckpoint(Callback):
    """On SIGTERM (preemption, ``scancel``, ``kill``), save a resumable ``last.ckpt`` and stop.

    Lightning's signal handler stops the run at the end of the current batch, on every rank
    at the same step; this callback then writes the full training state (weights, optimizer,
    LR schedule, loop progress, callbacks, data position, RNG) to ``last.ckpt``, where
    ``diffusion-pl fit --ckpt_path last`` finds it.
    """

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # every rank calls it; rank 0 writes
        if isinstance(trainer.checkpoint_callback, ModelCheckpoint):
            trainer.checkpoint_callback.last_model_path = str(path)
        rank_zero_info(
            f"SIGTERM at step {trainer.global_step}: saved {path}; "
            "resume with `diffusion-pl fit --config ... --ckpt_path last`"
        )


class FinalCheckpoint(Callback):
    """Make ``last.ckpt`` hold the final step when training ends.

    Lightning 2.6's ModelCheckpoint writes ``last.ckpt`` only when it saves for another reason
    (a period or a monitored metric), so a run whose ``max_steps`` falls between saves ended
    with a stale ``last.ckpt``, and ``diffusion-pl sample`` would use older weights.
    """

    def __init__(self) -> None:
        self.saved_step = -1

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint) -> None:
        self.saved_step = trainer.global_step

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        if (
            isinstance(ckpt, ModelCheckpoint)
            and ckpt.save_last
            and (self.saved_step != trainer.global_step)
        ):
            path = last_checkpoint_path(trainer)
            trainer.save_checkpoint(path)
            ckpt.last_model_path = str(path)


class StepSeed(Callback):
    """Seed the global torch RNG before every training batch from (run seed, rank, step, batch).

    Training draws t, ε, label-dropout and dropout masks from the global generator, and Lightning
    seeds every DDP rank alike. Re-seeding it before each batch with
    ``seed(run seed, global rank, global step, batch index)`` (a hash) makes

    * every rank draw its own noise — otherwise all ranks draw the same t and ε for different
      images, and the gradient averages correlated noise (EDM seeds ``seed·world + rank`` for
      the same reason);
    * a resumed run draw exactly what the uninterrupted run drew, for any number of ranks, with
      no generator state to gather from the ranks into the checkpoint: step and batch index
      are restored by Lightning and the resumable loader, the run seed by this callback's state.

    Args:
        seed: the run seed; default: ``seed_everything``'s (``PL_GLOBAL_SEED``), else
            ``torch.initial_seed()``.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.seed is None:
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = state_dict["seed"]

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        torch.manual_seed(step_seed(self.seed, trainer.global_rank, trainer.global_step, batch_idx))


def step_seed(seed: int, rank: int, step: int, batch_idx: int) -> int:
    """A 63-bit seed for one (run seed, rank, optimizer step, batch index) tuple."""
    key = f"{seed}/{rank}/{step}/{batch_idx}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class StopOnNonFinite(Callback):
    """Stop at the first NaN or inf training loss, naming the step; never checkpoint NaN weights.

    The loss is checked before backward (all ranks agree, so DDP stops together), so the weights
    are still those of the last finite step. A checkpoint whose weights are not finite (a finite
    loss whose update overflowed) is refused, so the last good checkpoint stays on disk.
    """

    def on_before_backward(
        self, trainer: Trainer, pl_module: LightningModule, loss: Tensor
    ) -> None:
        value = float(loss.detach().float().sum())
        if not trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
            return
        where = f"is {value}" if not math.isfinite(value) else "is not finite on another rank"
        raise FloatingPointError(
            f"the training loss {where} at step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}); stopped before that step's update, so the weights and "
            f"{_last_good(trainer)} are from before it. Lower the learning rate, clip gradients "
            "(--trainer.gradient_clip_val 1.0) or use bf16-mixed rather than 16-mixed, then "
            "resume with --ckpt_path last or start afresh."
        )

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        bad = [
            name
            for name, value in checkpoint["state_dict"].items()
            if value.is_floating_point() and not torch.isfinite(value).all()
        ]
        if bad:
            raise FloatingPointError(
                f"refusing to checkpoint step {trainer.global_step}: {len(bad)} weight tensors "
                f"hold NaN or inf (first: {bad[0]}); the last update diverged, and "
                f"{_last_good(trainer)} is kept. Lower the learning rate or clip gradients."
            )


def _last_good(trainer: Trainer) -> str:
    """The last checkpoint on disk, for messages."""
    ckpt = trainer.checkpoint_callback
    path = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "")
    return f"the last checkpoint ({path})" if path else "no checkpoint written so far"
