"""The Gaussian teleport against exact answers: the flow of Gaussian data in closed form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mixture_checks import IsotropicMixtureOracle, seeded

from diffusion_pl.data.toy2d import Toy2D
from diffusion_pl.mixture import GaussianMixtureSpec
from diffusion_pl.oracle import GaussianMixtureOracle
from diffusion_pl.paths import LinearPath, NoisePath, VEPath, VPLinearPath
from diffusion_pl.samplers import SAMPLERS, CustomGrid
from diffusion_pl.samplers.gits import fine_grid, reference_trajectory
from diffusion_pl.samplers.ode import sample_heun
from diffusion_pl.samplers.tuning import tune_grid
from diffusion_pl.teleport import MAX_DIMENSIONS, DataMoments

MEAN = torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6, 0.1], [0.6, 2.0, -0.3], [0.1, -0.3, 0.2]], dtype=torch.float64)
GAUSSIAN = GaussianMixtureSpec(MEAN[None], COV[None], torch.ones(1))
"""One correlated Gaussian, whose PF-ODE the teleport solves exactly on every path."""

EXACT = DataMoments(MEAN, *torch.linalg.eigh(COV), examples=0)
"""Its moments, exactly."""

PATHS = [VPLinearPath(), LinearPath(), VEPath(0.01, 20.0)]
"""Continuous paths (a DDPM path's ODE is defined at its trained steps only)."""


def test_moments_of_examples_are_their_mean_and_covariance() -> None:
    x = torch.randn(500, 2, 3, generator=seeded(0), dtype=torch.float64) * 2 + 1
    moments = DataMoments.of(x)
    flat = x.flatten(1)
    torch.testing.assert_close(moments.mean, flat.mean(0), rtol=0, atol=1e-12)
    u, lam = moments.eigenvectors, moments.eigenvalues
    torch.testing.assert_close(u @ torch.diag(lam) @ u.T, torch.cov(flat.T), rtol=0, atol=1e-10)
    assert moments.examples == 500


def test_moments_refuse_too_few_examples_and_too_many_dimensions() -> None:
    with pytest.raises(ValueError, match="at least 2 examples, got 1"):
        DataMoments.of(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=f"at most {MAX_DIMENSIONS} dimensions; this data has"):
        DataMoments.of(torch.zeros(2, MAX_DIMENSIONS + 1))


@pytest.mark.parametrize("path", PATHS, ids=lambda p: type(p).__name__)
def test_teleport_is_the_exact_flow_of_gaussian_data(path: NoisePath) -> None:
    """From t_max to three times, the carried samples equal the exact oracle's ODE solution
    (Heun, 1,000 steps even in t between the two times) to 1e-4, on every path."""
    oracle = GaussianMixtureOracle(path, GAUSSIAN)
    x = path.prior_sample((200, 3), generator=seeded(0), dtype=torch.float64)
    for s in (0.8, 0.5, 0.2):
        ts = torch.linspace(path.t_max, s, 1001, dtype=torch.float64)
        exact = reference_trajectory(oracle, path, x, ts)[-1]
        carried = EXACT.carry(x, path, path.t_max, s)
        assert float((carried - exact).abs().max()) < 1e-4, (type(path).__name__, s)


def test_teleport_keeps_shape_and_dtype_and_checks_dimensions() -> None:
    path = VPLinearPath()
    x = torch.randn(4, 1, 3, generator=seeded(0))
    assert EXACT.carry(x, path, 1.0, 0.5).shape == x.shape
    assert EXACT.carry(x, path, 1.0, 0.5).dtype == torch.float32
    with pytest.raises(ValueError, match="moments are of 3 dimensions, the samples of 4"):
        EXACT.carry(torch.zeros(2, 4), path, 1.0, 0.5)


def test_sampler_with_a_teleporting_grid_makes_only_its_steps() -> None:
    """A 3-step DDIM grid that starts by teleport: the samples equal the teleport followed by
    DDIM's own 3 steps, with 3 network calls (plus the final denoising call), and a call
    without the data's moments is refused."""
    path = VPLinearPath()
    oracle = GaussianMixtureOracle(path, GAUSSIAN)
    calls = []

    def counted(x, t):
        calls.append(1)
        return oracle(x, t)

    grid = CustomGrid([0.5, 0.3, 0.1, path.t_min], teleport=True)
    sampler = SAMPLERS["ddim"](steps=3, grid=grid, denoise_final=False)
    assert sampler.teleports()
    out = sampler(counted, path, (50, 3), generator=seeded(0), dtype=torch.float64,
                  data_moments=EXACT)  # fmt: skip
    assert len(calls) == 3
    x = path.prior_sample((50, 3), generator=seeded(0), dtype=torch.float64)
    ts = torch.tensor(grid.points, dtype=torch.float64)
    expected = sampler.solver(oracle, path, EXACT.carry(x, path, path.t_max, 0.5), ts)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="starts with the Gaussian teleport, which needs"):
        sampler(oracle, path, (2, 3), dtype=torch.float64)


