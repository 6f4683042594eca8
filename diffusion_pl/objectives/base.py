"""What every training objective shares: its call, the model it reads, the preamble of draws.

An objective is a plain object: ``objective(model, x0, labels, generator, step, eps)`` returns
the per-example loss ``[B]`` of one batch, with no Trainer. The module it trains (a
:class:`Model`: :class:`~diffusion_pl.formulations.DiffusionModule`, which objectives never
import) hands it the net, path and parameterization, the label dropout, the source of
randomness and the optimizer step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, TypeVar

import torch
from torch import Tensor, nn

from diffusion_pl.parameterization import DenoiserFn, Parameterization
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators, randn

__all__ = ["Batch", "Draws", "Model", "Objective", "mean_flat"]

T = TypeVar("T")

TimeDraw = Callable[[int, Generators, torch.device, torch.dtype], T]
"""``(n, generator, device, dtype) -> times``: an objective's training times (t, or a pair)."""


class Model(Protocol):
    """What an objective reads of the module it trains, or of a trained model it is handed (a
    consistency teacher): :class:`~diffusion_pl.formulations.DiffusionModule` is one."""

    @property
    def net(self) -> nn.Module:
        """The network F, ``net(x, noise_labels [B], class_labels [B] | None)``."""
        ...

    @property
    def path(self) -> NoisePath:
        """The noise path x_t = α_t x_0 + σ_t ε."""
        ...

    @property
    def parameterization(self) -> Parameterization:
        """What the net predicts and sees (its noise label)."""
        ...

    @property
    def num_classes(self) -> int | None:
        """K of a class-conditional net, None for an unconditional one."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        ...

    def to(self, device: torch.device) -> nn.Module:
        """Move the model's weights to ``device``."""
        ...

    def drop_labels(self, y: Tensor | None, generator: Generators) -> Tensor | None:
        """``y`` with each label replaced by the null label ∅ with the module's ``p_uncond``
        (Ho & Salimans 2022, Algorithm 1)."""
        ...

    def class_labels(self, y: Tensor | None) -> Tensor | None:
        """The labels the net sees: ``y`` for a class-conditional net, else None."""
        ...

    def denoiser(
        self, class_labels: Tensor | None = None, guidance_scale: float = 1.0
    ) -> DenoiserFn:
        """The ``(x, t) -> Prediction`` view of the net (classifier-free guided at w ≠ 1)."""
        ...


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all but the batch dimension: ``[B, ...] -> [B]``."""
    return x.flatten(1).mean(1)


@dataclass(frozen=True)
class Batch:
    """One batch as :meth:`Objective.__call__` hands it to :meth:`Objective.loss`.

    Attributes:
        x0: data ``[B, ...]``.
        labels: the labels the net sees: dropped with the module's ``p_uncond`` (Ho & Salimans
            2022, Algorithm 1), None for an unconditional net.
        generator: the source of every random draw after the label dropout.
        step: the optimizer step k (curricula read it).
        eps: noise coupled to ``x0`` (reflow); None: the objective draws it.
    """

    x0: Tensor
    labels: Tensor | None
    generator: Generators
    step: int
    eps: Tensor | None


@dataclass(frozen=True)
class Draws(Generic[T]):
    """The random inputs of one training batch after its labels, drawn by
    :meth:`Objective.draw`.

    Attributes:
        dtype: the dtype the loss is computed in (float32, float64 for float64 data).
        times: the objective's times (t ``[B]``, or a pair of them).
        eps: the noise ``[B, ...]``.
    """

    dtype: torch.dtype
    times: T
    eps: Tensor


class Objective(ABC):
    """A training objective: the per-example loss of a batch for a module, without a Trainer.

    :meth:`__call__` is the one entry: it drops the labels (the first draw of every objective)
    and hands the batch to :meth:`loss`, which each objective implements.
    """

    noise_in_compute_dtype: ClassVar[bool] = False
    """Draw ε in the loss's dtype (float64 for float64 data) rather than torch's default."""

    def __call__(
        self,
        model: Model,
        x0: Tensor,
        labels: Tensor | None,
        generator: Generators,
        step: int = 0,
        eps: Tensor | None = None,
    ) -> Tensor:
        """Per-example loss ``[B]``.

        Args:
            model: the module trained (its net, path, parameterization and label dropout).
            x0: data ``[B, ...]``.
            labels: class labels ``[B]`` or None (dropped with the module's ``p_uncond``).
            generator: the source of every random draw of the loss.
            step: the optimizer step k (curricula read it).
            eps: noise coupled to ``x0`` (reflow); drawn when None.
        """
        labels = model.class_labels(model.drop_labels(labels, generator))
        return self.loss(model, Batch(x0, labels, generator, step, eps))

    @abstractmethod
    def loss(self, model: Model, batch: Batch) -> Tensor:
        """Per-example loss ``[B]`` of ``batch``, its labels already dropped."""

    def set_training_length(self, max_steps: int | None) -> None:
        """Learn the run's length K (the trainer's ``max_steps``; None if unbounded) before
        fitting; an objective whose curriculum needs K keeps it (the others need nothing)."""
        return

    def metrics(self, step: int) -> dict[str, float]:
        """Numbers to log with the training loss at ``step`` (a curriculum's stage)."""
        return {}

    def draw(self, batch: Batch, times: TimeDraw[T]) -> Draws[T]:
        """The shared preamble after the label dropout: choose the dtype, draw the times, draw
        ε (unless the batch brings its own).

        The draws come from the batch's generator in that order, so every objective that uses
        this preamble keeps its random stream.
        """
        x0, generator = batch.x0, batch.generator
        dtype = torch.promote_types(x0.dtype, torch.float32)
        drawn = times(x0.shape[0], generator, x0.device, dtype)
        eps = batch.eps
        if eps is None:
            noise_dtype = dtype if self.noise_in_compute_dtype else None
            eps = randn(x0.shape, generator, device=x0.device, dtype=noise_dtype)
        return Draws(dtype, drawn, eps)
