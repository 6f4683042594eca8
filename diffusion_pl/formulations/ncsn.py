"""NCSN: denoising score matching at geometric noise levels, annealed Langevin sampling."""

from __future__ import annotations

import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.hparams import save_config
from diffusion_pl.parameterization import ScorePrediction
from diffusion_pl.paths import VEPath
from diffusion_pl.samplers import Sampler
from diffusion_pl.samplers.langevin import AnnealedLangevinSampler

__all__ = ["NCSN"]


class NCSN(DiffusionModule):
    """Noise-conditional score network trained at L levels σ_1 > … > σ_L.

    The levels are the VE path at the L evenly spaced times t_i = i / (L − 1), i.e. geometric
    between ``sigma_min`` and ``sigma_max``. The net outputs σ·s (NCSNv2's division of the
    output by σ), so the loss with λ(σ) = σ² is ½‖σ s_θ(x̃, σ) + ε‖² at every level.

    Args:
        net: the score network (sees t_i ∈ [0, 1] of its level as its noise label).
        data_shape: one example's shape (linked from the data module).
        sigma_min: smallest level σ_L (NCSN: 0.01).
        sigma_max: largest level σ_1 (NCSN: 1; NCSNv2: about the largest pairwise distance
            between training points).
        num_levels: L, the number of noise levels (NCSN: 10).
        sampler: default sampler: annealed Langevin over L levels (keep its ``steps`` equal to
            ``num_levels`` to visit exactly the trained levels).
        optimizer: optimizer factory.
        lr_scheduler: optional LR scheduler factory, stepped per optimizer step.
        p_uncond: probability of training with the null label instead of the class label
            (classifier-free guidance; needs a class-conditional net).
        guidance_scale: default classifier-free guidance scale w of ``sample``.

    Reference: Song & Ermon (2019), "Generative Modeling by Estimating Gradients of the Data
    Distribution", Eq. 5-6 and Algorithm 1; Song & Ermon (2020), "Improved Techniques".
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        sigma_min: float = 0.01,
        sigma_max: float = 1.0,
        num_levels: int = 10,
        sampler: Sampler = lazy_instance(AnnealedLangevinSampler, steps=10),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        p_uncond: float = 0.0,
        guidance_scale: float = 1.0,
    ) -> None:
        if num_levels < 2:
            raise ValueError(f"num_levels must be >= 2, got {num_levels}")
        path = VEPath(sigma_min, sigma_max)
        super().__init__(
            net,
            data_shape,
            path,
            ScorePrediction(scaled_by_sigma=True),
            sampler,
            optimizer,
            lr_scheduler,
            p_uncond=p_uncond,
            guidance_scale=guidance_scale,
        )
        self.num_levels = num_levels
        save_config(self)

    def sample_time(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """A level index i ~ U{0, …, L−1} per example, as its time t_i = i / (L − 1)."""
        i = torch.randint(self.num_levels, (n,), generator=generator, device=self.device)
        return i.float() / (self.num_levels - 1)

    def loss_weight(self, t: Tensor) -> Tensor:
        """½ — λ(σ) = σ² is already folded into the σ-scaled output (Song & Ermon 2019, Eq. 6)."""
        return torch.full_like(t, 0.5)
