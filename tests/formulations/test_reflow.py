"""Reflow pairs: Euler through the flow, and the straightness of Liu et al. (2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_pl.parameterization import Prediction
from diffusion_pl.paths import LinearPath
from diffusion_pl.reflow import flow_pairs, straightness
from diffusion_pl.samplers import DenoiserFn, sample_euler, uniform_time_grid

PATH = LinearPath()


def _gaussian(mean: list[float], std: float) -> DenoiserFn:
    """The exact denoiser of data N(μ, s² I) on the linear path: with c = α² s² + σ²,
    x̂_0 = μ + (α s² / c)(x − α μ) and ε̂ = (σ / c)(x − α μ)."""
    mu = torch.tensor(mean, dtype=torch.float64)

    def denoiser(x: Tensor, t: Tensor) -> Prediction:
        alpha, sigma = PATH.alpha(t)[:, None], PATH.sigma(t)[:, None]
        c, diff = alpha**2 * std**2 + sigma**2, x - alpha * mu
        return Prediction(x0=mu + alpha * std**2 / c * diff, eps=sigma / c * diff)

    return denoiser


def _noise(n: int) -> Tensor:
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_pairs_are_the_euler_samples() -> None:
    denoiser, z = _gaussian([1.0, 0.0], 0.5), _noise(16)
    x, _ = flow_pairs(denoiser, PATH, z, 7)
    expected = sample_euler(denoiser, PATH, z, uniform_time_grid(PATH, 7))
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


def test_straightness_of_a_gaussian_flow() -> None:
    """Data N(0, s² I): the flow is x_t = r(t) z with r(t)² = (1 − t)² s² + t², so
    S = E[z²] (∫₀¹ r'(t)² dt − (r(1) − r(0))²); Euler's left sum is within O(1/steps)."""
    s, z = 0.5, _noise(64)
    t = torch.linspace(0, 1, 100_001, dtype=torch.float64)
    r = torch.sqrt((1 - t) ** 2 * s**2 + t**2)
    dr = (t - (1 - t) * s**2) / r
    expected = float(z.pow(2).mean()) * (float(torch.trapezoid(dr**2, t)) - (1 - s) ** 2)
    x, measured = flow_pairs(_gaussian([0.0, 0.0], s), PATH, z, 2000)
    assert abs(measured - expected) < 2e-3 * expected, (measured, expected)
    torch.testing.assert_close(x, s * z, rtol=0, atol=2e-3)


def test_a_straight_flow_has_zero_straightness() -> None:
    """All data at one point μ: every path x_t = (1 − t) μ + t z is straight (S = 0), and one
    Euler step lands on μ."""
    z, mu = _noise(8), torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    x, measured = flow_pairs(_gaussian([1.0, -2.0], 0.0), PATH, z, 1)
    torch.testing.assert_close(x, mu.expand(8, 2), rtol=0, atol=1e-12)
    assert measured < 1e-24
    velocity = z - mu
    assert straightness(z, x, [velocity, velocity], 1.0) < 1e-24
