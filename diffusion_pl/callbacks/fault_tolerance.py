"""Surviving long runs: a checkpoint on SIGTERM, exact resumption (stops on divergence:
:mod:`.divergence`).

``diffusion-pl fit`` adds :class:`SigtermCheckpoint`, :class:`StepSeed`, :class:`StopOnNonFinite`
and :class:`FinalCheckpoint` to every run (Lightning's "persistent callbacks"); the loss-spike
rule :class:`StopOnLossSpike` is optional. With them a preempted run resumed by
``--ckpt_path last`` continues as if it had never stopped: the same step, learning rate,
optimizer and EMA state (Lightning restores those), the same batches (the DataModule's loader
resumes mid-epoch) and the same draws of t and ε (:class:`StepSeed`, which keys them on each
example's place in the global batch).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from diffusion_pl.callbacks.ema import batch_examples
from diffusion_pl.callbacks.run_paths import last_checkpoint_path
from diffusion_pl.compat import set_sigterm_received, within_accumulation
from diffusion_pl.randomness import ExampleNoise

__all__ = [
    "FinalCheckpoint",
    "SigtermCheckpoint",
    "StepSeed",
    "step_seed",
]


class SigtermCheckpoint(Callback):
    """On SIGTERM (preemption, ``scancel``, ``kill``), save a resumable ``last.ckpt`` and stop.

    Lightning's signal handler stops the run at the end of the current batch, on every rank
    at the same step; this callback then writes the full training state (weights, optimizer,
    LR schedule, loop progress, callbacks, data position, RNG) to ``last.ckpt``, where
    ``diffusion-pl fit --ckpt_path last`` finds it. Under gradient accumulation a SIGTERM that
    arrives within an optimizer step is held until the step's last micro-batch (the gradients
    accumulated so far are not in a checkpoint, so a stop in between could not resume
    exactly); all ranks then agree to stop at that step.
    """

    def __init__(self) -> None:
        self._held = False

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if trainer.accumulate_grad_batches == 1:
            return
        # Lightning reads its SIGTERM flag after this hook: within a step, hold the signal
        if within_accumulation(trainer):
            self._held |= trainer.received_sigterm
            set_sigterm_received(trainer, False)
            return
        stop = self._held or trainer.received_sigterm
        set_sigterm_received(trainer, trainer.strategy.reduce_boolean_decision(stop, all=False))
        self._held = False

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
    """Key every training draw on (run seed, step, global example index); seed the global RNG.

    Before every training batch this sets the module's ``training_noise`` (formulations and
    the noisy classifier have one) to an :class:`~diffusion_pl.randomness.ExampleNoise` for the
    batch's rows of the step's global batch: rank r's micro-batch m of b examples holds rows
    (r·A + m)·b … of the W·A·b (the DataModule's layout; A = ``accumulate_grad_batches``).
    The loss draws t, ε, label dropout, … from it, so each example's draws depend on the run
    seed, the step and its global index only: 1 device accumulating 2 micro-batches, 2 devices
    and 1 device with the whole batch draw the same noise. It also seeds torch's global
    generator with ``seed(run seed, global rank, global step, batch index)`` (a hash) for what
    still draws from it (dropout masks inside the net), different on every rank.

    A resumed run draws exactly what the uninterrupted run drew, for any number of ranks, with
    no generator state to gather from the ranks into the checkpoint: step and batch index are
    restored by Lightning and the resumable loader, the run seed by this callback's state. A
    run resumed on another number of devices accumulates another number of micro-batches A per
    step; the checkpoint's count of the epoch's micro-batches (Lightning's loop progress) is
    then converted to the new A, so the run goes on from the same step of the same epoch.

    Args:
        seed: the run seed; default: ``seed_everything``'s (``PL_GLOBAL_SEED``), else
            ``torch.initial_seed()``.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self.accumulate = 1

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.seed is None:
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.accumulate = trainer.accumulate_grad_batches

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        saved = checkpoint.get("callbacks", {}).get(self.state_key, {}).get("accumulate", 1)
        loops = checkpoint.get("loops", {}).get("fit_loop")
        if loops and saved != trainer.accumulate_grad_batches:
            progress = loops["epoch_loop.batch_progress"]
            for counts in (progress["current"], progress["total"]):
                steps, extra = divmod(counts["ready"], saved)
                if extra:
                    raise ValueError(
                        f"the checkpoint was saved within an optimizer step (micro-batch "
                        f"{extra} of {saved}), so it cannot resume with "
                        f"{trainer.accumulate_grad_batches} micro-batches per step: resume it "
                        "on the number of devices that wrote it"
                    )
                ready = steps * trainer.accumulate_grad_batches
                for key in ("ready", "started", "processed", "completed"):
                    counts[key] = ready - (counts["ready"] - counts[key])

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "accumulate": self.accumulate}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = state_dict["seed"]

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        torch.manual_seed(step_seed(self.seed, trainer.global_rank, trainer.global_step, batch_idx))
        if hasattr(pl_module, "training_noise"):
            b, micro = batch_examples(batch), trainer.accumulate_grad_batches
            start = (trainer.global_rank * micro + batch_idx % micro) * b
            total = trainer.world_size * micro * b
            pl_module.training_noise = ExampleNoise(self.seed, trainer.global_step, start, total)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if hasattr(pl_module, "training_noise"):
            pl_module.training_noise = None  # used up: other calls draw as they did


def step_seed(seed: int, rank: int, step: int, batch_idx: int) -> int:
    """A 63-bit seed for one (run seed, rank, optimizer step, batch index) tuple."""
    key = f"{seed}/{rank}/{step}/{batch_idx}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
