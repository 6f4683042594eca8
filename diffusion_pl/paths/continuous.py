"""The continuous-time paths: variance preserving (linear β, sub-VP, cosine), variance
exploding and the straight line of rectified flow (docs/math.md, Sec. 2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_pl.paths.base import NoisePath

__all__ = ["LinearPath", "SubVPPath", "VEPath", "VPCosinePath", "VPLinearPath"]


def _vp_linear_integral(t: Tensor, beta_min: float, beta_max: float) -> tuple[Tensor, Tensor]:
    """B(t) = ∫₀ᵗ β(s) ds = ½ t² (β_max − β_min) + t β_min and B'(t) = β(t)."""
    delta = beta_max - beta_min
    return 0.5 * t**2 * delta + t * beta_min, beta_min + t * delta


def _vp_linear_time(b: Tensor, beta_min: float, beta_max: float) -> Tensor:
    """Inverse of B(t): the positive root of ½ Δ t² + β_min t = B, written 2B / (β_min + √·)
    so that small t keeps its digits."""
    delta = beta_max - beta_min
    return 2.0 * b / (beta_min + torch.sqrt(beta_min**2 + 2.0 * delta * b))


class VPLinearPath(NoisePath):
    """Variance-preserving path with linear β(t): α_t = exp(−½ B(t)), σ_t = √(1 − α_t²).

    Reference: Song et al. (2021), "Score-Based Generative Modeling through SDEs", Eq. 33.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> None:
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.t_min = beta_min, beta_max, t_min

    def alpha(self, t: Tensor) -> Tensor:
        b, _ = _vp_linear_integral(t, self.beta_min, self.beta_max)
        return torch.exp(-0.5 * b)

    def sigma(self, t: Tensor) -> Tensor:
        b, _ = _vp_linear_integral(t, self.beta_min, self.beta_max)
        return torch.sqrt(-torch.expm1(-b))

    def d_alpha(self, t: Tensor) -> Tensor:
        b, db = _vp_linear_integral(t, self.beta_min, self.beta_max)
        return -0.5 * db * torch.exp(-0.5 * b)

    def d_sigma(self, t: Tensor) -> Tensor:
        b, db = _vp_linear_integral(t, self.beta_min, self.beta_max)
        return 0.5 * db * torch.exp(-b) / torch.sqrt(-torch.expm1(-b))

    def log_snr(self, t: Tensor) -> Tensor:
        b, _ = _vp_linear_integral(t, self.beta_min, self.beta_max)
        return -b - torch.log(-torch.expm1(-b))

    def time_of_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`: e^{−λ} = e^B − 1, so B = softplus(−λ), then t from B."""
        b = torch.nn.functional.softplus(-log_snr.to(torch.float64))
        return _vp_linear_time(b, self.beta_min, self.beta_max)


class SubVPPath(VPLinearPath):
    """Sub-VP path: α_t as VP-linear, σ_t = 1 − α_t².

    Reference: Song et al. (2021), "Score-Based Generative Modeling through SDEs", Eq. 17.
    """

    def sigma(self, t: Tensor) -> Tensor:
        b, _ = _vp_linear_integral(t, self.beta_min, self.beta_max)
        return -torch.expm1(-b)

    def d_sigma(self, t: Tensor) -> Tensor:
        b, db = _vp_linear_integral(t, self.beta_min, self.beta_max)
        return db * torch.exp(-b)

    def log_snr(self, t: Tensor) -> Tensor:
        b, _ = _vp_linear_integral(t, self.beta_min, self.beta_max)
        return -b - 2.0 * torch.log(-torch.expm1(-b))

    def time_of_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`: with u = α² = e^{−B}, e^λ = u / (1 − u)², whose root in
        (0, 1) is u = 4e^λ / (1 + √(1 + 4e^λ))²; then t from B = −log u."""
        lam = log_snr.to(torch.float64)
        root = torch.sqrt(1.0 + 4.0 * torch.exp(lam))
        b = 2.0 * torch.log1p(root) - lam - math.log(4.0)
        return _vp_linear_time(b, self.beta_min, self.beta_max)


class VPCosinePath(NoisePath):
    """VP path with the cosine schedule α_t = cos(π/2 · (t+s)/(1+s)) / cos(π/2 · s/(1+s)).

    σ_t = √(1 − α_t²). α_1 = 0 exactly, so samplers start at ``t_max`` slightly below 1.

    Reference: Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models",
    Eq. 17.
    """

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.999) -> None:
        self.s, self.t_min, self.t_max = s, t_min, t_max

    def _phase(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * (t + self.s) / (1 + self.s)

    def _norm(self) -> float:
        return math.cos(0.5 * math.pi * self.s / (1 + self.s))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(self._phase(t)) / self._norm()

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt((1 - self.alpha(t) ** 2).clamp_min(0))

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.sin(self._phase(t)) * (0.5 * math.pi / (1 + self.s)) / self._norm()

    def d_sigma(self, t: Tensor) -> Tensor:
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def time_of_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`: α² = sigmoid(λ), phase = arccos(α · cos(π/2 · s/(1+s)))."""
        alpha = torch.sigmoid(log_snr.to(torch.float64)).sqrt()
        phase = torch.arccos((alpha * self._norm()).clamp(max=1.0))
        return phase * (1 + self.s) / (0.5 * math.pi) - self.s


class VEPath(NoisePath):
    """Variance-exploding path: α_t = 1, σ_t = σ_min (σ_max / σ_min)^t.

    With ``num_levels`` = L it is NCSN's discrete path: the L geometric levels σ_max … σ_min at
    t_i = i / (L − 1) (``num_steps`` = L), the only levels its net is trained and sampled at.

    Reference: Song et al. (2021), "Score-Based Generative Modeling through SDEs", Eq. 31;
    the NCSN noise levels are this path at discrete times (Song & Ermon, 2019).
    """

    def __init__(
        self, sigma_min: float = 0.01, sigma_max: float = 50.0, num_levels: int | None = None
    ) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if num_levels is not None and num_levels < 2:
            raise ValueError(f"num_levels must be >= 2 or None (continuous), got {num_levels}")
        self.sigma_min, self.sigma_max, self.num_steps = sigma_min, sigma_max, num_levels
        self._log_ratio = math.log(sigma_max / sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.sigma(t) * self._log_ratio

    def time_of_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of σ_t: t = log(σ / σ_min) / log(σ_max / σ_min)."""
        return torch.log(sigma / self.sigma_min) / self._log_ratio

    def time_of_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`: λ = −2 log σ, t = (−λ/2 − log σ_min) / log(σ_max/σ_min)."""
        return (-0.5 * log_snr.to(torch.float64) - math.log(self.sigma_min)) / self._log_ratio


class LinearPath(NoisePath):
    """Linear interpolation α_t = 1 − t, σ_t = t (rectified flow / flow matching).

    Reference: Liu et al. (2023), "Flow Straight and Fast", Eq. 1; Lipman et al. (2023).
    """

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def time_of_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`: λ = 2 log((1 − t)/t), so t = sigmoid(−λ/2)."""
        return torch.sigmoid(-0.5 * log_snr.to(torch.float64))
