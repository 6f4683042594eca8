"""What the network predicts: the readings of a network's output as the pair (x̂_0, ε̂).

A parameterization decides what the network sees and how its output is read: its noise label
at (t, α_t, σ_t), the scale of its input (1 but for EDM's c_in), the reading of the raw output
F at (x_t, t) as the pair (x̂_0, ε̂), each in its numerically stable form, and the regression
target for training. Every other quantity follows from the pair and the path (docs/math.md,
section 5):

    score  s = −ε̂ / σ            velocity  u = α' x̂_0 + σ' ε̂

:mod:`diffusion_pl.denoiser` wraps a net and a reading into the ``Denoiser`` every sampler
consumes; :mod:`diffusion_pl.consistency_function` holds the readings of consistency models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_pl.paths import PathCoefficients

__all__ = [
    "AverageVelocityPrediction",
    "DenoiserFn",
    "EDMPreconditioning",
    "EpsilonPrediction",
    "Parameterization",
    "Prediction",
    "ScorePrediction",
    "VPrediction",
    "VelocityPrediction",
    "X0Prediction",
]


@dataclass(frozen=True)
class Prediction:
    """The denoiser's reading of x_t: the clean-data estimate x̂_0 and the noise estimate ε̂."""

    x0: Tensor
    eps: Tensor

    def score(self, c: PathCoefficients) -> Tensor:
        """∇ log p_t(x) ≈ −ε̂ / σ_t."""
        return -self.eps / c.sigma

    def velocity(self, c: PathCoefficients) -> Tensor:
        """Probability-flow ODE drift dx/dt = α'_t x̂_0 + σ'_t ε̂ (= f x − ½ g² s)."""
        return c.d_alpha * self.x0 + c.d_sigma * self.eps


DenoiserFn = Callable[[Tensor, Tensor | float], Prediction]
"""``denoiser(x [B, ...], t) -> Prediction(x0, eps)``: a trained net or an exact oracle."""


class Parameterization:
    """Maps network output ↔ (x̂_0, ε̂), names the training target and the net's noise label."""

    def noise_label(self, t: Tensor, c: PathCoefficients) -> Tensor:
        """What the network sees of the noise level at times t ``[B]``: t itself by default."""
        return t

    def input_scale(self, c: PathCoefficients) -> Tensor | float:
        """The factor the net's input x_t is multiplied by (1 here; EDM's c_in / α)."""
        return 1.0

    def eps_scale(self, c: PathCoefficients) -> Tensor | float:
        """k = ∂ε̂/∂F, so that ε̂ − ε = k (F − target) (ε̂ is affine in F at fixed x, t)."""
        raise NotImplementedError

    def predict(self, out: Tensor, x: Tensor, c: PathCoefficients) -> Prediction:
        """Read raw network output ``out`` at ``x = α x_0 + σ ε`` as (x̂_0, ε̂)."""
        raise NotImplementedError

    def target(self, x0: Tensor, eps: Tensor, c: PathCoefficients) -> Tensor:
        """The regression target the network output should match for (x_0, ε)."""
        raise NotImplementedError


class EpsilonPrediction(Parameterization):
    """F = ε̂; x̂_0 = (x − σ ε̂) / α (Ho et al., 2020)."""

    def predict(self, out: Tensor, x: Tensor, c: PathCoefficients) -> Prediction:
        return Prediction(x0=(x - c.sigma * out) / c.alpha, eps=out)

    def target(self, x0: Tensor, eps: Tensor, c: PathCoefficients) -> Tensor:
        return eps

    def eps_scale(self, c: PathCoefficients) -> float:
        return 1.0


class X0Prediction(Parameterization):
    """F = x̂_0; ε̂ = (x − α x̂_0) / σ."""

    def predict(self, out: Tensor, x: Tensor, c: PathCoefficients) -> Prediction:
        return Prediction(x0=out, eps=(x - c.alpha * out) / c.sigma)

    def target(self, x0: Tensor, eps: Tensor, c: PathCoefficients) -> Tensor:
        return x0

    def eps_scale(self, c: PathCoefficients) -> Tensor:
        return -c.alpha / c.sigma


