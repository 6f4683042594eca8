"""LCM's sampler started by the Gaussian teleport (``LCMSampler(teleport_to=τ)``), against exact
answers: on Gaussian data the consistency function is the teleport map itself, and on the
two-class mixture of the LCM tests the exact guided consistency function f*_1 (RK45) stands in
for a perfect student."""

from __future__ import annotations

import pytest
import torch
from guided_mixture import VP, TrueLCMDenoiser, class_moments
from mixture_checks import seeded

from diffusion_pl.parameterization import Prediction
from diffusion_pl.paths import DDPMPath
from diffusion_pl.samplers import LCMSampler, lcm_timesteps
from diffusion_pl.teleport import DataMoments

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN = torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.6, 0.1], [0.6, 2.0, -0.3], [0.1, -0.3, 0.2]], dtype=torch.float64)
GAUSSIAN = DataMoments(MEAN, *torch.linalg.eigh(COV), examples=0)
"""A correlated 3-D Gaussian: its PF-ODE, and so its consistency function, is the teleport."""


def test_teleport_to_picks_the_skipping_grid_below_it_and_refuses_off_grid_starts() -> None:
    """From τ = 659 the grid keeps its 33 levels ≤ 659 and picks ⌊i · 33 / K⌋ of them; a start
    off the grid, or more steps than levels below it, is refused naming the value."""
    assert lcm_timesteps(2, teleport_to=659).tolist() == [659, 339]
    assert lcm_timesteps(4, teleport_to=659).tolist() == [659, 499, 339, 179]
    assert lcm_timesteps(1, teleport_to=999).tolist() == lcm_timesteps(1).tolist() == [999]
    assert LCMSampler(steps=2, teleport_to=659).teleports()
    assert not LCMSampler(steps=2).teleports()
    with pytest.raises(ValueError, match=r"skipping grid .* got 650"):
        LCMSampler(steps=2, teleport_to=650, num_timesteps=1000)
    with pytest.raises(ValueError, match=r"takes 1 to 2 steps .* got 3"):
        LCMSampler(steps=3, teleport_to=39).check(DDPMPath())
    # Without num_timesteps, T is the path's: a 500-step DDPM path's grid is 9, 19, ..., 499.
    on_500 = LCMSampler(steps=2, teleport_to=329)
    assert on_500.timesteps(DDPMPath(num_steps=500)).tolist() == [329, 169]
    with pytest.raises(ValueError, match="got 329"):
        on_500.check(DDPMPath())


class GaussianConsistency:
    """The exact consistency function of N(μ, Σ) as a denoiser on ``path``: x̂_0 = the point
    at t_min of the ODE through (x, t), by the teleport map; counts its calls."""

    def __init__(self, path: DDPMPath) -> None:
        self.path, self.calls = path, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> Prediction:
        self.calls += 1
        tau = float(t.reshape(-1)[0])
        x0 = GAUSSIAN.carry(x, self.path, tau, self.path.t_min)
        alpha, sigma = (float(f(t.reshape(-1)[0])) for f in (self.path.alpha, self.path.sigma))
        return Prediction(x0=x0, eps=(x - alpha * x0) / sigma)


def test_one_teleported_step_of_the_exact_function_is_the_exact_flow_from_t_max() -> None:
    """One call at τ = 659 after the teleport lands where the exact flow from t_max does (the
    flow composes, to 1e-10); without the data's moments the call is refused."""
    path = DDPMPath()
    denoiser = GaussianConsistency(path)
    sampler = LCMSampler(steps=1, teleport_to=659)
    out = sampler(denoiser, path, (64, 3), generator=seeded(0), dtype=torch.float64,
                  data_moments=GAUSSIAN)  # fmt: skip
    x = path.prior_sample((64, 3), generator=seeded(0), dtype=torch.float64)
    direct = GAUSSIAN.carry(x, path, path.t_max, path.t_min)
    assert denoiser.calls == 1
    torch.testing.assert_close(out, direct, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="needs the data's mean"):
        sampler(denoiser, path, (2, 3), dtype=torch.float64)


MIXTURE = DataMoments(torch.zeros(2, dtype=torch.float64),
                      torch.tensor([0.36, 1.36], dtype=torch.float64),
                      torch.eye(2, dtype=torch.float64)[:, [1, 0]], examples=0)  # fmt: skip
"""The LCM tests' two-class mixture's exact moments: mean 0, covariance diag(1 + 0.6², 0.6²)."""


def test_teleported_lcm_on_the_exact_function_keeps_each_class_of_the_mixture() -> None:
    """The mixture (N((∓1, 0), 0.6² I) per class) is not Gaussian, so the teleport lands off each
    class's ODE and the exact f*_1 maps the point near its class, not onto it. Measured class
    means (1,500 samples): one step from τ = 659 draws ∓0.92, from τ = 499 ∓0.81 (the lower the
    start, the more the Gaussian map costs); the re-noising of later steps restores the rest:
    2 and 4 steps from τ = 659 draw each class within 0.05 of its means and stds, as the
    sampler from t_max does (tests/formulations/test_lcm.py)."""
    y = torch.arange(1500) % 2
    denoiser = TrueLCMDenoiser(VP, y, 1.0)

    def draw(steps: int, start: int) -> torch.Tensor:
        sampler = LCMSampler(steps=steps, teleport_to=start)
        x = sampler(denoiser, VP, (1500, 2), generator=seeded(0), dtype=torch.float64,
                    data_moments=MIXTURE)  # fmt: skip
        return class_moments(x, y)

    one_high, one_low = draw(1, 659)[:, 0].abs(), draw(1, 499)[:, 0].abs()
    assert ((one_high > 0.88) & (one_high < 0.95)).all() and (one_low < 0.85).all()
    expected = torch.tensor([[-1.0, 0.6, 0.6], [1.0, 0.6, 0.6]], dtype=torch.float64)
    for steps in (2, 4):
        torch.testing.assert_close(draw(steps, 659), expected, atol=0.05, rtol=0)
