"""The discrete DDPM path over T steps and its β schedules (Ho et al. 2020; Nichol & Dhariwal
2021)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_pl.paths.base import NoisePath

__all__ = ["DDPMPath", "cosine_betas", "linear_betas"]


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
