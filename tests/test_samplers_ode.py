"""PF-ODE samplers fed the exact Gaussian-mixture oracle reproduce the mixture."""

from __future__ import annotations

import pytest
import torch

from diffusion_pl.oracle import GaussianMixtureOracle
from diffusion_pl.paths import LinearPath, NoisePath, VEPath, VPCosinePath, VPLinearPath
from diffusion_pl.samplers import EulerSampler, HeunSampler, Sampler

MEANS = torch.tensor([[-4.0, 0.0], [4.0, 0.0]], dtype=torch.float64)
STDS = torch.tensor([0.5, 0.5], dtype=torch.float64)
WEIGHTS = torch.tensor([0.8, 0.2], dtype=torch.float64)
N = 4000


def _check_mixture(oracle: GaussianMixtureOracle, x: torch.Tensor) -> None:
    """Mode weights within ±2 points; per-mode mean within 0.05 and std within 10 %."""
    assert torch.isfinite(x).all()
    labels = oracle.assign(x)
    weights = torch.bincount(labels, minlength=2).double() / len(x)
    torch.testing.assert_close(weights, WEIGHTS, atol=0.02, rtol=0)
    for k in range(2):
        xk = x[labels == k]
        torch.testing.assert_close(xk.mean(0), MEANS[k], atol=0.05, rtol=0)
        torch.testing.assert_close(xk.std(0), STDS[k].expand(2), atol=0.05, rtol=0)


def test_oracle_score_is_gradient_of_log_prob() -> None:
    oracle = GaussianMixtureOracle(VPLinearPath(), MEANS, STDS, WEIGHTS)
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
    oracle = GaussianMixtureOracle(path, MEANS, STDS, WEIGHTS)
    x = sampler(oracle, path, (N, 2), generator=torch.Generator().manual_seed(0))
    _check_mixture(oracle, x)


def test_same_seed_same_samples_and_bad_steps() -> None:
    path = LinearPath()
    oracle = GaussianMixtureOracle(path, MEANS, STDS, WEIGHTS)
    a = EulerSampler(steps=5)(oracle, path, (8, 2), generator=torch.Generator().manual_seed(3))
    b = EulerSampler(steps=5)(oracle, path, (8, 2), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        HeunSampler(steps=0)
