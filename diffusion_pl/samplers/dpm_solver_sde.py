"""DPM-Solver++(2M) SDE: the multistep data-prediction solver of the reverse SDE in λ."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_pl.parameterization import DenoiserFn
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators, randn
from diffusion_pl.samplers.base import Sampler, denoise, progress_bar
from diffusion_pl.samplers.grids import LogSNRGrid
from diffusion_pl.samplers.multistep import schedule, step_order

__all__ = ["DPMSolverSDESampler", "sample_dpmpp_2m_sde"]


def check_eta(eta: float) -> None:
    """Refuse a negative or non-finite η (0 is the ODE, 1 the reverse SDE)."""
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0 (1: the reverse SDE), got {eta}")


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    eta: float = 1.0,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """DPM-Solver++(2M) SDE from t to s < t, h = λ_s − λ_t (λ = log α/σ), m₀ = x̂₀ now:

        x_s = (σ_s/σ_t) e^{−ηh} x_t − α_s φ m₀ − ½ α_s φ (m₀ − m₁)/r₀ + σ_s √(1 − e^{−2ηh}) z,

    with φ = e^{−(1+η)h} − 1, r₀ = h_prev/h and z ~ N(0, I); the first and last steps drop the
    (m₀ − m₁) term, as DPM-Solver++(2M) does. η = 0 is DPM-Solver++(2M) exactly; η = 1
    solves the reverse SDE (the noise the step removes is added back, as in DDPM).

    Shared arguments: as in :mod:`diffusion_pl.samplers.base`.

    Args:
        eta: η, the share of the reverse SDE's noise (0 ODE, 1 SDE).

    Reference: Lu et al. (2022b), "DPM-Solver++", Sec. 5 (the SDE solver), in the form of
    k-diffusion's ``sample_dpmpp_2m_sde`` (midpoint), rewritten from σ/α space into x space.
    """
    check_eta(eta)
    alpha, sigma, lam = schedule(path, ts)
    steps = len(ts) - 1
    x0s: list[Tensor] = []
    lams: list[float] = []
    for i in progress_bar(range(steps), steps, progress, "dpm-solver++ (2M) SDE"):
        x0s.append(denoise(denoiser, x, ts[i]).x0)
        lams.append(float(lam[i]))
        k = step_order(2, i, steps, lams, float(sigma[i + 1]))
        h = float(lam[i + 1] - lam[i])
        a_s = float(alpha[i + 1])
        phi = math.expm1(-(1.0 + eta) * h)
        kept = math.exp(-eta * h) if eta > 0 else 1.0  # (0 · ∞ is no number: h = ∞ at α = 0)
        x = float(sigma[i + 1] / sigma[i]) * kept * x - a_s * phi * x0s[-1]
        if k >= 2:
            r0 = float(lam[i] - lam[i - 1]) / h
            x = x - 0.5 * a_s * phi * (x0s[-1] - x0s[-2]) / r0
        if eta > 0 and float(sigma[i + 1]) > 0:
            noise = float(sigma[i + 1]) * math.sqrt(-math.expm1(-2.0 * eta * h))
            x = x + noise * randn(x.shape, generator, device=x.device, dtype=x.dtype)
        del x0s[:-1], lams[:-1]
    return x


class DPMSolverSDESampler(Sampler, steps=20):
    """DPM-Solver++(2M) SDE: multistep data-prediction solver of the reverse SDE.

    On a log-SNR grid, like :class:`~diffusion_pl.samplers.DPMSolverSampler` (``eta`` 0).
    """

    name = "dpmpp_2m_sde"
    solver = staticmethod(sample_dpmpp_2m_sde)
    default_grid = LogSNRGrid()
    randomness = "stochastic"

    def validate(self) -> None:
        check_eta(self.eta)
