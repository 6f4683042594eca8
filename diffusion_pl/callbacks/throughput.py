"""Training progress in the units runs are compared in: images per second and kimg."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from lightning import Callback, LightningModule, Trainer

from diffusion_pl.callbacks.ema import batch_examples

__all__ = ["Throughput"]


class Throughput(Callback):
    """Log ``train/kimg`` and ``train/images_per_sec`` after every optimizer step.

    kimg is the thousands of training images seen, global step × global batch / 1000 (Karras
    et al.'s unit: it means the same on any number of devices, and a resumed run continues
    it). images_per_sec is the global batch × the steps of the last ``window`` steps over
    their wall-clock time, all devices together. Both show in the progress bar and go to the
    logger. (Lightning's ``ThroughputMonitor`` reports per micro-batch under its own metric
    names, to the logger only, and restarts its count on resume, so it is not used.)

    Args:
        window: how many recent optimizer steps the rate is averaged over.
    """

    def __init__(self, window: int = 20) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 (steps in the average), got {window}")
        self.window = window
        self._times: deque[tuple[int, float]] = deque(maxlen=window + 1)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._times.clear()
        self._times.append((trainer.global_step, time.perf_counter()))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._times[-1][0]:  # within an accumulated step
            return
        self._times.append((step, time.perf_counter()))
        global_batch = batch_examples(batch) * trainer.accumulate_grad_batches * trainer.world_size
        (first, start), (_, now) = self._times[0], self._times[-1]
        rate = (step - first) * global_batch / max(now - start, 1e-9)
        pl_module.log("train/kimg", step * global_batch / 1000, prog_bar=True)
        pl_module.log("train/images_per_sec", rate, prog_bar=True)
