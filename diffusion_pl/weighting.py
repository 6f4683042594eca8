"""Loss weightings w(t): one small class each, chosen by ``class_path``.

Every objective here is a weighted regression (docs/math.md, section 6). A weighting is
a callable ``weighting(path, t) -> w [B]`` on one named error, per dimension (mean over
entries):

- :class:`Weighting` subclasses weigh the network's own regression error ‖F − target‖² (the
  parameterization's target: ε, x₀, v, σ·score or velocity);
- :class:`EpsilonWeighting` subclasses weigh ‖ε̂ − ε‖², whatever the network predicts; the
  parameterization converts (:meth:`~diffusion_pl.parameterization.Parameterization.eps_scale`).

On ε, a weight λ(t) on the x₀ error is λ(t) / SNR(t), since ‖ε̂ − ε‖² = SNR(t) ‖x̂_0 − x_0‖².
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_pl.bound import bound_steps, elbo_weight
from diffusion_pl.parameterization import Parameterization
from diffusion_pl.paths import NoisePath, PathCoefficients

__all__ = [
    "EDM",
    "ELBO",
    "SNR",
    "Constant",
    "EpsilonWeighting",
    "Likelihood",
    "MinSNR",
    "Weighting",
]


class Weighting:
    """A weight w(t) ``[B]`` on the network's own regression error ‖F − target‖²."""

    def __call__(self, path: NoisePath, t: Tensor) -> Tensor:
        """w(t) ``[B]`` at times t ``[B]``."""
        raise NotImplementedError

    def error_scale(
        self, parameterization: Parameterization, c: PathCoefficients
    ) -> Tensor | float:
        """k² with (the error this weight is on) = k² ‖F − target‖²; 1 here."""
        return 1.0


class EpsilonWeighting(Weighting):
    """A weight w(t) ``[B]`` on ‖ε̂ − ε‖², for any parameterization."""

    def error_scale(
        self, parameterization: Parameterization, c: PathCoefficients
    ) -> Tensor | float:
        """k² = (∂ε̂/∂F)², so that ‖ε̂ − ε‖² = k² ‖F − target‖²."""
        return parameterization.eps_scale(c) ** 2


class Constant(Weighting):
    """w = ``weight`` on the network's own error: 1 for flow matching and score-SDE's λ = σ².

    With the σ-scaled score, ‖σ s_θ + ε‖² is score-SDE's λ(t) = σ_t² weighting; NCSN's
    ½ ‖σ s_θ + ε‖² is ``weight`` ½.

    Args:
        weight: the constant weight.

    Reference: Song & Ermon (2019), "Generative Modeling by Estimating Gradients", Eq. 6;
    Liu et al. (2023), "Flow Straight and Fast", Eq. 1.
    """

    def __init__(self, weight: float = 1.0) -> None:
        if not weight > 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        self.weight = weight

    def __call__(self, path: NoisePath, t: Tensor) -> Tensor:
        return torch.full_like(t, self.weight)


class SNR(EpsilonWeighting):
    """SNR(t) ‖x̂_0 − x_0‖² = ‖ε̂ − ε‖², w = 1 on ε: DDPM's L_simple in any parameterization.

    Reference: Ho et al. (2020), "Denoising Diffusion Probabilistic Models", Eq. 14.
    """

    def __call__(self, path: NoisePath, t: Tensor) -> Tensor:
        return torch.ones_like(t)


class MinSNR(EpsilonWeighting):
    """min(SNR(t), γ) ‖x̂_0 − x_0‖², w = min(SNR, γ) / SNR on ε.

    With v-prediction this is Hang et al.'s min(SNR, γ) / (SNR + 1) on ‖v̂ − v‖².

    Args:
        gamma: γ (5 in the paper).

    Reference: Hang et al. (2023), "Efficient Diffusion Training via Min-SNR Weighting
    Strategy", Eq. 9.
    """

    def __init__(self, gamma: float = 5.0) -> None:
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.gamma = gamma

    def __call__(self, path: NoisePath, t: Tensor) -> Tensor:
        snr = path.log_snr(t).exp()
        return snr.clamp(max=self.gamma) / snr


class Likelihood(EpsilonWeighting):
    """λ(t) = g(t)² on the score error, w = g(t)² / σ_t² on ε.

    Makes the score-matching loss a bound on the negative log-likelihood of the PF-ODE model.

    Reference: Song et al. (2021), "Maximum Likelihood Training of Score-Based Diffusion
    Models", Theorem 1.
    """

    def __call__(self, path: NoisePath, t: Tensor) -> Tensor:
        return path.g2(t) / path.sigma(t) ** 2


class EDM(EpsilonWeighting):
    """λ(σ̃) = (σ̃² + σ_d²) / (σ̃ σ_d)² on the x₀ error, σ̃ = σ/α; w = (σ̃² + σ_d²) / σ_d² on ε.

    λ = 1 / c_out², so with EDM's preconditioning every noise level starts at unit loss.

    Args:
        sigma_data: σ_d, the data's standard deviation (0.5 for images in [−1, 1]).

    Reference: Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based
    Generative Models", Table 1.
    """

    def __init__(self, sigma_data: float = 0.5) -> None:
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.sigma_data = sigma_data

    def __call__(self, path: NoisePath, t: Tensor) -> Tensor:
        sigma_tilde2 = (-path.log_snr(t)).exp()
        return (sigma_tilde2 + self.sigma_data**2) / self.sigma_data**2


class ELBO(EpsilonWeighting):
    """The variational bound's diffusion weight on ε, in nats per dimension.

    Continuous path: ½ (t_max − t_min) γ'(t) (t ~ U(t_min, t_max)); discrete path with N steps:
    (N/2) expm1(λ_{t−Δ} − λ_t) (:func:`diffusion_pl.bound.elbo_weight`). VDM trains on the whole
    bound when given this weighting (prior + diffusion + reconstruction, not a regression).

    Reference: Kingma et al. (2021), "Variational Diffusion Models", Eq. 13 and 17.
    """

    def __call__(self, path: NoisePath, t: Tensor) -> Tensor:
        return elbo_weight(path, t, bound_steps(path))