def test_teleport_then_a_fine_solve_draws_the_gaussian() -> None:
    """Teleport to t = 0.3, then Heun's 100 steps with the exact denoiser: the per-sample
    endpoints equal the full exact ODE's from t_max (1e-3), so the teleport loses nothing on
    Gaussian data."""
    path = VPLinearPath()
    oracle = GaussianMixtureOracle(path, GAUSSIAN)
    x = path.prior_sample((100, 3), generator=seeded(1), dtype=torch.float64)
    full = reference_trajectory(oracle, path, x, fine_grid(path)(path, 400))[-1]
    ts = torch.linspace(0.3, path.t_min, 101, dtype=torch.float64)
    carried = EXACT.carry(x, path, path.t_max, 0.3)
    for k in range(100):
        carried = sample_heun(oracle, path, carried, ts[k : k + 2])
    assert float((carried - full).abs().max()) < 1e-3


def test_custom_grid_with_teleport_may_start_below_t_max_only_with_it(tmp_path: Path) -> None:
    path = VPLinearPath()
    times = [0.5, 0.2, path.t_min]
    ts = CustomGrid(times, teleport=True)(path, 2)
    torch.testing.assert_close(ts, torch.tensor(times, dtype=torch.float64), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"first time 0.5 is not VPLinearPath's t_max"):
        CustomGrid(times)(path, 2)
    with pytest.raises(ValueError, match=r"first time 1.5, where the teleport ends, is not in"):
        CustomGrid([1.5, 0.2, path.t_min], teleport=True)(path, 2)
    assert repr(CustomGrid(times, teleport=True)).endswith("teleport=True)")
    file = tmp_path / "grid.json"
    file.write_text(json.dumps({"times": times, "teleport": True}))
    assert CustomGrid.from_file(file).teleport
    file.write_text(json.dumps({"times": times, "teleport": "yes"}))
    with pytest.raises(ValueError, match="'teleport' must be true or false, got 'yes'"):
        CustomGrid.from_file(file)


def test_tune_grid_teleports_gaussian_data_far_down() -> None:
    """On Gaussian data the teleport is exact, so the tuned grid starts low (below t = 0.1)
    and its run still ends on the reference endpoint (error below 1e-2, while the best 3
    DDIM steps from t_max miss it by 0.1 or more)."""
    path = VPLinearPath()
    oracle = GaussianMixtureOracle(path, GAUSSIAN)
    sampler = SAMPLERS["ddim"]().with_steps(3)
    x = path.prior_sample((32, 3), generator=seeded(0), dtype=torch.float64)
    plain = tune_grid(sampler, oracle, path, x, 3, reference_steps=60, candidates=30)
    tuned = tune_grid(sampler, oracle, path, x, 3, reference_steps=60, candidates=30,
                      teleport=EXACT)  # fmt: skip
    assert tuned.teleport and tuned.times[0] < 0.1 and not plain.teleport
    assert tuned.endpoint_errors["tuned"] < 1e-2 < 0.1 < plain.endpoint_errors["tuned"]


def test_tune_grid_teleport_helps_on_the_eight_gaussians() -> None:
    """On the 8-Gaussians oracle (VP), teleporting lets 3 DDIM steps end closer to the exact
    ODE than the best 3 steps from t_max (the teleport start is one of the choices, so never
    farther on the tuning batch); measured 0.63 against 1.24."""
    path = VPLinearPath()
    mixture = Toy2D("8gaussians").mixture()
    oracle = IsotropicMixtureOracle(path, mixture)
    moments = DataMoments.of(mixture.sample(4000, generator=seeded(3))[0])
    sampler = SAMPLERS["ddim"]().with_steps(3)
    x = path.prior_sample((64, 2), generator=seeded(0), dtype=torch.float64)
    plain = tune_grid(sampler, oracle, path, x, 3, reference_steps=60, candidates=30)
    tuned = tune_grid(sampler, oracle, path, x, 3, reference_steps=60, candidates=30,
                      teleport=moments)  # fmt: skip
    assert tuned.teleport and path.t_min < tuned.times[0] < path.t_max
    assert tuned.endpoint_errors["tuned"] < 0.7 * plain.endpoint_errors["tuned"]
