"""Rectified flow: the linear path, a velocity target, and Euler on the flow ODE."""

from __future__ import annotations

import torch
from jsonargparse import lazy_instance
from torch import Tensor, nn

from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.hparams import save_config
from diffusion_pl.objectives import DenoisingRegression
from diffusion_pl.parameterization import VelocityPrediction
from diffusion_pl.paths import LinearPath
from diffusion_pl.randomness import Generators
from diffusion_pl.samplers import EulerSampler, Sampler
from diffusion_pl.time_sampling import TimeSampling, Uniform
from diffusion_pl.weighting import Constant, Weighting

__all__ = ["RectifiedFlow", "Reflow"]


class RectifiedFlow(DiffusionModule):
    """Flow matching on x_t = (1 − t) x_0 + t ε with loss ‖û(x_t, t) − (ε − x_0)‖².

    Args:
        net: the velocity network (sees t ∈ [0, 1] as its noise label).
        data_shape: one example's shape (linked from the data module).
        weighting: the loss weight (1 on the velocity error).
        time_sampling: t ~ U(0, 1), or ``LogitNormal`` (Esser et al., 2024), which puts more
            training on intermediate times.
        sampler: default sampler (Euler, 100 steps).
        **kwargs: ``optimizer``, ``lr_scheduler``, ``p_uncond``, ``guidance_scale``,
            ``clip_samples`` (:class:`DiffusionModule`).

    Reference: Liu, Gong & Liu (2023), "Flow Straight and Fast", Eq. 1; Lipman et al. (2023),
    "Flow Matching for Generative Modeling"; logit-normal t: Esser et al. (2024), Sec. 3.1.
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        weighting: Weighting = lazy_instance(Constant),
        time_sampling: TimeSampling = lazy_instance(Uniform),
        sampler: Sampler = lazy_instance(EulerSampler, steps=100),
        **kwargs,
    ) -> None:
        super().__init__(
            net,
            data_shape,
            LinearPath(),
            VelocityPrediction(),
            DenoisingRegression(weighting, time_sampling),
            sampler,
            **kwargs,
        )
        save_config(self)


class Reflow(RectifiedFlow):
    """k-rectified flow: flow matching on fixed (sample, noise) pairs of a trained flow.

    Batches are ``(x, z)`` from ``ReflowPairs``; the loss is ‖û(x_t, t) − (z − x)‖² on the
    line between the coupled pair, which straightens the flow. Weights start from the
    teacher's checkpoint, as in the paper.

    Args:
        net: the velocity network.
        data_shape: one example's shape (linked from the data module).
        init_from: checkpoint of the flow that generated the pairs (its weights initialise
            this one); None starts from scratch.
        sampler: default sampler (Euler, 1 step: the point of reflow).
        **kwargs: as :class:`RectifiedFlow`.

    Reference: Liu, Gong & Liu (2023), "Flow Straight and Fast", Algorithm 1 (reflow).
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        init_from: str | None = None,
        sampler: Sampler = lazy_instance(EulerSampler, steps=1),
        **kwargs,
    ) -> None:
        super().__init__(net, data_shape, sampler=sampler, **kwargs)
        self.init_from = init_from
        save_config(self)

    def setup(self, stage: str) -> None:
        """Copy the teacher's weights at the start of fitting (not when resuming or loading)."""
        super().setup(stage)
        if stage == "fit" and self.init_from and self.trainer.ckpt_path is None:
            teacher = torch.load(self.init_from, map_location="cpu", weights_only=True)
            self.load_state_dict(teacher["state_dict"])

    def batch_loss(self, batch: tuple[Tensor, Tensor], generator: Generators) -> Tensor:
        """Per-example loss ``[B]`` of a batch of coupled pairs ``(x, z)``."""
        x0, z = batch
        return self.loss(x0, generator=generator, eps=z)
