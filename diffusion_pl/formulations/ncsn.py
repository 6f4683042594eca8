"""NCSN: denoising score matching at geometric noise levels, annealed Langevin sampling."""

from __future__ import annotations

from jsonargparse import lazy_instance
from torch import nn

from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.hparams import save_config
from diffusion_pl.objectives import DenoisingRegression
from diffusion_pl.parameterization import ScorePrediction
from diffusion_pl.paths import VEPath
from diffusion_pl.samplers import Sampler
from diffusion_pl.samplers.langevin import AnnealedLangevinSampler
from diffusion_pl.time_sampling import DiscreteUniform
from diffusion_pl.weighting import Constant

__all__ = ["NCSN"]


class NCSN(DiffusionModule):
    """Noise-conditional score network trained at L levels σ_1 > … > σ_L.

    The levels are the discrete VE path ``VEPath(sigma_min, sigma_max, num_levels)``: its L
    evenly spaced times t_i = i / (L − 1), geometric in σ. Training draws a level uniformly
    (``DiscreteUniform``), and the default sampler anneals over the same L levels. The net
    outputs σ·s (NCSNv2's division of the output by σ), so the loss with λ(σ) = σ² is
    ½‖σ s_θ(x̃, σ) + ε‖² at every level.

    Args:
        net: the score network (sees t_i ∈ [0, 1] of its level as its noise label).
        data_shape: one example's shape (linked from the data module).
        sigma_min: smallest level σ_L (NCSN: 0.01).
        sigma_max: largest level σ_1 (NCSN: 1; NCSNv2: about the largest pairwise distance
            between training points).
        num_levels: L, the number of noise levels (NCSN: 10); the one place they are set.
        sampler: default sampler: annealed Langevin over the path's L levels.
        **kwargs: ``optimizer``, ``lr_scheduler``, ``p_uncond``, ``guidance_scale``,
            ``clip_samples`` (:class:`DiffusionModule`).

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
        sampler: Sampler = lazy_instance(AnnealedLangevinSampler),
        **kwargs,
    ) -> None:
        super().__init__(
            net,
            data_shape,
            VEPath(sigma_min, sigma_max, num_levels),
            ScorePrediction(scaled_by_sigma=True),
            # ½ of Song & Ermon's Eq. 6; λ(σ) = σ² is the σ-scaled output
            DenoisingRegression(Constant(0.5), DiscreteUniform()),
            sampler,
            **kwargs,
        )
        save_config(self)
