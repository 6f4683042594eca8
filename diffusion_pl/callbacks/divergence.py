"""Stopping a diverging run before it spoils its state: a non-finite loss or gradient norm, or
a loss spike, stops training with the last good checkpoint named."""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from diffusion_pl.callbacks.run_paths import last_checkpoint_path

__all__ = ["StopOnLossSpike", "StopOnNonFinite", "TrainingDiverged"]


class TrainingDiverged(FloatingPointError):
    """Training stopped at a non-finite loss or gradient norm, or at a loss spike."""


class StopOnNonFinite(Callback):
    """Stop before the first update from a NaN/inf loss or gradient norm; keep the last good state.

    Two checks, both before the optimizer step, so the weights, the optimizer and LR schedule,
    and the EMA (updated after a step) are still those of the last good step:

    * the loss, before backward (NaN/inf);
    * the total gradient norm ‖g‖₂ = (Σ_p ‖∇_p‖₂²)^½, in ``on_before_optimizer_step``, after
      backward, accumulation and unscaling but before clipping and the update: a finite loss
      can still have inf gradients. Skipped with a loss scaler (``16-mixed``), whose own job is
      to skip such steps and lower the scale.

    Either stop saves that state as the run's ``last.ckpt`` (the "last good" checkpoint: the
    weights before the step that failed) and raises :class:`TrainingDiverged` naming the step.
    All ranks agree on the decision (one reduction), so DDP stops together. A checkpoint whose
    weights are not finite is never written, whoever asks for it, so no NaN state reaches disk.
    """

    def on_before_backward(
        self, trainer: Trainer, pl_module: LightningModule, loss: Tensor
    ) -> None:
        value = float(loss.detach().float().sum())
        if trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
            _stop(trainer, _nonfinite_message("training loss", value))

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        norm = float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
        ))  # fmt: skip
        if trainer.strategy.reduce_boolean_decision(not math.isfinite(norm), all=False):
            _stop(trainer, _nonfinite_message("gradient norm", norm))

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        bad = _nonfinite(checkpoint["state_dict"])
        if bad:
            raise FloatingPointError(
                f"refusing to checkpoint step {trainer.global_step}: {len(bad)} weight tensors "
                f"hold NaN or inf (first: {bad[0]}); the last update diverged, and "
                f"{_last_good(trainer)} is kept. Lower the learning rate or clip gradients."
            )


class StopOnLossSpike(Callback):
    """Stop when the training loss exceeds ``factor`` times the median of the recent losses.

    A rule for runs that blow up through finite values (a far too high learning rate makes
    the loss jump by orders of magnitude a step or more before it turns NaN): the check
    ``loss > factor · median(last window losses)`` runs before backward, and a spike stops the
    run as :class:`StopOnNonFinite` does, saving the weights from before the spiking step as
    ``last.ckpt``. Off by default: diffusion losses are noisy (each batch draws its own t) and
    heavy-tailed under some weightings, so choose ``factor`` well above the run's usual spread.
    The recent losses are kept in checkpoints, so a resumed run keeps its reference. Under DDP
    each rank compares its own loss, and one spiking rank stops all.

    Args:
        factor: the spike threshold, a multiple (> 1) of the median recent loss.
        window: how many recent losses the median is over (the first step has no reference).
    """

    def __init__(self, factor: float = 10.0, window: int = 100) -> None:
        if not factor > 1:
            raise ValueError(f"factor must be > 1 (a multiple of the median loss), got {factor}")
        if window < 1:
            raise ValueError(f"window must be >= 1 (losses in the median), got {window}")
        self.factor, self.window = factor, window
        self.recent: list[float] = []

    def on_before_backward(
        self, trainer: Trainer, pl_module: LightningModule, loss: Tensor
    ) -> None:
        value = float(loss.detach().float().sum())
        reference = statistics.median(self.recent) if self.recent else math.inf
        spiked = math.isfinite(value) and value > self.factor * reference  # NaN: StopOnNonFinite
        if trainer.strategy.reduce_boolean_decision(spiked, all=False):
            _stop(trainer, (
                f"the training loss {value:.4g} is over {self.factor:g} x the median "
                f"{reference:.4g} of the last {len(self.recent)} losses"
            ) if spiked else "the training loss spiked on another rank")  # fmt: skip
        if math.isfinite(value):
            self.recent = [*self.recent, value][-self.window :]

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recent = list(state_dict["recent"])


def _nonfinite(state_dict: dict[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold NaN or inf."""
    return [
        name
        for name, value in state_dict.items()
        if value.is_floating_point() and not torch.isfinite(value).all()
    ]


def _stop(trainer: Trainer, what: str) -> None:
    """Save the state from before this step as ``last.ckpt``; raise :class:`TrainingDiverged`.

    Called before the optimizer step on every rank (the decision was reduced), so the weights
    are still the last good ones; weights that are already non-finite are not saved.

    Args:
        trainer: the trainer.
        what: what went wrong, e.g. ``the training loss is nan``.
    """
    message = f"{what} at step {trainer.global_step} (epoch {trainer.current_epoch})"
    if _nonfinite(trainer.lightning_module.state_dict()):
        kept = f"the weights are already not finite, so {_last_good(trainer)} is kept"
    else:
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # every rank calls it; rank 0 writes
        if isinstance(trainer.checkpoint_callback, ModelCheckpoint):
            trainer.checkpoint_callback.last_model_path = str(path)
        kept = f"the weights from before it are saved as {path}"
    raise TrainingDiverged(
        f"{message}; stopped before that step's update, and {kept}. To go on, resume with "
        "gradient clipping (--trainer.gradient_clip_val 1.0) or bf16-mixed rather than "
        "16-mixed, or start a new run with a lower learning rate (a resumed run keeps its "
        "optimizer's)."
    )


def _nonfinite_message(what: str, value: float) -> str:
    """``the {what} is {value}``, or that another rank saw a non-finite one."""
    if math.isfinite(value):
        return f"the {what} is not finite on another rank"
    return f"the {what} is {value}"


def _last_good(trainer: Trainer) -> str:
    """The last checkpoint on disk, for messages."""
    ckpt = trainer.checkpoint_callback
    path = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "")
    return f"the last checkpoint ({path})" if path else "no checkpoint (none written so far)"
