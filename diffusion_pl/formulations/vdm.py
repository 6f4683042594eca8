"""VDM and the DDPM family: VP paths, ε / x₀ / v prediction, any weighting, or the bound.

The regression weightings (:mod:`diffusion_pl.weighting`) are weights on ‖ε̂ − ε‖² and so do
not depend on the parameterization: with ``X0Prediction`` or ``VPrediction`` the network's own
regression target is only a reading of the same error (``SNR`` with x₀-prediction is the
SNR-weighted x₀ loss; ``MinSNR`` with v-prediction is Hang et al.'s min(SNR, γ)/(SNR + 1) on
‖v̂ − v‖²). ``ELBO`` trains on the whole variational bound (:mod:`diffusion_pl.bound`).
"""

from __future__ import annotations

import torch
from jsonargparse import lazy_instance
from torch import Tensor, nn

from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.hparams import save_config
from diffusion_pl.objectives import DenoisingRegression, VariationalBoundLoss
from diffusion_pl.parameterization import EpsilonPrediction, Parameterization
from diffusion_pl.paths import DDPMPath, NoisePath
from diffusion_pl.samplers import Sampler
from diffusion_pl.samplers.ancestral import DDPMSampler
from diffusion_pl.time_sampling import DiscreteUniform, TimeSampling, Uniform
from diffusion_pl.weighting import ELBO, SNR, Weighting

__all__ = ["VDM"]


class VDM(DiffusionModule):
    """Variational diffusion models and DDPM: a VP path, a weighted ε regression, the bound.

    Training draws t uniformly on the path's grid (DDPM: t ∈ {1, …, T}/T) or on [t_min, t_max]
    (continuous time), x_t = α_t x_0 + σ_t ε, and minimizes ``weighting``'s loss (module
    docstring). ``ELBO()`` trains on the whole bound in bits per dimension; it is the only
    objective that is a bound, so it is required to learn the schedule (``LearnedVPPath``),
    whose parameters then get the plain gradient of the bound. In continuous time the expected
    diffusion loss depends on γ only through its end points (Kingma et al., 2021, Eq. 20);
    the paper's extra variance-minimizing gradient for γ's shape is not implemented.
    Validation logs ``val/loss`` (the training objective) and ``val/bpd``, the bound in bits
    per dimension on the validation data (one t and one ε per example). The bound is discrete
    on a discrete path (``DDPMPath(T)``: T − 1 steps from z_0 at t = 1/T) and continuous
    otherwise.

    Args:
        net: the network; it sees t ∈ [0, 1] as its noise label.
        data_shape: one example's shape (linked from the data module).
        path: the noise path: ``DDPMPath`` (discrete, T steps, linear or cosine β),
            ``VPLinearPath``, ``VPCosinePath`` or the learned ``LearnedVPPath``.
        parameterization: what the net predicts: ε (``EpsilonPrediction``), x₀ or v.
        weighting: ``SNR`` (DDPM's L_simple), ``MinSNR``, any other weighting, or ``ELBO``.
        time_sampling: training times; None: uniform on a discrete path's grid
            (``DiscreteUniform``) or on its interval (``Uniform``), low-discrepancy as set
            below. (``ELBO`` draws the bound's own times.)
        low_discrepancy: draw the bound's times, and by default the training times, as
            (u_0 + k/B) mod 1 (VDM, App. I.1).
        num_levels: quantization levels of the data for the discretized decoder of the bound
            (256 for 8-bit images, 17 for digits; linked from the data module); None for
            continuous data, whose bound uses the Gaussian decoder's density.
        sampler: default sampler (DDPM ancestral; ``DDIMSampler`` for fewer steps).
        **kwargs: ``optimizer``, ``lr_scheduler``, ``p_uncond``, ``guidance_scale``,
            ``clip_samples`` (:class:`DiffusionModule`).

    Reference: Kingma et al. (2021), "Variational Diffusion Models"; Ho et al. (2020),
    "Denoising Diffusion Probabilistic Models"; Hang et al. (2023), "Efficient Diffusion
    Training via Min-SNR Weighting Strategy".
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        path: NoisePath = lazy_instance(DDPMPath),
        parameterization: Parameterization = lazy_instance(EpsilonPrediction),
        weighting: Weighting = lazy_instance(SNR),
        time_sampling: TimeSampling | None = None,
        low_discrepancy: bool = True,
        num_levels: int | None = None,
        sampler: Sampler = lazy_instance(DDPMSampler, steps=999),
        **kwargs,
    ) -> None:
        if num_levels is not None and num_levels < 2:
            raise ValueError(f"num_levels must be >= 2 or None (continuous), got {num_levels}")
        learned = isinstance(path, nn.Module) and any(p.requires_grad for p in path.parameters())
        if learned and not isinstance(weighting, ELBO):
            raise ValueError(
                f"a learned path ({type(path).__name__}) is trained by the variational bound: "
                f"use weighting ELBO(), not {type(weighting).__name__}"
            )
        if time_sampling is None:
            # A jsonargparse lazy_instance (the default path) runs its __init__ at its first
            # method call; before that, num_steps would read as the class default None.
            path.prior_std()
            draw = Uniform if path.num_steps is None else DiscreteUniform
            time_sampling = draw(low_discrepancy=low_discrepancy)
        objective = (
            VariationalBoundLoss(num_levels, low_discrepancy)
            if isinstance(weighting, ELBO)
            else DenoisingRegression(weighting, time_sampling)
        )
        super().__init__(
            net,
            data_shape,
            path,
            parameterization,
            objective,
            sampler,
            **kwargs,
        )
        self.low_discrepancy, self.num_levels = low_discrepancy, num_levels
        save_config(self)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Logs ``val/loss`` (the objective; the bound itself with ``ELBO``) and ``val/bpd``."""
        x0, y = batch
        # A fixed generator per batch makes both numbers comparable from one epoch to the next.
        generator = torch.Generator(device=x0.device).manual_seed(batch_idx)
        bound = VariationalBoundLoss(self.num_levels, self.low_discrepancy)
        bpd = bound.bits_per_dim(self, x0, y, generator).mean()
        trains_bound = isinstance(self.objective, VariationalBoundLoss)
        loss = bpd if trains_bound else self.loss(x0, y, generator).mean()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/bpd", bpd, prog_bar=True, sync_dist=True)
        return loss
