"""The Lightning plumbing every formulation shares: loss loop, logging, optimizers, sampling.

A formulation is a noise path, a parameterization, a time distribution, a loss weighting and
a default sampler (DESIGN.md). Subclasses pick those four in ``__init__`` and override
:meth:`sample_time` and :meth:`loss_weight` where they differ; everything else lives here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from diffusion_pl.parameterization import Denoiser, Parameterization
from diffusion_pl.paths import NoisePath
from diffusion_pl.samplers import Sampler

__all__ = ["DiffusionModule", "mean_flat"]


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all but the batch dimension: ``[B, ...] -> [B]``."""
    return x.flatten(1).mean(1)


class DiffusionModule(LightningModule):
    """Base class: trains ``E_t w(t) ‖F(x_t, t) − target‖²`` and samples with a sampler.

    Args:
        net: ``net(x, noise_labels [B], class_labels [B] | None) -> Tensor`` shaped as x.
        data_shape: one example's shape, e.g. ``(2,)`` or ``(1, 8, 8)`` (linked from the data).
        path: the noise path.
        parameterization: how the network output is read.
        sampler: the default sampler of :meth:`sample`.
        optimizer: optimizer factory ``params -> Optimizer`` (YAML ``class_path``).
        lr_scheduler: optional scheduler factory, stepped every optimizer step.
        noise_label: maps times t ``[B]`` to the network's conditioning input.
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        path: NoisePath,
        parameterization: Parameterization,
        sampler: Sampler,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None = None,
        noise_label: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.data_shape = tuple(data_shape)
        self.path, self.parameterization = path, parameterization
        self.sampler = sampler
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.noise_label = noise_label

    # --- what a formulation chooses -------------------------------------------------------
    def sample_time(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Training times t ``[n]``; uniform on (0, 1) unless a subclass says otherwise."""
        return torch.rand(n, generator=generator, device=self.device)

    def loss_weight(self, t: Tensor) -> Tensor:
        """Per-sample loss weight w(t) ``[B]``; 1 unless a subclass says otherwise."""
        return torch.ones_like(t)

    # --- the shared loss ------------------------------------------------------------------
    def class_labels(self, y: Tensor | None) -> Tensor | None:
        """Labels passed to the net: ``y`` for class-conditional nets, else None."""
        return y if getattr(self.net, "num_classes", None) is not None else None

    def loss(
        self,
        x0: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        eps: Tensor | None = None,
    ) -> Tensor:
        """Per-example loss ``[B]``: w(t) · mean ‖F(α_t x_0 + σ_t ε, t) − target(x_0, ε)‖².

        Args:
            x0: data ``[B, ...]``.
            y: labels ``[B]`` (used by class-conditional nets).
            generator: source of t and ε.
            eps: noise coupled to ``x0`` (reflow); drawn independently when None.
        """
        t = self.sample_time(x0.shape[0], generator)
        if eps is None:
            eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        c = self.path.coefficients(t, x0.ndim)
        x_t = c.alpha * x0 + c.sigma * eps
        labels = t if self.noise_label is None else self.noise_label(t)
        out = self.net(x_t, labels, self.class_labels(y)).float()
        target = self.parameterization.target(x0, eps, c)
        return self.loss_weight(t) * mean_flat((out - target) ** 2)

    def batch_loss(self, batch: tuple[Tensor, Tensor], generator: torch.Generator | None) -> Tensor:
        """Per-example loss ``[B]`` of a batch ``(x, y)``."""
        x0, y = batch
        return self.loss(x0, y, generator)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.batch_loss(batch, None).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        # A fixed generator per batch makes val/loss comparable from one epoch to the next.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self.batch_loss(batch, generator).mean()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # --- sampling -------------------------------------------------------------------------
    def denoiser(self, class_labels: Tensor | None = None) -> Denoiser:
        """The ``(x, t) -> Prediction`` view of the network that samplers consume."""
        return Denoiser(self.net, self.path, self.parameterization, self.noise_label, class_labels)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Draw ``n`` samples in data space ``[n, *data_shape]`` (images clipped to [−1, 1]).

        Args:
            n: number of samples (> 0).
            sampler: overrides the formulation's default sampler.
            generator: source of all randomness (prior and stochastic steps).
            progress: show a progress bar.
        """
        if n <= 0:
            raise ValueError(f"number of samples must be > 0, got {n}")
        sampler = self.sampler if sampler is None else sampler
        was_training = self.training
        self.eval()
        x = sampler(
            self.denoiser(),
            self.path,
            (n, *self.data_shape),
            generator=generator,
            device=self.device,
            progress=progress,
        )
        self.train(was_training)
        return x.clamp(-1, 1) if len(self.data_shape) == 3 else x
