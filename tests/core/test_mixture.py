"""The Gaussian mixture (validation, sampling, densities) and the oracle built from it."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from diffusion_pl.mixture import GaussianMixtureSpec
from diffusion_pl.oracle import GaussianMixtureOracle
from diffusion_pl.paths import LinearPath, NoisePath, VEPath, VPLinearPath

MEANS = torch.tensor([[-2.0, -2.0], [2.0, 2.0]], dtype=torch.float64)
COVS = torch.tensor([[[0.5, 0.3], [0.3, 0.4]], [[0.3, -0.1], [-0.1, 0.6]]], dtype=torch.float64)
WEIGHTS = torch.tensor([0.7, 0.3], dtype=torch.float64)
CORRELATED = GaussianMixtureSpec(MEANS, COVS, WEIGHTS)
PATHS = [VPLinearPath(), VEPath(), LinearPath()]


def _reference(alpha: float, sigma: float) -> MixtureSameFamily:
    """torch.distributions' law of α x_0 + σ ε for the correlated mixture."""
    covs = alpha**2 * COVS + sigma**2 * torch.eye(2, dtype=torch.float64)
    return MixtureSameFamily(Categorical(WEIGHTS), MultivariateNormal(alpha * MEANS, covs))


def test_isotropic_builds_sigma_squared_identity_and_gives_back_the_stds() -> None:
    spec = GaussianMixtureSpec.isotropic([[0.0, 0.0, 0.0], [3.0, 3.0, 3.0]], [0.3, 0.7])
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(spec.covs, torch.stack([0.3**2 * eye, 0.7**2 * eye]), rtol=0, atol=0)
    assert spec.stds.tolist() == [0.3, 0.7]  # exact: √(fl(σ²)) = σ in binary floating point
    assert spec.weights.tolist() == [0.5, 0.5] and spec.dim == 3 and spec.num_components == 2


def test_stds_refuse_correlated_components() -> None:
    with pytest.raises(ValueError, match=r"only for isotropic components.*use covs"):
        _ = CORRELATED.stds


@pytest.mark.parametrize(
    ("covs", "match"),
    [
        (COVS[:, :1, :1], r"covs must be \[K, D, D\] = \[2, 2, 2\].*\[2, 1, 1\]"),
        (COVS.flip(-1), r"symmetric positive definite"),  # [[0.3, 0.5], [0.4, 0.3]]: not symmetric
        (-COVS, r"symmetric positive definite"),
    ],
)
def test_bad_covariances_fail_early(covs: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GaussianMixtureSpec(MEANS, covs, WEIGHTS)


def test_samples_have_the_mixture_moments() -> None:
    """n = 40,000: the standard errors are 0.0023 (weight), ≤ 0.0047 (mean) and ≤ 0.007 (cov)."""
    x, k = CORRELATED.sample(40_000, torch.Generator().manual_seed(0))
    assert x.dtype == torch.float64 and k.dtype == torch.int64
    torch.testing.assert_close((k == 0).double().mean(), WEIGHTS[0], atol=0.01, rtol=0)
    for j in range(2):
        torch.testing.assert_close(x[k == j].mean(0), MEANS[j], atol=0.02, rtol=0)
        torch.testing.assert_close(torch.cov(x[k == j].T), COVS[j], atol=0.03, rtol=0)


@pytest.mark.parametrize(("alpha", "sigma"), [(1.0, 0.0), (0.6, 0.8), (0.0, 1.0), (1.0, 3.0)])
def test_components_are_the_law_of_the_noised_mixture(alpha: float, sigma: float) -> None:
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batch = torch.ones(7, dtype=torch.float64)
    log_joint, solved = CORRELATED.components(x, alpha * batch, sigma * batch)
    reference = _reference(alpha, sigma)
    log_p = torch.logsumexp(log_joint, 1)
    torch.testing.assert_close(log_p, reference.log_prob(x), rtol=1e-12, atol=1e-12)
    covs = alpha**2 * COVS + sigma**2 * torch.eye(2, dtype=torch.float64)
    expected = torch.linalg.solve(covs, (x[:, None, :] - alpha * MEANS).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(solved, expected, rtol=1e-12, atol=1e-12)


def test_assign_picks_the_most_likely_component() -> None:
    x = torch.tensor([[-2.0, -1.5], [2.5, 2.0], [0.0, 0.0]], dtype=torch.float64)
    expected = torch.stack(
        [WEIGHTS[j].log() + MultivariateNormal(MEANS[j], COVS[j]).log_prob(x) for j in range(2)], 1
    ).argmax(1)
    assert CORRELATED.assign(x).tolist() == expected.tolist()
    assert expected[:2].tolist() == [0, 1]


@pytest.mark.parametrize("path", PATHS, ids=["vp", "ve", "linear"])
def test_oracle_log_prob_is_the_noised_mixture_on_every_path(path: NoisePath) -> None:
    oracle = GaussianMixtureOracle(path, CORRELATED)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    reference = _reference(float(path.alpha(t)), float(path.sigma(t)))
    torch.testing.assert_close(oracle.log_prob(x, t), reference.log_prob(x), rtol=1e-10, atol=0)
