"""Multistep consistency sampling (Song et al. 2023, Algorithm 1) over any denoiser.

A consistency model's denoiser x̂_0 is its consistency function f(x, σ̃): one call maps noise
to data. More steps alternate between re-noising the estimate to a lower level σ̃_i and
mapping it back. Nothing here needs a consistency model: on a diffusion model's denoiser the
same loop runs (and gives blurry one-step samples, the posterior mean).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators, randn
from diffusion_pl.samplers.base import DenoiserFn, Sampler, progress_bar
from diffusion_pl.samplers.grids import karras_sigmas

if TYPE_CHECKING:
    from diffusion_pl.teleport import DataMoments

__all__ = ["ConsistencySampler", "consistency_levels", "sample_consistency"]


@torch.no_grad()
def sample_consistency(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    sigma_min: float = 0.002,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """Song et al.'s multistep sampler: x̂ = f(x, t_0), then for each later time t_i,
    x̃ = x̂ + √(σ̃_i² − σ_min²) z and x̂ = f(α_i x̃, t_i); returns the last x̂.

    σ̃_i = σ_i/α_i is the scaled noise level of t_i (EDM's σ), and α_i x̃ the point on the
    path at t_i: on the VE path (α = 1) this is Algorithm 1 as printed.

    Shared arguments: as in :mod:`diffusion_pl.samplers.base`.

    Args:
        denoiser: ``(x, t) -> Prediction``; its ``x0`` is the consistency function.
        x: samples at ``ts[0]``, ``[B, ...]``.
        ts: the evaluation times ``[K]``, decreasing: ``ts[0]`` where ``x`` lies, then one
            per extra step (K network evaluations).
        sigma_min: σ_min of the consistency function (where it is the identity).
        generator: source of the re-noising draws: one generator or one per sample.

    Reference: Song et al. (2023), "Consistency Models", Algorithm 1.
    """
    with torch.no_grad():
        grid = ts.to("cpu", torch.float64)
        alpha, sigma = path.alpha(grid), path.sigma(grid)
    x0 = denoiser(x, ts[0]).x0.to(x.dtype)
    for i in progress_bar(range(1, len(ts)), len(ts) - 1, progress, "consistency"):
        a_i, s_i = float(alpha[i]), float(sigma[i] / alpha[i])
        z = randn(x.shape, generator, device=x.device, dtype=x.dtype)
        x_i = a_i * (x0 + math.sqrt(max(s_i**2 - sigma_min**2, 0.0)) * z)
        x0 = denoiser(x_i, ts[i]).x0.to(x.dtype)
    return x0


def consistency_levels(
    steps: int,
    *,
    sigmas: Sequence[float] | None = None,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> list[float]:
    """The intermediate levels σ̃_1 > … > σ̃_{K−1} of a ``steps`` = K step consistency sampler.

    By default the inner points of Karras et al.'s ρ-spaced levels from ``sigma_max`` to
    ``sigma_min`` over K intervals (K = 2: σ̃ = 2.52 for ρ = 7); else the first K − 1 of
    ``sigmas`` (iCT's two-step ``[0.821]`` on CIFAR-10 serves 1 and 2 steps).

    Args:
        steps: number of network evaluations K (1, 2, 4, ...).
        sigmas: intermediate levels σ̃, decreasing, each in (sigma_min, σ̃(t_max)), at least
            K − 1 of them (the first K − 1 are used); None: ρ-spaced as above.
        sigma_min: σ_min of the consistency function (the re-noising std is √(σ̃_i² − σ_min²)).
        sigma_max: the first evaluation's level where the path reaches higher, and the top of
            the ρ-spaced default levels.
        rho: ρ of the default levels.

    Reference: Song et al. (2023), "Consistency Models", Sec. 6 (levels by search); Karras et
    al. (2022), Eq. 5 (ρ-spaced levels); Song & Dhariwal (2023), Sec. 6 (two-step midpoint
    0.821 on CIFAR-10).
    """
    if not 0 < sigma_min < sigma_max < math.inf or rho <= 0:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max < inf and rho > 0, got {sigma_min}, {sigma_max}, {rho}"
        )
    if sigmas is None:
        return karras_sigmas(sigma_min, sigma_max, steps, rho)[1:-1].tolist()
    if len(sigmas) < steps - 1:
        raise ValueError(
            f"ConsistencySampler: {steps} steps need {steps - 1} intermediate sigmas, "
            f"got {list(sigmas)}; give more, use fewer steps, or drop sigmas (rho-spaced levels)"
        )
    if any(not a > b for a, b in itertools.pairwise(sigmas)) or (
        sigmas and sigmas[-1] <= sigma_min
    ):
        raise ValueError(
            f"sigmas must decrease and stay above sigma_min={sigma_min}, got {list(sigmas)}"
        )
    return list(sigmas[: steps - 1])


class ConsistencySampler(Sampler, steps=1, grid=False, denoise_final=False):
    """Multistep consistency sampling (Song et al., 2023); no final denoising step.

    The first evaluation is at the path's ``t_max`` on its prior sample (σ̃ = 80 on EDM's
    ``VEPath(0.002, 80)``), or at the time of σ̃ = ``sigma_max`` where the path reaches
    higher (a consistency model on the linear path, where σ̃(t_max) = ∞, is trained up to
    σ_max only); each further step re-noises to the next intermediate level σ̃_i
    (:func:`consistency_levels`) and maps back.

    Args:
        steps: number of network evaluations K (1, 2, 4, ...).

    Reference: Song et al. (2023), "Consistency Models", Algorithm 1.
    """

    name = "consistency"
    solver = staticmethod(sample_consistency)
    schedule = staticmethod(consistency_levels)
    randomness = "stochastic if steps > 1"

    def validate(self) -> None:
        if self.sigmas is not None:
            self.sigmas = [float(s) for s in self.sigmas]
        self.levels()

    def denoises_at_end(self, path: NoisePath) -> bool:
        """Never: the consistency function's output is the sample."""
        return False

    def levels(self) -> list[float]:
        """The intermediate levels σ̃_1 > … > σ̃_{K−1} (:func:`consistency_levels`)."""
        return consistency_levels(
            self.steps,
            sigmas=self.sigmas,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            rho=self.rho,
        )

    @staticmethod
    def top_level(path: NoisePath) -> float:
        """The path's σ̃ = σ/α at t_max (∞ where α = 0)."""
        t_max = path.as_time(path.t_max)  # apart: a lazy path must initialise first
        with torch.no_grad():
            return float(torch.exp(-0.5 * path.log_snr(t_max)))

    def check(self, path: NoisePath) -> None:
        """The intermediate levels must lie below the path's σ̃ at t_max."""
        top = self.top_level(path)
        if any(s >= top for s in self.levels()):
            raise ValueError(
                f"ConsistencySampler levels {self.levels()} reach the path's top sigma/alpha "
                f"{top:g} ({type(path).__name__}): lower sigmas or sigma_max"
            )

    def carry_prior(
        self, x: Tensor, path: NoisePath, ts: Tensor, data_moments: DataMoments | None
    ) -> Tensor:
        """The prior draw at t_max as a draw at t_0: where t_0 lies below t_max, rescaled to
        N(0, σ_{t_0}² I), the same approximation (α_{t_0} x_0 dropped) as the prior's at t_max."""
        if float(ts[0]) == path.t_max:
            return x
        with torch.no_grad():
            sigma = float(path.sigma(ts[:1].to("cpu", torch.float64))[0])
        return x * (sigma / path.prior_std())

    def time_grid(self, path: NoisePath, device: torch.device | str | None) -> Tensor:
        """``[t_0, t(σ̃_1), …, t(σ̃_{K−1})]``, float64: t_0 = t_max, or t(σ_max) where the
        path's σ̃(t_max) exceeds ``sigma_max``."""
        levels = torch.tensor([self.sigma_max, *self.levels()], dtype=torch.float64)
        with torch.no_grad():
            times = path.time_of_log_snr(-2.0 * torch.log(levels)).to(torch.float64)
        if self.top_level(path) <= self.sigma_max * (1 + 1e-9):
            times[0] = path.t_max
        return times.to(device)