class VPrediction(Parameterization):
    """F = v̂ with v = α ε − σ x_0 (Salimans & Ho, 2022, Sec. 4).

    For any path, x̂_0 = (α x − σ v̂) / (α² + σ²) and ε̂ = (σ x + α v̂) / (α² + σ²); on VP
    paths (α² + σ² = 1) these are the familiar x̂_0 = α x − σ v̂, ε̂ = σ x + α v̂.
    """

    def predict(self, out: Tensor, x: Tensor, c: PathCoefficients) -> Prediction:
        norm = c.alpha**2 + c.sigma**2
        return Prediction(
            x0=(c.alpha * x - c.sigma * out) / norm, eps=(c.sigma * x + c.alpha * out) / norm
        )

    def target(self, x0: Tensor, eps: Tensor, c: PathCoefficients) -> Tensor:
        return c.alpha * eps - c.sigma * x0

    def eps_scale(self, c: PathCoefficients) -> Tensor:
        return c.alpha / (c.alpha**2 + c.sigma**2)


class ScorePrediction(Parameterization):
    """F is the score; with ``scaled_by_sigma`` the net outputs σ·s and s = F / σ.

    ε̂ = −σ s, x̂_0 = (x + σ² s) / α (Tweedie). The σ-scaled output keeps the network's target
    at unit scale across noise levels (Song & Ermon, 2020, "Improved Techniques", Technique 3).
    """

    def __init__(self, scaled_by_sigma: bool = True) -> None:
        self.scaled_by_sigma = scaled_by_sigma

    def predict(self, out: Tensor, x: Tensor, c: PathCoefficients) -> Prediction:
        eps = -out if self.scaled_by_sigma else -c.sigma * out
        return Prediction(x0=(x - c.sigma * eps) / c.alpha, eps=eps)

    def target(self, x0: Tensor, eps: Tensor, c: PathCoefficients) -> Tensor:
        return -eps if self.scaled_by_sigma else -eps / c.sigma

    def eps_scale(self, c: PathCoefficients) -> Tensor | float:
        return -1.0 if self.scaled_by_sigma else -c.sigma


class VelocityPrediction(Parameterization):
    """F = û with u = α' x_0 + σ' ε (flow matching; Lipman et al., 2023; Liu et al., 2023).

    Solving x = α x_0 + σ ε and u = α' x_0 + σ' ε for the pair, with det = α σ' − σ α':
    x̂_0 = (σ' x − σ û) / det and ε̂ = (α û − α' x) / det. On the linear path det = 1, so
    x̂_0 = x − t û and ε̂ = x + (1 − t) û, stable on all of [0, 1].
    """

    def predict(self, out: Tensor, x: Tensor, c: PathCoefficients) -> Prediction:
        det = c.alpha * c.d_sigma - c.sigma * c.d_alpha
        return Prediction(
            x0=(c.d_sigma * x - c.sigma * out) / det, eps=(c.alpha * out - c.d_alpha * x) / det
        )

    def target(self, x0: Tensor, eps: Tensor, c: PathCoefficients) -> Tensor:
        return c.d_alpha * x0 + c.d_sigma * eps

    def eps_scale(self, c: PathCoefficients) -> Tensor:
        return c.alpha / (c.alpha * c.d_sigma - c.sigma * c.d_alpha)


class AverageVelocityPrediction(VelocityPrediction):
    """F = u(z, r, t), the average velocity over [r, t] of the flow on the linear path (MeanFlow).

    u(z_t, r, t) = (z_t − z_r) / (t − r) for the probability-flow trajectory through z_t; at
    r = t it is the instantaneous velocity v(z_t, t), which is all a denoiser is asked for, so
    the output is read as :class:`VelocityPrediction`'s. The net sees two noise labels,
    (t, t − r) (:meth:`interval_labels`); a denoiser call at time t gives it (t, 0), and every
    sampler that takes a :class:`Denoiser` runs on a MeanFlow model at r = t.

    Reference: Geng et al. (2025), "Mean Flows for One-step Generative Modeling", Sec. 4.1
    (average velocity) and Sec. 4.3 (conditioning on (t, t − r)).
    """

    @staticmethod
    def interval_labels(r: Tensor, t: Tensor) -> Tensor:
        """The net's noise labels ``[B, 2]``: (t, t − r) at each row's times r ≤ t ``[B]``."""
        return torch.stack([t, t - r], dim=-1)

    def noise_label(self, t: Tensor, c: PathCoefficients) -> Tensor:
        """(t, 0) ``[B, 2]``: the average velocity over an empty interval, v(z, t)."""
        return self.interval_labels(t, t)


