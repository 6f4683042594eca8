"""Surviving long runs: a checkpoint on SIGTERM, exact resumption, a stop on NaN/inf loss.

``diffusion-pl fit`` adds all three to every run (Lightning's "persistent callbacks"). With them a
preempted run resumed by ``--ckpt_path last`` continues as if it had never stopped: the same
step, learning rate, optimizer and EMA state (Lightning restores those), the same batches (the
DataModule's loader resumes mid-epoch) and the same draws of t and ε (:class:`RNGCheckpoint`).
"""

from __future__ import annotations

import math
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
    "RNGCheckpoint",
    "SigtermCheckpoint",
    "StopOnNonFinite",
    "last_checkpoint_path",
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


class RNGCheckpoint(Callback):
    """Keep the global torch RNG state in checkpoints and restore it when training resumes.

    Training draws t, ε and dropout masks from the global generator; Lightning's checkpoints
    do not hold its state, so a resumed run would draw different noise from an uninterrupted
    one. The state is put back at ``on_train_start``, after the sanity check and the data
    loaders have drawn their own seeds, so the first resumed step draws what the
    uninterrupted run drew. (All DDP ranks share one seed, so rank 0's state serves all.)
    """

    def __init__(self) -> None:
        self._pending: dict[str, Tensor] | None = None

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = {"cpu": torch.get_rng_state()}
        if pl_module.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(pl_module.device)
        checkpoint["rng_states"] = states

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._pending = checkpoint.get("rng_states")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is None:
            return
        torch.set_rng_state(self._pending["cpu"])
        if "cuda" in self._pending and pl_module.device.type == "cuda":
            torch.cuda.set_rng_state(self._pending["cuda"], pl_module.device)
        self._pending = None


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
