"""The noise path's interface: ``x_t = α_t x_0 + σ_t ε``, t = 0 data and t = 1 noise.

A path knows α_t, σ_t and their time derivatives, nothing else: it never sees a network.
Everything else (log-SNR, the SDE coefficients f and g², the prior) is derived once here.
See docs/math.md (sections 2 and 4) for the table every path implements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_pl.randomness import Generators, randn
from diffusion_pl.tensors import append_dims

__all__ = ["NoisePath", "PathCoefficients"]


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