class EDMPreconditioning(Parameterization):
    """Karras et al.'s preconditioning on the scaled variable x̃ = x/α at σ̃ = σ/α, any path.

    D(x̃; σ̃) = c_skip x̃ + c_out F(c_in x̃, c_noise) = x̂_0, with

        c_skip = σ_d² / (σ̃² + σ_d²),   c_out = σ̃ σ_d / √(σ̃² + σ_d²),
        c_in = 1 / √(σ̃² + σ_d²),       c_noise = ¼ ln σ̃.

    Written on x itself with n = √(σ² + σ_d² α²) = α √(σ̃² + σ_d²), every factor stays finite
    at both ends of a path (σ̃ = 0 where σ = 0, σ̃ = ∞ where α = 0, as the linear path's t = 0
    and t = 1): the net sees x / n (:meth:`input_scale` = c_in/α = 1/n), and

        x̂_0 = (σ_d² α x + σ σ_d n F) / n²,    ε̂ = (σ x − α σ_d n F) / n²,

    with ∂ε̂/∂F = −α σ_d / n. Its regression target, (x_0 − c_skip x̃)/c_out =
    (σ x_0 − σ_d² α ε) / (σ_d n), has unit variance at every σ̃ for data of std σ_d, and with
    :class:`~diffusion_pl.weighting.EDM`'s λ = 1/c_out² the loss is exactly ‖F − target‖².

    Only c_noise is unbounded (±∞ at σ̃ = 0, ∞): ln σ̃ is clamped to [ln ``sigma_min``,
    ln ``sigma_max``], EDM's sampling range by default, so the net always sees a finite label;
    c_skip, c_out and c_in are exact at every σ̃.

    Args:
        sigma_data: σ_d, the data's standard deviation (0.5 for images in [−1, 1]).
        sigma_min: lowest σ̃ the noise label distinguishes (EDM's 0.002).
        sigma_max: highest σ̃ the noise label distinguishes (EDM's 80).

    Reference: Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based
    Generative Models", Table 1 and Eq. 7–8; docs/math.md, section 9.
    """

    def __init__(
        self, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0
    ) -> None:
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        self.sigma_data, self.sigma_min, self.sigma_max = sigma_data, sigma_min, sigma_max

    def _norm(self, c: PathCoefficients) -> Tensor:
        """n = √(σ² + σ_d² α²) = α √(σ̃² + σ_d²)."""
        return torch.sqrt(c.sigma**2 + (self.sigma_data * c.alpha) ** 2)

    def noise_label(self, t: Tensor, c: PathCoefficients) -> Tensor:
        """c_noise = ¼ ln σ̃ ``[B]``, ln σ̃ = ln σ − ln α clamped to [ln σ_min, ln σ_max]."""
        log_sigma = (torch.log(c.sigma) - torch.log(c.alpha)).reshape(t.shape[0], -1)[:, 0]
        return 0.25 * log_sigma.clamp(math.log(self.sigma_min), math.log(self.sigma_max))

    def input_scale(self, c: PathCoefficients) -> Tensor:
        """c_in / α = 1 / √(σ² + σ_d² α²): the net sees c_in x̃."""
        return 1.0 / self._norm(c)

    def predict(self, out: Tensor, x: Tensor, c: PathCoefficients) -> Prediction:
        n, sd = self._norm(c), self.sigma_data
        return Prediction(
            x0=(sd**2 * c.alpha * x + c.sigma * sd * n * out) / n**2,
            eps=(c.sigma * x - c.alpha * sd * n * out) / n**2,
        )

    def target(self, x0: Tensor, eps: Tensor, c: PathCoefficients) -> Tensor:
        sd = self.sigma_data
        return (c.sigma * x0 - sd**2 * c.alpha * eps) / (sd * self._norm(c))

    def eps_scale(self, c: PathCoefficients) -> Tensor:
        return -c.alpha * self.sigma_data / self._norm(c)
