"""EDM: Karras et al.'s preconditioning, loss weighting and log-normal noise levels."""

from __future__ import annotations

from jsonargparse import lazy_instance
from torch import nn

from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.hparams import save_config
from diffusion_pl.objectives import DenoisingRegression
from diffusion_pl.parameterization import EDMPreconditioning
from diffusion_pl.paths import NoisePath, VEPath
from diffusion_pl.samplers import Sampler
from diffusion_pl.samplers.edm import EDMSampler
from diffusion_pl.time_sampling import LogNormal, TimeSampling
from diffusion_pl.weighting import EDM as EDMWeighting

__all__ = ["EDM"]


class EDM(DiffusionModule):
    """Denoiser D = c_skip x̃ + c_out F(c_in x̃, c_noise) trained with λ(σ̃) ‖D − x_0‖².

    On ``VEPath(0.002, 80)`` (α = 1, so σ̃ = σ) this is the paper's EDM column of Table 1: the
    preconditioning with σ_d (:class:`~diffusion_pl.parameterization.EDMPreconditioning`),
    λ(σ̃) = (σ̃² + σ_d²)/(σ̃ σ_d)² = 1/c_out² (:class:`~diffusion_pl.weighting.EDM`), so the
    network's own loss ‖F − target‖² starts at 1 at every noise level, ln σ̃ ~ N(−1.2, 1.2²)
    (:class:`~diffusion_pl.time_sampling.LogNormal`) and Heun's method on the ρ = 7 grid.
    Any other path works through σ̃ = σ/α on the scaled variable x̃ = x/α.

    The default sampler, ``EDMSampler(steps=17)`` on ``VEPath(0.002, 80)``, is the paper's
    N = 18 deterministic sampler at 35 NFE: 17 Heun steps over the 18 ρ-spaced levels from 80
    down to 0.002 (34 evaluations), then the final denoising step x̂_0 at σ̃ = 0.002, which is
    EDM's last Euler step to σ = 0.

    Args:
        net: the network F (sees c_in x̃ and c_noise = ¼ ln σ̃).
        data_shape: one example's shape (linked from the data module).
        path: the noise path (default ``VEPath(sigma_min=0.002, sigma_max=80)``, EDM's range).
        sigma_data: σ_d, the data's standard deviation (0.5 for images in [−1, 1]), used by
            both the preconditioning and the weighting.
        time_sampling: the training noise levels: ``LogNormal(p_mean=-1.2, p_std=1.2)``.
        sampler: default sampler: EDM's Heun sampler, 35 NFE.
        **kwargs: ``optimizer``, ``lr_scheduler``, ``p_uncond``, ``guidance_scale``,
            ``clip_samples`` (:class:`DiffusionModule`).

    Reference: Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based
    Generative Models", Table 1, Algorithm 1 and Sec. 5.
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        path: NoisePath = lazy_instance(VEPath, sigma_min=0.002, sigma_max=80.0),
        sigma_data: float = 0.5,
        time_sampling: TimeSampling = lazy_instance(LogNormal, p_mean=-1.2, p_std=1.2),
        sampler: Sampler = lazy_instance(EDMSampler, steps=17),
        **kwargs,
    ) -> None:
        super().__init__(
            net,
            data_shape,
            path,
            EDMPreconditioning(sigma_data),
            DenoisingRegression(EDMWeighting(sigma_data), time_sampling),
            sampler,
            **kwargs,
        )
        save_config(self)
