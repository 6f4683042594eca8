"""Time grids and the paths' inverse log-SNR t(λ), against exact answers."""

from __future__ import annotations

import math

import pytest
import torch
from mixture_checks import ALL_PATHS

from diffusion_pl.learned_schedule import LearnedVPPath
from diffusion_pl.paths import (
    DDPMPath,
    LinearPath,
    NoisePath,
    VEPath,
    VPLinearPath,
    cosine_betas,
)
from diffusion_pl.samplers import grids

PATHS = [
    *(cls() for cls in ALL_PATHS.values()),
    DDPMPath(schedule=cosine_betas),
    LearnedVPPath(hidden=16),
]
ids = [f"{type(p).__name__}{i}" for i, p in enumerate(PATHS)]


@pytest.mark.parametrize("path", PATHS, ids=ids)
def test_time_of_log_snr_inverts_log_snr(path: NoisePath) -> None:
    """t(λ(t)) = t to 1e-10 on 1001 times across [t_min, t_max] and off the DDPM steps."""
    t = torch.linspace(path.t_min, path.t_max, 1001, dtype=torch.float64)
    t = torch.cat([t, t[:-1] + 0.37 * (t[1] - t[0])])
    with torch.no_grad():
        back = path.time_of_log_snr(path.log_snr(t))
    torch.testing.assert_close(back, t, atol=1e-10, rtol=0)


@pytest.mark.parametrize("path", PATHS, ids=ids)
@pytest.mark.parametrize(
    "grid", [grids.UniformGrid(), grids.EDMGrid(), grids.LogSNRGrid()], ids=repr
)
@pytest.mark.parametrize("steps", [3, 10, 37])
def test_grids_decrease_from_t_max_to_t_min(path: NoisePath, grid, steps: int) -> None:
    ts = grid(path, steps)
    assert ts.dtype == torch.float64 and ts.shape == (steps + 1,)
    assert ts[0] == path.t_max and ts[-1] == path.t_min
    assert (ts[1:] < ts[:-1]).all()


def test_edm_and_logsnr_grids_are_their_spacings_in_sigma_over_alpha() -> None:
    """On VP, σ̃ = σ/α of the grid is Karras et al.'s Eq. 5 (ρ = 7) / geometric, end to end."""
    path, steps = VPLinearPath(), 12
    ends = torch.tensor([path.t_max, path.t_min], dtype=torch.float64)
    hi, lo = (path.sigma(ends) / path.alpha(ends)).tolist()
    for grid, expected in [
        (grids.EDMGrid(), grids.karras_sigmas(lo, hi, steps, 7.0)),
        (
            grids.LogSNRGrid(),
            torch.logspace(math.log10(hi), math.log10(lo), 13, dtype=torch.float64),
        ),
    ]:
        ts = grid(path, steps)
        torch.testing.assert_close(path.sigma(ts) / path.alpha(ts), expected, rtol=1e-10, atol=0)
    # Eq. 5 by hand: σ_i = (σ_max^{1/7} + i/N (σ_min^{1/7} − σ_max^{1/7}))^7.
    torch.testing.assert_close(
        grids.karras_sigmas(0.002, 80.0, 2),
        torch.tensor([80.0, ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7, 0.002]).double(),
    )


def test_linear_path_keeps_its_infinite_ends_as_own_points() -> None:
    """σ̃ = ∞ at t = 1 and 0 at t = 0: the spacing runs from 80 to 0.002 in between."""
    path = LinearPath()
    ts = grids.EDMGrid()(path, 6)
    torch.testing.assert_close(ts[1:-1] / (1 - ts[1:-1]), grids.karras_sigmas(0.002, 80.0, 4))
    with pytest.raises(ValueError, match="steps >= 3"):
        grids.LogSNRGrid()(path, 2)


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        # Lin et al. (2024), Table 2, T = 1000, N = 10, as steps i = τ + 1; N = steps + 1 here.
        (grids.LinspaceGrid(), [1000, 889, 778, 667, 556, 445, 334, 223, 112, 1]),
        (grids.LeadingGrid(), [1000, 801, 701, 601, 501, 401, 301, 201, 101, 1]),
        (grids.TrailingGrid(), [1000, 900, 800, 700, 600, 500, 400, 300, 200, 1]),
    ],
    ids=repr,
)
def test_ddpm_spacings_match_lin_et_al(grid, expected: list[int]) -> None:
    """N = 10 timesteps (9 steps): linspace 999, 888, …, 0; leading 900, …, 0 (top moved to
    999); trailing 999, 899, …, 99 (last moved to 0) — Lin et al.'s Table 2 in τ."""
    ts = grid(DDPMPath(1000), 9)
    assert (ts * 1000).tolist() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "grid", [grids.LeadingGrid(), grids.TrailingGrid(), grids.LinspaceGrid()], ids=repr
)
@pytest.mark.parametrize("steps", [1, 9, 10, 49, 50, 999])
def test_ddpm_spacings_land_exactly_on_trained_steps(grid, steps: int) -> None:
    path = DDPMPath(1000)
    ts = grid(path, steps)
    i = ts * path.num_steps
    torch.testing.assert_close(i, i.round(), atol=1e-9, rtol=0)
    assert ts[0] == 1.0 and ts[-1] == 1 / 1000 and (ts[1:] < ts[:-1]).all()
    assert len(ts) == steps + 1


def test_bad_grid_input_fails_early() -> None:
    with pytest.raises(ValueError, match="DDPMPath"):
        grids.TrailingGrid()(VPLinearPath(), 10)
    with pytest.raises(ValueError, match="steps <= 999"):
        grids.LinspaceGrid()(DDPMPath(1000), 1000)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        grids.EDMGrid()(VEPath(), 0)
    with pytest.raises(ValueError, match="rho"):
        grids.EDMGrid(rho=0.0)
    assert set(grids.GRIDS) == {"uniform", "edm", "logsnr", "leading", "trailing", "linspace"}
