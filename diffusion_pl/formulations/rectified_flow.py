"""Rectified flow: the linear path, a velocity target, and Euler on the flow ODE."""

from __future__ import annotations

from typing import Literal

import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.hparams import save_config
from diffusion_pl.parameterization import VelocityPrediction
from diffusion_pl.paths import LinearPath
from diffusion_pl.samplers import EulerSampler, Sampler

__all__ = ["RectifiedFlow"]


class RectifiedFlow(DiffusionModule):
    """Flow matching on x_t = (1 − t) x_0 + t ε with loss ‖û(x_t, t) − (ε − x_0)‖².

    Args:
        net: the velocity network (sees t ∈ [0, 1] as its noise label).
        data_shape: one example's shape (linked from the data module).
        time_distribution: ``uniform`` t ~ U(0, 1), or ``logit_normal`` t = sigmoid(m + s·n)
            with n ~ N(0, 1), which puts more training on intermediate times.
        logit_mean: m of the logit-normal distribution.
        logit_std: s of the logit-normal distribution.
        sampler: default sampler (Euler, 100 steps).
        optimizer: optimizer factory.
        lr_scheduler: optional LR scheduler factory, stepped per optimizer step.
        p_uncond: probability of training with the null label instead of the class label
            (classifier-free guidance; needs a class-conditional net).
        guidance_scale: default classifier-free guidance scale w of ``sample``.

    Reference: Liu, Gong & Liu (2023), "Flow Straight and Fast", Eq. 1; Lipman et al. (2023),
    "Flow Matching for Generative Modeling"; logit-normal t: Esser et al. (2024), Sec. 3.1.
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        time_distribution: Literal["uniform", "logit_normal"] = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        sampler: Sampler = lazy_instance(EulerSampler, steps=100),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        p_uncond: float = 0.0,
        guidance_scale: float = 1.0,
    ) -> None:
        if time_distribution not in ("uniform", "logit_normal"):
            raise ValueError(
                f"time_distribution must be 'uniform' or 'logit_normal', got {time_distribution!r}"
            )
        if logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std}")
        super().__init__(
            net,
            data_shape,
            LinearPath(),
            VelocityPrediction(),
            sampler,
            optimizer,
            lr_scheduler,
            p_uncond=p_uncond,
            guidance_scale=guidance_scale,
        )
        self.time_distribution = time_distribution
        self.logit_mean, self.logit_std = logit_mean, logit_std
        save_config(self)

    def sample_time(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if self.time_distribution == "uniform":
            return super().sample_time(n, generator)
        normal = torch.randn(n, generator=generator, device=self.device)
        return torch.sigmoid(self.logit_mean + self.logit_std * normal)


class Reflow(RectifiedFlow):
    """k-rectified flow: flow matching on fixed (sample, noise) pairs of a trained flow.

    Batches are ``(x, z)`` from ``ReflowPairs``; the loss is ‖û(x_t, t) − (z − x)‖² on the
    line between the coupled pair, which straightens the flow. Weights start from the
    teacher's checkpoint, as in the paper.

    Args:
        init_from: checkpoint of the flow that generated the pairs (its weights initialise
            this one); None starts from scratch.
        (others as ``RectifiedFlow``)

    Reference: Liu, Gong & Liu (2023), "Flow Straight and Fast", Algorithm 1 (reflow).
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        init_from: str | None = None,
        time_distribution: Literal["uniform", "logit_normal"] = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        sampler: Sampler = lazy_instance(EulerSampler, steps=1),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            net,
            data_shape,
            time_distribution,
            logit_mean,
            logit_std,
            sampler,
            optimizer,
            lr_scheduler,
        )
        self.init_from = init_from
        save_config(self)

    def setup(self, stage: str) -> None:
        """Copy the teacher's weights at the start of fitting (not when resuming or loading)."""
        if stage == "fit" and self.init_from and self.trainer.ckpt_path is None:
            teacher = torch.load(self.init_from, map_location="cpu", weights_only=True)
            self.load_state_dict(teacher["state_dict"])

    def batch_loss(self, batch: tuple[Tensor, Tensor], generator: torch.Generator | None) -> Tensor:
        """Per-example loss ``[B]`` of a batch of coupled pairs ``(x, z)``."""
        x0, z = batch
        return self.loss(x0, generator=generator, eps=z)
