"""ER-SDE-Solver against exact answers: at η = 0 its first order is DDIM and orders 1–3
converge at their order to the exact flow of Gaussian data; at η = 1 it samples the Gaussian
mixture whose score is known in closed form, and the moments of a Gaussian converge weakly."""

from __future__ import annotations

import pytest
import torch
from mixture_checks import IsotropicMixtureOracle, N, check_mixture, mixture_oracle

from diffusion_pl.mixture import GaussianMixtureSpec
from diffusion_pl.paths import DDPMPath, LinearPath, NoisePath, VEPath, VPLinearPath
from diffusion_pl.samplers import SAMPLERS
from diffusion_pl.samplers.er_sde import ERSDESampler
from diffusion_pl.teleport import DataMoments

pytestmark = pytest.mark.usefixtures("one_thread")

GAUSSIAN = GaussianMixtureSpec.isotropic([[0.5]], 0.3)
"""Data N(0.5, 0.3²) in 1-D: its probability-flow ODE is solved exactly by the teleport map."""
EXACT = DataMoments(*(torch.tensor(v, dtype=torch.float64) for v in ([0.5], [0.09], [[1.0]])), 0)

CONTINUOUS = [VPLinearPath(), LinearPath(), VEPath()]


@pytest.mark.parametrize("path", CONTINUOUS, ids=type)
def test_first_order_ode_is_ddim(path: NoisePath) -> None:
    oracle = IsotropicMixtureOracle(path, GAUSSIAN)
    x = path.prior_sample((200, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler = ERSDESampler(steps=8, order=1, eta=0.0)
    ts = sampler.time_grid(path, "cpu")
    ddim = SAMPLERS["ddim"](steps=8, grid=sampler.default_grid)
    expected = ddim.solver(oracle, path, x, ts, **ddim.settings())
    out = sampler.solver(oracle, path, x, ts, **sampler.settings())
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


# Measured max errors against the exact flow, 16 → 32 → 64 steps (VP): order 1 0.131, 0.068,
# 0.035; order 2 0.041, 0.0098, 0.0023; order 3 0.022, 0.0027, 0.00032 (ratios ≈ 2, 4, 8).
@pytest.mark.parametrize("path", CONTINUOUS, ids=type)
@pytest.mark.parametrize("order", [1, 2, 3])
def test_ode_converges_at_its_order(path: NoisePath, order: int) -> None:
    """η = 0, 32 and 64 steps from the same 500 prior draws: the error against the exact
    Gaussian flow falls by at least 0.75 · 2^order when the steps double."""
    oracle = IsotropicMixtureOracle(path, GAUSSIAN)
    x = path.prior_sample((500, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = EXACT.carry(x, path, path.t_max, path.t_min)
    errors = []
    for steps in (32, 64):
        sampler = ERSDESampler(steps=steps, order=order, eta=0.0)
        out = sampler.solver(oracle, path, x, sampler.time_grid(path, "cpu"), **sampler.settings())
        errors.append(float((out - exact).abs().max()))
    assert errors[0] / errors[1] > 0.75 * 2**order, errors


@pytest.mark.parametrize("path", [VPLinearPath(), DDPMPath(), LinearPath(), VEPath()], ids=type)
def test_eta_one_reproduces_the_unequal_mixture(path: NoisePath) -> None:
    oracle = mixture_oracle(path)
    x = ERSDESampler(steps=50)(oracle, path, (N, 2), generator=torch.Generator().manual_seed(0))
    check_mixture(oracle, x)


# Weak convergence on N(0.5, 0.3²): every sample is Gaussian (the exact denoiser is linear), so
# the mean and variance say all; with 400,000 samples their Monte-Carlo errors are 4.7e-4 and
# 2.0e-4. Measured variance errors (seed 0): VP 2.7e-2 at 8 steps, 4.4e-4 at 32 (VE 2.1e-2,
# 3.5e-4): 4× the steps, 60× less error.
@pytest.mark.parametrize("path", [VPLinearPath(), VEPath()], ids=type)
def test_weak_convergence_on_the_moments_of_a_gaussian(path: NoisePath) -> None:
    oracle = IsotropicMixtureOracle(path, GAUSSIAN)
    errors = []
    for steps in (8, 32):
        x = ERSDESampler(steps=steps)(
            oracle, path, (400_000, 1), generator=torch.Generator().manual_seed(0)
        )
        assert abs(float(x.mean()) - 0.5) < 5 * 4.7e-4
        errors.append(abs(float(x.var()) - 0.09))
    assert errors[1] < 1.5e-3
    assert errors[0] > 4 * errors[1]


def test_bad_settings_are_refused_and_eta_zero_is_deterministic() -> None:
    with pytest.raises(ValueError, match="er_sde order must be 1, 2 or 3, got 4"):
        ERSDESampler(order=4)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        ERSDESampler(eta=-1.0)
    assert ERSDESampler(eta=0.0).is_deterministic() and not ERSDESampler().is_deterministic()
