"""Stochastic samplers (reverse SDE, PC, DDPM, DDIM, Langevin) fed the exact mixture oracle."""

from __future__ import annotations

import pytest
import torch
from mixture_checks import (
    MEANS,
    MIXTURE,
    N,
    check_mixture,
    mixture_oracle,
    mode_weights,
    seeded,
)

from diffusion_pl.oracle import GaussianMixtureOracle
from diffusion_pl.paths import DDPMPath, LinearPath, NoisePath, VEPath, VPLinearPath
from diffusion_pl.samplers.ancestral import DDIMSampler, DDPMSampler, sample_ddim, sample_ddpm
from diffusion_pl.samplers.base import Sampler
from diffusion_pl.samplers.grids import uniform_time_grid
from diffusion_pl.samplers.langevin import AnnealedLangevinSampler, langevin_dynamics, score_at
from diffusion_pl.samplers.ode import sample_euler
from diffusion_pl.samplers.sde import EulerMaruyamaSampler, PCSampler, euler_maruyama_step

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fast_oracle_matches_general_oracle(path: NoisePath) -> None:
    fast, exact = mixture_oracle(path), GaussianMixtureOracle(path, MIXTURE)
    x = 3 * torch.randn(256, 2, dtype=torch.float64, generator=seeded(0))
    for t in (path.t_min, 0.3, 0.9, path.t_max):
        a, b = fast(x, t), exact(x, t)
        torch.testing.assert_close(a.x0, b.x0, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a.eps, b.eps, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fast.score(x, t), exact.score(x, t), rtol=1e-10, atol=1e-10)


# Step counts: about twice the smallest that passed on two seeds (EM and PC pass at 100,
# DDIM η=0 at 100, η=1 and DDPM's β̃ at ~100 with a thin margin on the std, which coarse
# ancestral steps shrink). NFE = steps (× (1 + corrector_steps) for PC) + 1 final denoise.
MIXTURE_CASES = [
    (EulerMaruyamaSampler(steps=500), VPLinearPath()),
    (EulerMaruyamaSampler(steps=500), VEPath()),
    (PCSampler(steps=200, snr=0.16), VEPath()),
    (PCSampler(steps=200, snr=0.01), VPLinearPath()),
    (PCSampler(steps=200, predictor=euler_maruyama_step, snr=0.16), VPLinearPath()),
    # Ho et al.'s grid: t_i = i/T for i = 1000 … 1, then the final denoising step t = 1 → 0.
    (DDPMSampler(steps=999), DDPMPath()),
    # A coarser, strided grid (every 9th step) with the β variance.
    (DDPMSampler(steps=111, variance="beta"), DDPMPath()),
    (DDPMSampler(steps=250), VPLinearPath()),
    (DDIMSampler(steps=100, eta=0.0), VPLinearPath()),
    (DDIMSampler(steps=100, eta=0.0), DDPMPath()),
    (DDIMSampler(steps=100, eta=0.0), LinearPath()),
    (DDIMSampler(steps=200, eta=1.0), VPLinearPath()),
    (DDIMSampler(steps=200, eta=1.0), DDPMPath()),
    (DDIMSampler(steps=200, eta=1.0), LinearPath()),
    # NCSNv2's σ_1 ≈ the largest distance between data points (≈ 8–10 here). Getting the mode
    # weights right needs ~3000 Langevin steps: the paper's L = 10, T = 100 gives 0.75 / 0.25.
    (AnnealedLangevinSampler(steps=20, steps_per_level=150), VEPath(sigma_min=0.01, sigma_max=10)),
]


@pytest.mark.parametrize(
    ("sampler", "path"),
    MIXTURE_CASES,
    ids=[f"{s!r}-{type(p).__name__}" for s, p in MIXTURE_CASES],
)
def test_sampler_reproduces_unequal_mixture(sampler: Sampler, path: NoisePath) -> None:
    oracle = mixture_oracle(path)
    x = sampler(oracle, path, (N, 2), generator=seeded(0))
    check_mixture(oracle, x)


def test_plain_langevin_at_small_noise_misses_the_weights() -> None:
    """Single-level Langevin with the exact score keeps the weights of its start, not 0.8/0.2.

    Chains started from N(0, 5² I) settle in the mode whose basin (x_1 < 0.04) they start in,
    about half each, and never cross; within each mode they sample correctly.
    """
    path = VEPath()
    oracle = mixture_oracle(path)
    t = path.time_of_sigma(torch.tensor(0.05, dtype=torch.float64))
    x = 5 * torch.randn(N, 2, dtype=torch.float64, generator=seeded(0))
    x = langevin_dynamics(score_at(oracle, path, t), x, 0.01, 500, generator=seeded(1))
    weights = mode_weights(oracle, x)
    assert weights[0] < 0.65, weights
    # Within a mode the chain is right: mean μ_k and std √(0.5² + 0.05²).
    labels = oracle.mixture.assign(x)
    for k in range(2):
        torch.testing.assert_close(x[labels == k].mean(0), MEANS[k], atol=0.05, rtol=0)
        torch.testing.assert_close(
            x[labels == k].std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.03, rtol=0
        )


