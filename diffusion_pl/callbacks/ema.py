"""Exponential moving average of the weights, its memory counted in training samples (EDM).

Built on Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging`, which keeps the
average in a :class:`torch.optim.swa_utils.AveragedModel`, writes it to the checkpoint's
``state_dict`` (the raw weights go to ``current_model_state``), restores both on resume, and
leaves the average in the module when training ends. Three changes on top:

* the decay per step follows from a half-life in samples and the step's global batch, so the
  average does not change meaning when the batch size or the number of GPUs does;
* the average is kept in float32 even when the weights are bf16/fp16, and swapping it into the
  module and back restores the raw weights bit for bit (Lightning swaps by copying through the
  module's own dtype);
* nothing is swapped in before the first update (Lightning issue #21724), and other callbacks
  can borrow either set of weights with :meth:`EMA.using` (sample grids, FID).

``WeightAveraging`` has no public handle on its ``AveragedModel``: a subclass that builds its
own sets it where the parent then updates, saves and restores it
(:class:`~diffusion_pl.compat.PublicWeightAveraging`, checked by tests/core/test_compat.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning import LightningModule, Trainer
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from diffusion_pl.checkpoint_io import Weights
from diffusion_pl.compat import PublicWeightAveraging

__all__ = ["EMA", "Weights", "batch_examples", "find_ema", "weights_in_use", "weights_list"]


class EMA(PublicWeightAveraging):
    """θ_ema ← β θ_ema + (1 − β) θ after every optimizer step; θ_ema starts as θ after step 1.

    Half-life mode (Karras et al. 2022, EDM, training_loop.py): a step that consumed B samples
    (global batch: all ranks, all accumulated micro-batches) uses β = 0.5^(B / h), so the
    weights of h samples ago count half. With warm-up, h is capped at ``rampup_ratio · n``
    where n counts the samples seen before the step: early averages forget the random start.

    Decay mode: a fixed β per step, with warm-up β_k = min(β, (1 + k) / (10 + k)) after k
    updates (TensorFlow's ExponentialMovingAverage with ``num_updates``, as in score_sde).

    Validation runs on the averaged weights (the raw ones are put back afterwards); the
    checkpoint's ``state_dict`` holds the average, so ``diffusion-pl sample`` uses it unless
    told ``--weights raw``.

    Args:
        halflife_samples: h in samples (EDM CIFAR-10: 500,000); None to use ``decay``.
        rampup_ratio: warm-up ratio r (EDM: 0.05); None for no warm-up.
        decay: fixed β per step instead of a half-life.
        warmup: in decay mode, ramp β up as above.
    """

    def __init__(
        self,
        halflife_samples: float | None = 500_000,
        rampup_ratio: float | None = 0.05,
        decay: float | None = None,
        warmup: bool = True,
    ) -> None:
        if (halflife_samples is None) == (decay is None):
            raise ValueError(
                f"give exactly one of halflife_samples ({halflife_samples}) and decay ({decay}); "
                "set the other to null"
            )
        if halflife_samples is not None and halflife_samples <= 0:
            raise ValueError(f"halflife_samples must be > 0, got {halflife_samples}")
        if decay is not None and not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay} (e.g. 0.999)")
        if rampup_ratio is not None and rampup_ratio <= 0:
            raise ValueError(f"rampup_ratio must be > 0 or null (no warm-up), got {rampup_ratio}")
        super().__init__(use_buffers=False)
        self.halflife_samples, self.rampup_ratio = halflife_samples, rampup_ratio
        self.decay, self.warmup = decay, warmup
        self.samples_seen = 0
        self._step_seen = 0
        self._pending_samples = 0
        self._beta = 0.0
        self._raw: list[Tensor] | None = None
        self._swapped_for_validation = False

    def beta(self, batch_samples: int, samples_seen: int, updates: int) -> float:
        """β for an update over ``batch_samples`` after ``samples_seen`` and ``updates`` so far."""
        if self.decay is not None:
            return min(self.decay, (1 + updates) / (10 + updates)) if self.warmup else self.decay
        halflife = self.halflife_samples
        if self.rampup_ratio is not None:
            halflife = min(halflife, self.rampup_ratio * samples_seen)
        return 0.5 ** (batch_samples / max(halflife, 1e-8))

    def _average(self, average: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        return average.lerp(current.to(average.dtype), 1.0 - self._beta)

    # --- training ---------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Create the average as a copy of the module's weights (in fp32) when fitting starts.

        Lightning's ``WeightAveraging.setup`` deep-copies the whole LightningModule, trainer
        included, which fails under DDP (process-group locks do not copy); only parameters,
        buffers and submodules are copied here, everything else is shared.
        """
        if stage != "fit":
            return
        average = AveragedModel(nn.Module(), use_buffers=False, avg_fn=self._average)
        average.module = _copy_weights(pl_module)
        for p in average.module.parameters():  # fp32 average, whatever the weights' precision
            if p.is_floating_point() and p.dtype != torch.float64:
                p.data = p.data.float()
        self.averaged_model = average

    @property
    def average(self) -> nn.Module | None:
        """The averaged copy of the module (fp32), or None before fitting starts."""
        return None if self.averaged_model is None else self.averaged_model.module

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._step_seen = trainer.global_step  # 0, or the step a resumed run starts from

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._pending_samples += batch_examples(batch) * trainer.world_size
        if trainer.global_step > self._step_seen:  # an optimizer step just happened
            self._step_seen = trainer.global_step
            updates = int(self.averaged_model.n_averaged)
            self._beta = self.beta(self._pending_samples, self.samples_seen, updates)
            self.samples_seen += self._pending_samples
            self._pending_samples = 0
        super().on_train_batch_end(trainer, pl_module, outputs, batch, idx)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Leave the average in the module (as Lightning does), the raw weights at hand."""
        self.swap_in(pl_module)

    # --- lending the average ----------------------------------------------------------
    @property
    def _updated(self) -> bool:
        return self.averaged_model is not None and int(self.averaged_model.n_averaged) > 0

    def swap_in(self, pl_module: LightningModule) -> bool:
        """Put the averaged weights into ``pl_module``, keeping the raw ones aside.

        Returns False (and does nothing) before the first update or when already swapped in.
        """
        if not self._updated or self._raw is not None:
            return False
        self._raw = [p.detach().clone() for p in pl_module.parameters()]
        for p, a in zip(
            pl_module.parameters(), self.averaged_model.module.parameters(), strict=True
        ):
            p.data.copy_(a)
        return True

    def swap_out(self, pl_module: LightningModule) -> None:
        """Put the raw weights kept by :meth:`swap_in` back, exactly."""
        for p, raw in zip(pl_module.parameters(), self._raw, strict=True):
            p.data.copy_(raw)
        self._raw = None

    @contextmanager
    def using(self, pl_module: LightningModule, weights: Weights = "ema") -> Iterator[None]:
        """Run the block with the averaged (``"ema"``) or raw weights in ``pl_module``.

        Whatever was in the module before is back afterwards, exactly. Before the first
        update both names mean the raw weights.
        """
        swapped = self._raw is not None
        if weights == "ema" and not swapped and self.swap_in(pl_module):
            try:
                yield
            finally:
                self.swap_out(pl_module)
        elif weights == "raw" and swapped:
            self.swap_out(pl_module)
            try:
                yield
            finally:
                self.swap_in(pl_module)
        else:
            yield

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swapped_for_validation = self.swap_in(pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._swapped_for_validation:
            self.swap_out(pl_module)
            self._swapped_for_validation = False

    # --- checkpoint -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "samples_seen": self.samples_seen}

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Average → ``state_dict``, raw → ``current_model_state``, even while swapped in."""
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._raw is not None and "current_model_state" in checkpoint:
            names = [name for name, _ in pl_module.named_parameters()]
            checkpoint["current_model_state"].update(zip(names, self._raw, strict=True))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.samples_seen = state_dict["samples_seen"]


def _copy_weights(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that shares all but its parameters, buffers and submodules."""
    tensors = ("_parameters", "_buffers", "_modules")
    memo = {id(v): v for m in module.modules() for k, v in vars(m).items() if k not in tensors}
    return copy.deepcopy(module, memo)


def batch_examples(batch: Any) -> int:
    """Examples in a batch ``(x, ...)`` or ``x``."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return len(x)


def weights_list(weights: list[Weights] | None) -> list[Weights]:
    """A callback's ``weights`` option: ``["ema"]`` by default, each name at most once."""
    weights = ["ema"] if weights is None else list(weights)
    if not weights or len(set(weights)) != len(weights):
        raise ValueError(f"weights must list 'ema' and/or 'raw' once each, got {weights}")
    return weights


def find_ema(trainer: Trainer) -> EMA | None:
    """The trainer's EMA callback, if it has one."""
    return next((c for c in trainer.callbacks if isinstance(c, EMA)), None)


@contextmanager
def weights_in_use(
    trainer: Trainer, pl_module: LightningModule, weights: Weights = "ema"
) -> Iterator[None]:
    """The averaged or raw weights for the block (the raw ones when there is no EMA)."""
    ema = find_ema(trainer)
    if ema is None:
        yield
        return
    with ema.using(pl_module, weights):
        yield
