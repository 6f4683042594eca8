"""PF-ODE samplers fed the exact Gaussian-mixture oracle reproduce the mixture."""

from __future__ import annotations

import pytest
import torch
from mixture_checks import MIXTURE, N, check_mixture, mixture_oracle

from diffusion_pl.oracle import GaussianMixtureOracle
from diffusion_pl.paths import LinearPath, NoisePath, VEPath, VPCosinePath, VPLinearPath
from diffusion_pl.samplers import EulerSampler, HeunSampler, Sampler


def test_oracle_score_is_gradient_of_log_prob() -> None:
    oracle = GaussianMixtureOracle(VPLinearPath(), MIXTURE)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    for t in (0.01, 0.3, 0.9):
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(oracle.log_prob(xr, t).sum(), xr)
        torch.testing.assert_close(oracle.score(x, t), grad)
        # Tweedie: E[x0|x] = (x + σ² s)/α.
        tt = torch.tensor(t, dtype=torch.float64)
        a, s = oracle.path.alpha(tt), oracle.path.sigma(tt)
        torch.testing.assert_close(
            oracle(x, t).x0, (x + s**2 * oracle.score(x, t)) / a, atol=1e-5, rtol=0
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sampler", "path"),
    [
        (EulerSampler(steps=200), LinearPath()),
        (HeunSampler(steps=40), LinearPath()),
        (HeunSampler(steps=60), VPLinearPath()),
        (HeunSampler(steps=60), VPCosinePath()),
        # σ_max must dwarf the data mean (−2.4 here): with σ_max = 20 the N(0, σ_max²) prior
        # is off enough to give weights 0.777 / 0.223; with 50 they come out right.
        (HeunSampler(steps=60), VEPath(sigma_min=0.01, sigma_max=50.0)),
    ],
    ids=lambda v: type(v).__name__,
)
def test_ode_sampler_reproduces_unequal_mixture(sampler: Sampler, path: NoisePath) -> None:
    oracle = mixture_oracle(path)
    x = sampler(oracle, path, (N, 2), generator=torch.Generator().manual_seed(0))
    check_mixture(oracle, x)


def test_same_seed_same_samples_and_bad_steps() -> None:
    path = LinearPath()
    oracle = mixture_oracle(path)
    a = EulerSampler(steps=5)(oracle, path, (8, 2), generator=torch.Generator().manual_seed(3))
    b = EulerSampler(steps=5)(oracle, path, (8, 2), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        HeunSampler(steps=0)
