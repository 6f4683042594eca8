"""Adaptive RK45, the RK45 PF-ODE sampler and PF-ODE likelihoods against exact answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from diffusion_pl.formulations import ScoreSDE
from diffusion_pl.likelihood import (
    bits_per_dim,
    check_t_eps,
    dequantize,
    discrete_nll,
    log_likelihood,
)
from diffusion_pl.mixture import GaussianMixtureSpec
from diffusion_pl.oracle import GaussianMixtureOracle
from diffusion_pl.parameterization import Prediction
from diffusion_pl.paths import DDPMPath, LinearPath, NoisePath, VEPath, VPCosinePath, VPLinearPath
from diffusion_pl.samplers.rk45 import RK45Sampler, solve_ode_rk45

MEANS = torch.tensor([[-4.0, 0.0], [4.0, 0.0]], dtype=torch.float64)
STDS = torch.tensor([0.5, 0.5], dtype=torch.float64)
WEIGHTS = torch.tensor([0.8, 0.2], dtype=torch.float64)
MIXTURE = GaussianMixtureSpec.isotropic(MEANS.tolist(), STDS.tolist(), WEIGHTS.tolist())
ORACLE_PATHS = [VPLinearPath(), VEPath(sigma_min=0.01, sigma_max=50.0), LinearPath()]
X0 = torch.tensor([[1.0, 0.5], [2.0, -1.0], [-0.3, 3.0]], dtype=torch.float64)


class CountingDenoiser:
    """Counts calls of a denoiser (what ``Denoiser.nfe`` does for networks)."""

    def __init__(self, denoiser: GaussianMixtureOracle) -> None:
        self.denoiser, self.nfe = denoiser, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float) -> Prediction:
        self.nfe += 1
        return self.denoiser(x, t)


def _rotation(omega: float):
    return lambda y, t: omega * torch.stack([-y[:, 1], y[:, 0]], 1)


# ------------------------------------------------------------------------------------ RK45


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_rk45_exponential_decay(direction: str) -> None:
    t0, t1 = (0.0, 2.0) if direction == "forward" else (2.0, 0.0)
    exact = X0 * math.exp(-(t1 - t0))
    nfes = []
    for tol in (1e-3, 1e-5, 1e-7):
        y, nfe = solve_ode_rk45(lambda y, t: -y, X0, t0, t1, rtol=tol, atol=tol)
        # Global error stays within a small multiple of the local tolerance.
        assert (y - exact).abs().max() < 20 * tol * (1 + exact.abs().max())
        nfes.append(nfe)
    assert nfes[0] < nfes[1] < nfes[2], nfes


def test_rk45_rotation_and_time_dependence() -> None:
    omega, t1 = 3.0, 2.0
    c, s = math.cos(omega * t1), math.sin(omega * t1)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    nfes = []
    for tol in (1e-4, 1e-6):
        y, nfe = solve_ode_rk45(_rotation(omega), X0, 0.0, t1, rtol=tol, atol=tol)
        assert (y - X0 @ rot.T).abs().max() < 20 * tol * 3.5  # |x| ≤ 3.5, ~1 turn
        nfes.append(nfe)
    assert nfes[0] < nfes[1]
    # Non-autonomous: dy/dt = 2t y, y(1) = y(0) e; the drift sees the right times.
    y, _ = solve_ode_rk45(lambda y, t: 2 * t * y, X0, 0.0, 1.0, progress=True)
    torch.testing.assert_close(y, X0 * math.e, rtol=1e-4, atol=0)


def test_rk45_matches_scipy_step_for_step() -> None:
    integrate = pytest.importorskip("scipy.integrate")
    omega, tol = 3.0, 1e-6

    def rhs(t, y):
        y = torch.from_numpy(y).view(-1, 2)
        return _rotation(omega)(y, t).numpy().ravel()

    start = X0.numpy().ravel()
    ref = integrate.solve_ivp(rhs, (1.5, -0.5), start, method="RK45", rtol=tol, atol=tol)
    y, nfe = solve_ode_rk45(_rotation(omega), X0, 1.5, -0.5, rtol=tol, atol=tol)
    assert nfe == ref.nfev
    torch.testing.assert_close(y.ravel(), torch.from_numpy(ref.y[:, -1]), rtol=0, atol=1e-12)


def test_rk45_float32_first_step_and_max_steps() -> None:
    y, nfe = solve_ode_rk45(lambda y, t: -y, X0.float(), 0.0, 1.0, first_step=0.1)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, X0.float() * math.exp(-1), rtol=1e-4, atol=1e-5)
    assert (nfe - 1) % 6 == 0  # no step-size probe when first_step is given
    assert solve_ode_rk45(lambda y, t: -y, X0, 0.5, 0.5) == (X0, 0)
    with pytest.raises(RuntimeError, match="not reached in 2 steps"):
        solve_ode_rk45(lambda y, t: -y, X0, 0.0, 1.0, rtol=1e-9, atol=1e-9, max_steps=2)


# --------------------------------------------------------------------------- RK45 sampler


@pytest.mark.slow
@pytest.mark.parametrize("path", ORACLE_PATHS, ids=lambda p: type(p).__name__)
def test_rk45_sampler_reproduces_unequal_mixture(path: NoisePath) -> None:
    oracle = GaussianMixtureOracle(path, MIXTURE)
    counted = CountingDenoiser(oracle)
    x = RK45Sampler()(counted, path, (4000, 2), generator=torch.Generator().manual_seed(0))
    print(f"RK45Sampler on {type(path).__name__}: NFE = {counted.nfe}")
    assert 20 < counted.nfe < 300
    assert torch.isfinite(x).all()
    labels = oracle.mixture.assign(x)
    weights = torch.bincount(labels, minlength=2).double() / len(x)
    torch.testing.assert_close(weights, WEIGHTS, atol=0.02, rtol=0)
    for k in range(2):
        xk = x[labels == k]
        torch.testing.assert_close(xk.mean(0), MEANS[k], atol=0.05, rtol=0)
        torch.testing.assert_close(xk.std(0), STDS[k].expand(2), atol=0.05, rtol=0)


def test_rk45_sampler_config_round_trip() -> None:
    sampler = RK45Sampler(rtol=1e-4, atol=1e-6, denoise_final=False)
    assert vars(sampler) == {"rtol": 1e-4, "atol": 1e-6, "denoise_final": False}
    assert vars(type(sampler)(**vars(sampler))) == vars(sampler)
    assert repr(sampler) == "RK45Sampler(rtol=0.0001, atol=1e-06, denoise_final=False)"
    with pytest.raises(ValueError, match="must be > 0"):
        RK45Sampler(rtol=0.0)


# ----------------------------------------------------------------------------- likelihood


@pytest.mark.slow
@pytest.mark.parametrize("path", ORACLE_PATHS, ids=lambda p: type(p).__name__)
def test_exact_trace_likelihood_matches_oracle(path: NoisePath) -> None:
    oracle = GaussianMixtureOracle(path, MIXTURE)
    x, _ = oracle.mixture.sample(48, generator=torch.Generator().manual_seed(1))
    x = torch.cat([x, torch.tensor([[0.0, 0.0], [-4.0, 2.5]], dtype=torch.float64)])
    counted = CountingDenoiser(oracle)
    # The exact p_{t_max} isolates the ODE from the prior's approximation N(0, σ_max² I).
    ll, nfe = log_likelihood(
        counted,
        path,
        x,
        divergence="exact",
        prior_logp=lambda y: oracle.log_prob(y, path.t_max),
    )
    print(f"exact-trace likelihood on {type(path).__name__}: NFE = {nfe}")
    assert nfe == counted.nfe
    expected = oracle.log_prob(x, path.t_min)  # the ODE starts at t_eps = t_min
    torch.testing.assert_close(ll, expected, rtol=0.01, atol=0)
    if isinstance(path, LinearPath):  # α_1 = 0: the default N(0, I) prior is exact, t_eps = 0
        ll_prior, _ = log_likelihood(oracle, path, x, divergence="exact", t_eps=0.0)
        torch.testing.assert_close(ll_prior, oracle.log_prob(x, 0.0), rtol=0.01, atol=0)


def _correlated_mixture() -> tuple[NoisePath, GaussianMixtureOracle, torch.Tensor]:
    """Means on the diagonal and correlated covariances: ∂f/∂x has off-diagonal entries, so a
    single Hutchinson probe is noisy (std ≈ 1 nat here)."""
    path = VPLinearPath()
    covs = torch.tensor([[[0.5, 0.3], [0.3, 0.4]], [[0.3, -0.1], [-0.1, 0.6]]])
    means = torch.tensor([[-2.0, -2.0], [2.0, 2.0]])
    oracle = GaussianMixtureOracle(path, GaussianMixtureSpec(means, covs, torch.tensor([0.7, 0.3])))
    x, _ = oracle.mixture.sample(16, generator=torch.Generator().manual_seed(2))
    return path, oracle, x


def _hutchinson_errors(
    path: NoisePath, oracle: GaussianMixtureOracle, x: Tensor, probe: str, probes: int
) -> Tensor:
    """Hutchinson log-likelihood minus the exact one, ``[probes, N]`` (probes seeded 3)."""
    exact, _ = log_likelihood(oracle, path, x, divergence="exact")
    estimate, _ = log_likelihood(
        oracle,
        path,
        x.repeat(probes, 1),
        divergence="hutchinson",
        probe=probe,
        generator=torch.Generator().manual_seed(3),
    )
    return estimate.view(probes, -1) - exact


@pytest.mark.slow
def test_hutchinson_rademacher_brackets_exact_trace() -> None:
    """In 2-D, zᵀMz = tr M + 2 z₁z₂ M₁₂ with M = ∫ ∂f/∂x dt: a Rademacher probe gives one of
    two values whose midpoint is exactly the trace, so the check needs no Monte-Carlo slack."""
    path, oracle, x = _correlated_mixture()
    diff = _hutchinson_errors(path, oracle, x, "rademacher", probes=16)
    high, low = diff.max(0).values, diff.min(0).values
    assert (high > 0.05).all() and (low < -0.05).all()  # both signs seen, and they matter
    torch.testing.assert_close(high + low, torch.zeros_like(high), atol=1e-3, rtol=0)
    # The probe comes from the generator only: same seed, same estimate.
    first, second = (
        log_likelihood(oracle, path, x[:4], generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    )
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.slow
def test_hutchinson_gaussian_agrees_with_exact_in_mean() -> None:
    """Over 128 Gaussian probes × 16 points the mean error lies within 4 standard errors of
    zero: a tolerance of about 0.14 nats (≈ 6 % of the mean |log p| ≈ 2.3)."""
    path, oracle, x = _correlated_mixture()
    diff = _hutchinson_errors(path, oracle, x, "gaussian", probes=128)
    stderr = diff.std() / math.sqrt(diff.numel())
    print(f"Hutchinson (gaussian): mean error {diff.mean():.4f} ± {stderr:.4f} nats")
    assert 1e-3 < stderr < 0.04  # the probes differ, and the test has power
    assert diff.mean().abs() < 4 * stderr


def test_likelihood_rejects_unknown_options() -> None:
    path = LinearPath()
    oracle = GaussianMixtureOracle(path, MIXTURE)
    with pytest.raises(ValueError, match="divergence"):
        log_likelihood(oracle, path, X0, divergence="skilling")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probe"):
        log_likelihood(oracle, path, X0, probe="sphere")  # type: ignore[arg-type]


def test_score_sde_t_eps_gives_the_exact_density_there() -> None:
    """From score-SDE's t_ε = 1e-5 (σ ≈ 1e-3 on the VP path: the data nearly unblurred) the ODE
    reproduces log p_{1e-5} of the mixture to 1% (the exact p_{t_max} isolates the ODE)."""
    path, t_eps = VPLinearPath(), ScoreSDE.likelihood_t_eps
    assert t_eps == 1e-5
    oracle = GaussianMixtureOracle(path, MIXTURE)
    x, _ = oracle.mixture.sample(16, generator=torch.Generator().manual_seed(6))
    ll, _ = log_likelihood(oracle, path, x, divergence="exact", t_eps=t_eps,
                           prior_logp=lambda y: oracle.log_prob(y, path.t_max))  # fmt: skip
    torch.testing.assert_close(ll, oracle.log_prob(x, t_eps), rtol=0.01, atol=0)


@pytest.mark.parametrize(
    ("path", "t_eps", "match"),
    [
        (VPLinearPath(), 0.0, r"t_eps=0.0: the probability-flow ODE of VPLinearPath is singular"),
        (VPCosinePath(), 0.0, r"VPCosinePath is singular there \(α = 1, σ = 0, dσ/dt = inf\)"),
        (DDPMPath(), 1e-5, r"below t_min=0.001, the first of the 1000 discrete times"),
        (LinearPath(), 1.0, r"t_eps=1.0 is outside \[0, t_max=1.0\) of LinearPath"),
        (VEPath(), -0.1, r"t_eps=-0.1 is outside"),
        (LinearPath(), 0.0, None),
        (VEPath(), 0.0, None),
        (VPLinearPath(), 1e-5, None),
        (DDPMPath(), 1e-3, None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, NoisePath) else str(v),
)  # fmt: skip
def test_t_eps_must_lie_where_the_ode_is_defined(
    path: NoisePath, t_eps: float, match: str | None
) -> None:
    if match is None:
        check_t_eps(path, t_eps)
        return
    with pytest.raises(ValueError, match=match):
        check_t_eps(path, t_eps)


# ------------------------------------------------------------------- dequantization, bpd


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_uniform_density_over_dequantized_cube_gives_log2_levels(levels: int) -> None:
    shape = (5, 3, 4, 4)
    d, a = 3 * 4 * 4, 2.0 / (levels - 1)
    k = torch.randint(0, levels, shape, generator=torch.Generator().manual_seed(4))
    x = 2 * k.double() / (levels - 1) - 1
    x_deq = dequantize(x, levels, generator=torch.Generator().manual_seed(5))
    # Every dequantized point lies in its level's cell; the cells tile a cube of side a·L.
    torch.testing.assert_close(x_deq, x, atol=a / 2, rtol=0)
    assert torch.equal(torch.floor((x_deq + 1) / a + 0.5).long(), k)
    uniform_ll = torch.full((5,), -d * math.log(a * levels), dtype=torch.float64)
    bpd = bits_per_dim(uniform_ll, shape, levels)
    torch.testing.assert_close(bpd, torch.full_like(bpd, math.log2(levels)))
    # log p = 0 in [−1, 1] space costs −log₂ a = log₂((L − 1) / 2) bits: 3 bits for L = 17.
    zero = bits_per_dim(torch.zeros(5, dtype=torch.float64), shape, levels)
    torch.testing.assert_close(zero, torch.full_like(zero, math.log2((levels - 1) / 2)))
    with pytest.raises(ValueError, match="batch shape"):
        bits_per_dim(uniform_ll, shape[1:], levels)


def test_dequantized_bound_against_discrete_probabilities() -> None:
    """A factorized N(0, s²) model: E_u[−log p(x_deq)] − D log a has a closed form and must
    upper-bound −log P(k) = −Σ log(Φ(upper) − Φ(lower)), tightly for a smooth density."""
    levels, s, a = 17, 0.7, 2.0 / 16
    k = torch.tensor([[0, 3, 8, 12, 16], [5, 5, 9, 1, 14]])
    x = 2 * k.double() / (levels - 1) - 1
    normal = torch.distributions.Normal(0.0, s)
    exact_nll = -torch.log(normal.cdf(x + a / 2) - normal.cdf(x - a / 2)).sum(1)
    cross_entropy = 0.5 * math.log(2 * math.pi * s**2) + (x**2 + a**2 / 12) / (2 * s**2)
    bound = discrete_nll(-cross_entropy.sum(1), x.shape, levels)
    assert (bound >= exact_nll).all()
    assert (bound - exact_nll).max() < 2 * 5 * a**2 / (24 * s**2)  # gap ≈ D a² / (24 s²)
    # Monte Carlo over dequantization noise reproduces the closed-form expectation.
    g = torch.Generator().manual_seed(6)
    draws = torch.stack(
        [normal.log_prob(dequantize(x, levels, generator=g)).sum(1) for _ in range(4000)]
    )
    mc = discrete_nll(draws.mean(0), x.shape, levels)
    torch.testing.assert_close(mc, bound, atol=3e-3, rtol=0)
    nats = bits_per_dim(-cross_entropy.sum(1), x.shape, levels) * 5 * math.log(2)
    torch.testing.assert_close(nats, bound)
