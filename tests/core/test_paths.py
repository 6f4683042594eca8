"""Noise paths against closed forms: derivatives vs autograd, DDPM ᾱ, SDE coefficients."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_pl.paths import (
    DDPMPath,
    LinearPath,
    NoisePath,
    SubVPPath,
    VEPath,
    VPLinearPath,
    cosine_betas,
)
from diffusion_pl.randomness import sample_generators

T = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)


def test_derivatives_match_autograd(path: NoisePath) -> None:
    # DDPM is piecewise-linear in log ᾱ: probe between grid points, away from the kinks.
    t = (T * 1000).floor() / 1000 + 0.0004 if isinstance(path, DDPMPath) else T
    t = t.clone().requires_grad_(True)
    for value, derivative in ((path.alpha, path.d_alpha), (path.sigma, path.d_sigma)):
        (grad,) = torch.autograd.grad((value(t) + 0 * t).sum(), t)  # + 0·t: constant α
        torch.testing.assert_close(derivative(t.detach()), grad, rtol=1e-7, atol=1e-9)


def test_log_snr_and_sde_coefficients(path: NoisePath) -> None:
    a, s = path.alpha(T), path.sigma(T)
    torch.testing.assert_close(path.log_snr(T), torch.log(a**2 / s**2), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(path.f(T), path.d_alpha(T) / a)
    # g² = dσ²/dt − 2 f σ²: the forward SDE's marginal variance obeys dv/dt = 2 f v + g².
    torch.testing.assert_close(path.g2(T), 2 * s * path.d_sigma(T) - 2 * path.f(T) * s**2)


def test_vp_paths_preserve_variance() -> None:
    for path in (VPLinearPath(), DDPMPath(), DDPMPath(schedule=cosine_betas)):
        torch.testing.assert_close(path.alpha(T) ** 2 + path.sigma(T) ** 2, torch.ones_like(T))


def test_vp_linear_closed_form() -> None:
    path = VPLinearPath(beta_min=0.1, beta_max=20.0)
    t = torch.tensor([0.5], dtype=torch.float64)
    expected = math.exp(-0.25 * 0.25 * 19.9 - 0.5 * 0.5 * 0.1)
    assert float(path.alpha(t)) == pytest.approx(expected, rel=1e-12)
    # g² of VP is β(t) (Song et al. 2021, Eq. 11); f = −½ β(t).
    assert float(path.g2(t)) == pytest.approx(0.1 + 0.5 * 19.9, rel=1e-9)
    assert float(path.f(t)) == pytest.approx(-0.5 * (0.1 + 0.5 * 19.9), rel=1e-9)


def test_sub_vp_g2() -> None:
    path = SubVPPath()
    t = torch.tensor([0.3], dtype=torch.float64)
    beta = 0.1 + 0.3 * 19.9
    integral = 0.5 * 0.09 * 19.9 + 0.3 * 0.1
    # Song et al. (2021), Eq. 17: g² = β(t)(1 − e^{−2∫β}).
    assert float(path.g2(t)) == pytest.approx(beta * (1 - math.exp(-2 * integral)), rel=1e-9)


def test_ve_and_linear_closed_forms() -> None:
    ve = VEPath(sigma_min=0.01, sigma_max=50.0)
    assert float(ve.sigma(torch.tensor(0.0))) == pytest.approx(0.01)
    assert float(ve.sigma(torch.tensor(1.0))) == pytest.approx(50.0)
    t = torch.tensor([0.4], dtype=torch.float64)
    # g² = d σ²/dt for VE (f = 0).
    assert float(ve.g2(t)) == pytest.approx(2 * float(ve.sigma(t)) ** 2 * math.log(5000), rel=1e-9)
    torch.testing.assert_close(ve.time_of_sigma(ve.sigma(T)), T)
    lin = LinearPath()
    # docs/math.md check: f = −1/(1−t), g² = 2t/(1−t) on the linear path.
    torch.testing.assert_close(lin.f(T), -1 / (1 - T))
    torch.testing.assert_close(lin.g2(T), 2 * T / (1 - T))


def test_ddpm_alpha_bar_values() -> None:
    path = DDPMPath(num_steps=1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(path.alpha_bar[1:], alpha_bar, rtol=1e-12, atol=0)
    # Known values of the DDPM linear schedule.
    assert float(path.alpha_bar[1]) == pytest.approx(0.9999, rel=1e-12)
    assert float(path.alpha_bar[1000]) == pytest.approx(4.0358e-5, rel=1e-3)
    i = torch.tensor([1, 10, 500, 1000])
    t = i.to(torch.float64) / 1000
    torch.testing.assert_close(path.alpha(t), alpha_bar[i - 1].sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(path.sigma(t), (1 - alpha_bar[i - 1]).sqrt(), rtol=1e-12, atol=0)


def test_ddpm_cosine_matches_continuous_cosine() -> None:
    path = DDPMPath(num_steps=1000, schedule=cosine_betas)
    s = 0.008
    i = torch.tensor([100, 500, 900], dtype=torch.float64)
    f = torch.cos(0.5 * math.pi * (i / 1000 + s) / (1 + s)) ** 2
    f0 = math.cos(0.5 * math.pi * s / (1 + s)) ** 2
    torch.testing.assert_close(path.alpha_bar[i.long()], f / f0, rtol=1e-9, atol=0)


def test_marginal_and_prior(path: NoisePath) -> None:
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = torch.ones_like(x0)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    expected = path.alpha(t)[:, None] * x0 + path.sigma(t)[:, None] * eps
    torch.testing.assert_close(path.marginal(x0, t, eps), expected)
    z = path.prior_sample((20000, 2), generator=torch.Generator().manual_seed(1))
    assert float(z.std()) == pytest.approx(path.prior_std(), rel=0.02)
    std = path.prior_std()
    expected_logp = (
        -0.5 * (z.double() ** 2).sum(1) / std**2 - 2 * math.log(std) - math.log(2 * math.pi)
    )
    torch.testing.assert_close(path.prior_logp(z.double()), expected_logp)


def test_bad_arguments_fail_early() -> None:
    with pytest.raises(ValueError, match="sigma_min"):
        VEPath(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match=r"beta schedule must be a function.*cosine_betas"):
        DDPMPath(schedule="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"must return 10 values in \(0, 1\)"):
        DDPMPath(num_steps=10, schedule=lambda n: torch.linspace(0.0, 0.02, n))
    with pytest.raises(ValueError, match="num_steps"):
        DDPMPath(num_steps=0)


def test_prior_sample_per_sample_generators_and_dtype(path: NoisePath) -> None:
    """Row k of the prior comes from generator k alone; ``dtype`` sets the sample's dtype."""
    z = path.prior_sample((3, 2), generator=sample_generators(5, 0, 3), dtype=torch.float64)
    assert z.dtype == torch.float64
    for k in range(3):
        row = path.prior_sample((1, 2), generator=sample_generators(5, k, 1), dtype=torch.float64)
        torch.testing.assert_close(z[k : k + 1], row, rtol=0, atol=0)
    one = torch.Generator().manual_seed(2)
    expected = path.prior_std() * torch.randn((3, 2), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(path.prior_sample((3, 2), generator=one), expected, rtol=0, atol=0)