@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("i", [1000, 500, 2, 1])
def test_ddpm_step_is_ho_algorithm_2(variance: str, i: int) -> None:
    """One step t = i/T → (i − 1)/T equals Ho et al.'s update with ᾱ and β, in float64."""
    path = DDPMPath()
    oracle = mixture_oracle(path)
    x = 2 * torch.randn(16, 2, dtype=torch.float64, generator=seeded(0))
    t, s = i / path.num_steps, (i - 1) / path.num_steps
    ts = torch.tensor([t, s], dtype=torch.float64)
    out = sample_ddpm(oracle, path, x, ts, variance=variance, generator=seeded(1))

    beta, abar, abar_prev = path.betas[i - 1], path.alpha_bar[i], path.alpha_bar[i - 1]
    eps = oracle(x, t).eps
    expected = (x - beta / torch.sqrt(1 - abar) * eps) / torch.sqrt(1 - beta)
    if i > 1:  # Ho et al.: z = 0 at t = 1
        var = beta * (1 - abar_prev) / (1 - abar) if variance == "posterior" else beta
        z = torch.randn(x.shape, generator=seeded(1), dtype=torch.float64)
        expected = expected + torch.sqrt(var) * z
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_ddpm_grid_of_t_minus_one_steps_visits_every_training_step() -> None:
    path = DDPMPath()
    ts = uniform_time_grid(path, path.num_steps - 1)
    expected = torch.arange(path.num_steps, 0, -1, dtype=torch.float64) / path.num_steps
    torch.testing.assert_close(ts, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "path", [VPLinearPath(), VEPath(), LinearPath()], ids=lambda v: type(v).__name__
)
def test_ddim_eta_one_is_ddpm_posterior(path: NoisePath) -> None:
    oracle = mixture_oracle(path)
    ts = uniform_time_grid(path, 20)
    x = path.prior_sample((64, 2), generator=seeded(0)).double()
    a = sample_ddim(oracle, path, x, ts, eta=1.0, generator=seeded(1))
    b = sample_ddpm(oracle, path, x, ts, variance="posterior", generator=seeded(1))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_ddim_eta_zero_on_linear_path_is_euler() -> None:
    path = LinearPath()
    oracle = mixture_oracle(path)
    ts = uniform_time_grid(path, 15)
    x = path.prior_sample((64, 2), generator=seeded(0)).double()
    ddim, euler = sample_ddim(oracle, path, x, ts, eta=0.0), sample_euler(oracle, path, x, ts)
    torch.testing.assert_close(ddim, euler, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sample", [sample_ddpm, sample_ddim])
def test_clip_x0_bounds_the_final_step(sample) -> None:
    path = VPLinearPath()
    oracle = mixture_oracle(path)  # modes at ±4, so x̂_0 leaves [−1, 1]
    x = torch.randn(64, 2, dtype=torch.float64, generator=seeded(0))
    out = sample(oracle, path, x, torch.tensor([0.5, 0.0], dtype=torch.float64), clip_x0=1.0)
    assert out.abs().max() <= 1.0
    assert sample(oracle, path, x, torch.tensor([0.5, 0.0], dtype=torch.float64)).abs().max() > 2


def test_ddim_eta_zero_is_deterministic() -> None:
    path = VPLinearPath()
    oracle = mixture_oracle(path)
    x = path.prior_sample((32, 2), generator=seeded(0))
    ts = uniform_time_grid(path, 10)
    a = sample_ddim(oracle, path, x, ts, eta=0.0, generator=seeded(1))
    b = sample_ddim(oracle, path, x, ts, eta=0.0, generator=seeded(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "sampler", [EulerMaruyamaSampler(), PCSampler()], ids=lambda v: type(v).__name__
)
def test_reverse_sde_refuses_rectified_flow(sampler: Sampler) -> None:
    with pytest.raises(ValueError, match=r"infinite at t_max.*ODE sampler .*DDIM"):
        sampler.check(LinearPath())
    for path in (VPLinearPath(), VEPath(), DDPMPath()):
        sampler.check(path)


def test_annealed_langevin_refuses_zero_noise_level() -> None:
    with pytest.raises(ValueError, match="σ = 0"):
        AnnealedLangevinSampler().check(LinearPath())
    AnnealedLangevinSampler(steps=10).check(VEPath())


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(
        ValueError, match=r"predictor must be a step function.*reverse_diffusion_step"
    ):
        PCSampler(predictor="reverse_diffusion")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="variance"):
        DDPMSampler(variance="learned")
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(eta=-0.1)
    with pytest.raises(ValueError, match="steps_per_level"):
        AnnealedLangevinSampler(steps_per_level=0)
