"""Score-based generative modeling through SDEs: VE, VP and sub-VP, with PC sampling."""

from __future__ import annotations

from typing import Literal

import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.hparams import save_config
from diffusion_pl.parameterization import ScorePrediction
from diffusion_pl.paths import NoisePath, VPLinearPath
from diffusion_pl.samplers import Sampler
from diffusion_pl.samplers.sde import PCSampler

__all__ = ["ScoreSDE"]


class ScoreSDE(DiffusionModule):
    """Continuous-time denoising score matching on a VE, VP or sub-VP path.

    The net outputs σ_t·s (so ε̂ = −output), t ~ U(t_eps, 1), and the loss is
    λ(t)‖s_θ(x_t, t) + ε/σ_t‖² with λ(t) = σ_t² (``weighting: sigma2``, i.e. ‖σ s_θ + ε‖²)
    or the likelihood weighting λ(t) = g(t)² (``weighting: likelihood``, i.e. g²/σ² ‖σ s_θ + ε‖²).

    Args:
        net: the score network (sees t as its noise label).
        data_shape: one example's shape (linked from the data module).
        path: ``VEPath``, ``VPLinearPath`` or ``SubVPPath`` (by ``class_path``).
        weighting: ``sigma2`` or ``likelihood``.
        t_eps: smallest training time (Song et al. use 1e-5).
        sampler: default sampler: predictor–corrector.
        optimizer: optimizer factory.
        lr_scheduler: optional LR scheduler factory, stepped per optimizer step.
        p_uncond: probability of training with the null label instead of the class label
            (classifier-free guidance; needs a class-conditional net).
        guidance_scale: default classifier-free guidance scale w of ``sample``.

    Reference: Song et al. (2021), "Score-Based Generative Modeling through SDEs", Eq. 7 and
    Algorithms 2-3; likelihood weighting: Song et al. (2021), "Maximum Likelihood Training of
    Score-Based Diffusion Models", Theorem 1.
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        path: NoisePath = lazy_instance(VPLinearPath),
        weighting: Literal["sigma2", "likelihood"] = "sigma2",
        t_eps: float = 1e-5,
        sampler: Sampler = lazy_instance(PCSampler, steps=1000, snr=0.16),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        p_uncond: float = 0.0,
        guidance_scale: float = 1.0,
    ) -> None:
        if weighting not in ("sigma2", "likelihood"):
            raise ValueError(f"weighting must be 'sigma2' or 'likelihood', got {weighting!r}")
        if not 0 <= t_eps < 1:
            raise ValueError(f"t_eps must be in [0, 1), got {t_eps}")
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
        self.weighting, self.t_eps = weighting, t_eps
        save_config(self)

    def sample_time(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """t ~ U(t_eps, 1)."""
        return self.t_eps + (1 - self.t_eps) * super().sample_time(n, generator)

    def loss_weight(self, t: Tensor) -> Tensor:
        """1 for λ = σ², g(t)² / σ_t² for the likelihood weighting."""
        if self.weighting == "sigma2":
            return torch.ones_like(t)
        return self.path.g2(t) / self.path.sigma(t) ** 2
