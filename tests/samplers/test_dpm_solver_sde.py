"""DPM-Solver++(2M) SDE against exact answers: η = 0 is DPM-Solver++(2M), η = 1 samples the
Gaussian mixture whose score is known in closed form, and its moments on Gaussian data
converge at weak order ≥ 1 (about 1.7 measured)."""

from __future__ import annotations

import pytest
import torch
from mixture_checks import IsotropicMixtureOracle, N, check_mixture, mixture_oracle

from diffusion_pl.mixture import GaussianMixtureSpec
from diffusion_pl.paths import DDPMPath, LinearPath, NoisePath, VEPath, VPLinearPath
from diffusion_pl.samplers import DPMSolverSampler
from diffusion_pl.samplers.dpm_solver_sde import DPMSolverSDESampler

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("path", [VPLinearPath(), LinearPath(), VEPath()], ids=type)
def test_eta_zero_is_dpm_solver_2m(path: NoisePath) -> None:
    oracle, shape = mixture_oracle(path), (64, 2)
    ode = DPMSolverSampler(steps=8)(oracle, path, shape, generator=torch.Generator().manual_seed(0))
    sde = DPMSolverSDESampler(steps=8, eta=0.0)
    x = sde(oracle, path, shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, ode, rtol=0, atol=1e-12)


# 50 steps: every case passes on seeds 0-2 from 35 steps (at 20-30 some miss the std or weights).
@pytest.mark.parametrize("path", [VPLinearPath(), DDPMPath(), LinearPath(), VEPath()], ids=type)
def test_eta_one_reproduces_the_unequal_mixture(path: NoisePath) -> None:
    oracle = mixture_oracle(path)
    x = DPMSolverSDESampler(steps=50)(
        oracle, path, (N, 2), generator=torch.Generator().manual_seed(0)
    )
    check_mixture(oracle, x)


def test_a_bad_eta_is_refused() -> None:
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        DPMSolverSDESampler(eta=-0.5)


# Weak convergence on data N(0.5, 0.3²) in 1-D, whose exact denoiser is linear, so every sample
# is Gaussian and the first two moments say all. With n = 400,000 samples the Monte-Carlo
# standard errors are 0.3/√n = 4.7e-4 on the mean and 0.09·√(2/n) = 2.0e-4 on the variance.
# Measured variance errors (VP, seed 0): 6.9e-3 at 16 steps, 6.6e-4 at 64 (VE: 6.3e-3, 4.9e-4):
# a ratio of about 10 for 4× the steps, i.e. weak order about 1.7 on the variance.
@pytest.mark.parametrize("path", [VPLinearPath(), VEPath()], ids=type)
def test_weak_order_on_the_moments_of_a_gaussian(path: NoisePath) -> None:
    oracle = IsotropicMixtureOracle(path, GaussianMixtureSpec.isotropic([[0.5]], 0.3))
    errors = []
    for steps in (16, 64):
        x = DPMSolverSDESampler(steps=steps)(
            oracle, path, (400_000, 1), generator=torch.Generator().manual_seed(0)
        )
        assert abs(float(x.mean()) - 0.5) < 5 * 4.7e-4  # the mean is right at any step count
        errors.append(abs(float(x.var()) - 0.09))
    assert errors[1] < 1.5e-3  # within 7.5 Monte-Carlo errors of exact at 64 steps
    assert errors[0] > 4 * errors[1]  # weak order ≥ 1: 4× the steps, ≥ 4× less error
