"""Gaussian noise paths ``x_t = α_t x_0 + σ_t ε`` with t = 0 data and t = 1 noise.

A path knows α_t, σ_t and their time derivatives, nothing else: it never sees a network.
Everything else (log-SNR, the SDE coefficients f and g², the prior) is derived once here.
See docs/math.md (sections 2 and 4) for the table every class below implements.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_pl.randomness import Generators, randn
from diffusion_pl.tensors import append_dims

__all__ = [
    "DDPMPath",
    "LinearPath",
    "NoisePath",
    "PathCoefficients",
    "SubVPPath",
    "VEPath",
    "VPCosinePath",
    "VPLinearPath",
    "cosine_betas",
    "linear_betas",
]


@dataclass(frozen=True)
class PathCoefficients:
    """α_t, σ_t, dα_t/dt, dσ_t/dt, already broadcastable against ``x``, and the time t they
    were taken at (shaped alike; None where a caller built them without it)."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor
    t: Tensor | None = None


class NoisePath:
    """A Gaussian path ``x_t = α_t x_0 + σ_t ε`` on t ∈ [0, 1].

    Subclasses implement :meth:`alpha`, :meth:`sigma`, :meth:`d_alpha`, :meth:`d_sigma`
    for a ``[B]`` (or 0-dim) time tensor, in the tensor's own dtype.

    Attributes:
        t_min: smallest time a sampler visits (its last step); a final denoising step maps
            ``x_{t_min}`` to data when σ_{t_min} > 0.
        t_max: the time samplers start from, where x_t is drawn from the prior.
        num_steps: None for a continuous path; for a discrete one, the number of times it is
            defined at: t_min + i (t_max − t_min) / (num_steps − 1), i = 0 … num_steps − 1
            (DDPM's steps i/T, NCSN's noise levels).
    """

    t_min: float = 0.0
    t_max: float = 1.0
    num_steps: int | None = None

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def log_snr(self, t: Tensor) -> Tensor:
        """λ_t = log(α_t² / σ_t²); VDM's γ(t) is −λ_t."""
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def f(self, t: Tensor) -> Tensor:
        """SDE drift coefficient f(t) = d log α_t / dt (docs/math.md, section 4)."""
        return self.d_alpha(t) / self.alpha(t)

    def g2(self, t: Tensor) -> Tensor:
        """Squared SDE diffusion g(t)² = dσ_t²/dt − 2 f(t) σ_t² (docs/math.md, section 4)."""
        sigma = self.sigma(t)
        return 2.0 * sigma * self.d_sigma(t) - 2.0 * self.f(t) * sigma**2

    def coefficients(self, t: Tensor, ndim: int) -> PathCoefficients:
        """α, σ and their derivatives at ``t`` ``[B]``, shaped to broadcast against ``ndim``-d x."""
        return PathCoefficients(
            alpha=append_dims(self.alpha(t), ndim),
            sigma=append_dims(self.sigma(t), ndim),
            d_alpha=append_dims(self.d_alpha(t), ndim),
            d_sigma=append_dims(self.d_sigma(t), ndim),
            t=append_dims(t, ndim),
        )

    def marginal(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Draw x_t = α_t x_0 + σ_t ε for per-sample times ``t`` ``[B]``."""
        return append_dims(self.alpha(t), x0.ndim) * x0 + append_dims(self.sigma(t), x0.ndim) * eps

    def as_time(self, t: float) -> Tensor:
        """``t`` as a 0-dim tensor where this path computes, to probe α, σ at one time.

        Float64 on the CPU here (every formula above is closed-form); a path that holds
        parameters (``LearnedVPPath``) puts it on their device and dtype.
        """
        return torch.tensor(t, dtype=torch.float64)

    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, σ_{t_max}² I) samplers start from."""
        return float(self.sigma(self.as_time(self.t_max)))

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: Generators = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw x_{t_max} ~ N(0, σ_{t_max}² I) (α_{t_max} x_0 is negligible by construction);
        the arguments are :func:`~diffusion_pl.randomness.randn`'s."""
        return self.prior_std() * randn(shape, generator, device=device, dtype=dtype)

    def prior_logp(self, x: Tensor) -> Tensor:
        """log N(x; 0, σ_{t_max}² I) per sample, ``[B]``."""
        std = self.prior_std()
        d = x[0].numel()
        sq = x.flatten(1).pow(2).sum(1)
        return -0.5 * sq / std**2 - d * (math.log(std) + 0.5 * math.log(2 * math.pi))

    def time_of_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr` by bisection on [0, 1] in float64 (λ_t decreasing in t).

        Paths with a closed form override this. 64 halvings reach float64 resolution; a λ
        outside [λ_1, λ_0] returns the nearer end.

        Args:
            log_snr: λ = log(α²/σ²), any shape; ±inf map to the ends.
        """
        lam = log_snr.to(torch.float64)
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # λ(mid) > λ: the answer lies to the right
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)


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


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """β_i = linspace(β_start, β_end, T) in float64 (Ho et al., 2020, Sec. 4)."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """β_i = min(1 − ᾱ_i / ᾱ_{i−1}, 0.999) from the cosine ᾱ (Nichol & Dhariwal, 2021, Eq. 17)."""
    i = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos(0.5 * math.pi * (i / num_steps + s) / (1 + s)) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


class DDPMPath(NoisePath):
    """Discrete DDPM path: ᾱ_i = ∏_{j≤i}(1 − β_j), α = √ᾱ_i, σ = √(1 − ᾱ_i) at t_i = i/T.

    ᾱ is computed in float64. Between grid points log ᾱ is interpolated linearly in t, so
    α, σ and their (piecewise constant in log space) derivatives exist for every t ∈ [0, 1]
    and continuous-time samplers run on the discrete model too.

    Args:
        num_steps: T.
        schedule: the β schedule, ``T -> β [T]``: :func:`linear_betas` (Ho et al.) or
            :func:`cosine_betas` (Nichol & Dhariwal); in YAML its import path, e.g.
            ``schedule: diffusion_pl.paths.cosine_betas``.

    Reference: Ho et al. (2020), "Denoising Diffusion Probabilistic Models", Eq. 4;
    Nichol & Dhariwal (2021) for the cosine β.
    """

    def __init__(
        self, num_steps: int = 1000, schedule: Callable[[int], Tensor] = linear_betas
    ) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if not callable(schedule):
            raise ValueError(
                f"the beta schedule must be a function T -> betas [T], got {schedule!r}; use "
                "diffusion_pl.paths.linear_betas or diffusion_pl.paths.cosine_betas"
            )
        betas = torch.as_tensor(schedule(num_steps), dtype=torch.float64)
        if betas.shape != (num_steps,) or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                f"the beta schedule {schedule!r} must return {num_steps} values in (0, 1), "
                f"got shape {tuple(betas.shape)}, range [{float(betas.min()):g}, "
                f"{float(betas.max()):g}]"
            )
        self.num_steps = num_steps
        self.betas = betas
        log_alpha_bar = torch.cumsum(torch.log1p(-self.betas), 0)
        self.log_alpha_bar = torch.cat([torch.zeros(1, dtype=torch.float64), log_alpha_bar])
        self.t_min = 1.0 / num_steps

    @property
    def alpha_bar(self) -> Tensor:
        """ᾱ_i for i = 0..T (ᾱ_0 = 1), float64."""
        return self.log_alpha_bar.exp()

    def _log_alpha_bar(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """log ᾱ(t) by linear interpolation on the grid t_i = i/T, and its t-derivative."""
        table = self.log_alpha_bar.to(t.device)
        pos = (t.to(torch.float64) * self.num_steps).clamp(0, self.num_steps)
        lo = pos.floor().long().clamp(max=self.num_steps - 1)
        slope = (table[lo + 1] - table[lo]) * self.num_steps
        value = table[lo] + (pos - lo) * slope / self.num_steps
        return value, slope

    def alpha(self, t: Tensor) -> Tensor:
        value, _ = self._log_alpha_bar(t)
        return torch.exp(0.5 * value).to(t.dtype)

    def sigma(self, t: Tensor) -> Tensor:
        value, _ = self._log_alpha_bar(t)
        return torch.sqrt(-torch.expm1(value)).to(t.dtype)

    def d_alpha(self, t: Tensor) -> Tensor:
        value, slope = self._log_alpha_bar(t)
        return (0.5 * slope * torch.exp(0.5 * value)).to(t.dtype)

    def d_sigma(self, t: Tensor) -> Tensor:
        value, slope = self._log_alpha_bar(t)
        return (-0.5 * slope * torch.exp(value) / torch.sqrt(-torch.expm1(value))).to(t.dtype)

    def log_snr(self, t: Tensor) -> Tensor:
        value, _ = self._log_alpha_bar(t)
        return (value - torch.log(-torch.expm1(value))).to(t.dtype)

    def time_of_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`, exact for the piecewise-linear log ᾱ(t).

        ᾱ = sigmoid(λ), so log ᾱ = logsigmoid(λ); the table of log ᾱ_i decreases in i, and
        inside its segment log ᾱ is linear in t.
        """
        value = torch.nn.functional.logsigmoid(log_snr.to(torch.float64))
        table = self.log_alpha_bar.to(value.device)
        hi = torch.searchsorted(-table, -value.reshape(-1)).clamp(1, self.num_steps)
        lo = hi - 1
        frac = (value.reshape(-1) - table[lo]) / (table[hi] - table[lo])
        return ((lo + frac.clamp(0, 1)) / self.num_steps).reshape(value.shape)
