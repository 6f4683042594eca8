"""Score-based generative modeling through SDEs: VE, VP and sub-VP, with PC sampling."""

from __future__ import annotations

from jsonargparse import lazy_instance
from torch import nn

from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.hparams import save_config
from diffusion_pl.objectives import DenoisingRegression
from diffusion_pl.parameterization import ScorePrediction
from diffusion_pl.paths import NoisePath, VPLinearPath
from diffusion_pl.samplers import Sampler
from diffusion_pl.samplers.sde import PCSampler
from diffusion_pl.time_sampling import TimeSampling, Uniform
from diffusion_pl.weighting import Constant, Weighting

__all__ = ["ScoreSDE"]


class ScoreSDE(DiffusionModule):
    """Continuous-time denoising score matching on a VE, VP or sub-VP path.

    The net outputs σ_t·s (so ε̂ = −output), t ~ U(t_ε, 1), and the loss is
    λ(t)‖s_θ(x_t, t) + ε/σ_t‖² with λ(t) = σ_t² (``Constant``, i.e. ‖σ s_θ + ε‖²) or the
    likelihood weighting λ(t) = g(t)² (``Likelihood``, i.e. g²/σ² ‖σ s_θ + ε‖²).

    Args:
        net: the score network (sees t as its noise label).
        data_shape: one example's shape (linked from the data module).
        path: ``VEPath``, ``VPLinearPath`` or ``SubVPPath`` (by ``class_path``).
        weighting: ``Constant`` (λ = σ²) or ``Likelihood`` (λ = g²).
        time_sampling: t ~ U(t_ε, 1) with Song et al.'s t_ε = 1e-5.
        sampler: default sampler: predictor–corrector.
        **kwargs: ``optimizer``, ``lr_scheduler``, ``p_uncond``, ``guidance_scale``,
            ``clip_samples`` (:class:`DiffusionModule`).

    Reference: Song et al. (2021), "Score-Based Generative Modeling through SDEs", Eq. 7 and
    Algorithms 2-3; likelihood weighting: Song et al. (2021), "Maximum Likelihood Training of
    Score-Based Diffusion Models", Theorem 1.
    """

    likelihood_t_eps = 1e-5
    """The PF-ODE likelihood starts at t_ε = 1e-5 (Song et al., 2021, App. D.2; ε = 1e-5 in
    their ``likelihood.py``), below the path's sampling ``t_min``."""

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        path: NoisePath = lazy_instance(VPLinearPath),
        weighting: Weighting = lazy_instance(Constant),
        time_sampling: TimeSampling = lazy_instance(Uniform, t_min=1e-5, t_max=1.0),
        sampler: Sampler = lazy_instance(PCSampler, steps=1000, snr=0.16),
        **kwargs,
    ) -> None:
        super().__init__(
            net,
            data_shape,
            path,
            ScorePrediction(scaled_by_sigma=True),
            DenoisingRegression(weighting, time_sampling),
            sampler,
            **kwargs,
        )
        save_config(self)
