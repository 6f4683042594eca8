"""Every fixed-step sampler takes a ``grid``; DDPM's and DDIM's defaults land on trained steps."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser

from diffusion_pl.paths import DDPMPath, LinearPath, VEPath, VPLinearPath
from diffusion_pl.samplers import SAMPLERS, DDIMSampler, DDPMSampler, Sampler, grids
from diffusion_pl.samplers.ancestral import TrainedStepsGrid

FIXED_STEP = [cls for cls in SAMPLERS.values() if cls.layout.grid]
"""Every sampler with a ``grid`` setting (read from the table: a new one is checked too)."""
UNIFORM_BY_DEFAULT = [
    cls for cls in FIXED_STEP if isinstance(cls.default_grid, (grids.UniformGrid, TrainedStepsGrid))
]


@pytest.mark.parametrize("cls", UNIFORM_BY_DEFAULT, ids=lambda c: c.__name__)
@pytest.mark.parametrize("path", [VPLinearPath(), VEPath(), LinearPath()], ids=type)
def test_default_grid_is_uniform_on_continuous_paths(cls, path) -> None:
    torch.testing.assert_close(
        cls(steps=7).time_grid(path, None), grids.uniform_time_grid(path, 7), rtol=0, atol=0
    )


@pytest.mark.parametrize("cls", FIXED_STEP, ids=lambda c: c.__name__)
def test_every_fixed_step_sampler_uses_its_grid(cls) -> None:
    path = VPLinearPath()
    for grid in (grids.EDMGrid(rho=5.0), grids.LogSNRGrid()):
        sampler = cls(steps=6, grid=grid)
        assert sampler.grid is grid and "grid" not in sampler.settings()
        torch.testing.assert_close(sampler.time_grid(path, None), grid(path, 6), rtol=0, atol=0)


@pytest.mark.parametrize("cls", [DDPMSampler, DDIMSampler], ids=lambda c: c.__name__)
@pytest.mark.parametrize("steps", [50, 10, 999])
def test_ancestral_default_grid_on_ddpm_path_is_exactly_on_trained_steps(cls, steps) -> None:
    """Before, DDIMSampler(steps=50) on DDPMPath(1000) visited t = 1 − 0.999 k/50, between
    trained steps (only step counts dividing 999 landed on them)."""
    path = DDPMPath(1000)
    ts = cls(steps=steps).time_grid(path, None)
    assert len(ts) == steps + 1 and ts[0] == 1.0 and ts[-1] == 1 / 1000
    assert bool((ts[1:] < ts[:-1]).all())
    torch.testing.assert_close(ts, torch.round(ts * 1000) / 1000, rtol=0, atol=0)


def test_ddim_default_is_leading_and_ddpm_default_is_linspace_on_ddpm_path() -> None:
    path = DDPMPath(1000)
    leading, linspace = grids.LeadingGrid()(path, 50), grids.LinspaceGrid()(path, 50)
    assert torch.equal(DDIMSampler(steps=50).time_grid(path, None), leading)
    assert torch.equal(DDPMSampler(steps=50).time_grid(path, None), linspace)
    # DDIM's code strides by k = ⌊T/S⌋ = 19 for its 51 timesteps; its top is moved to T.
    assert torch.equal(leading[1:] * 1000, torch.arange(50, 0, -1, dtype=torch.float64) * 19 - 18)
    # T − 1 steps visit every trained step: today's grid, to rounding.
    torch.testing.assert_close(
        DDPMSampler(steps=999).time_grid(path, None), grids.uniform_time_grid(path, 999)
    )


def test_more_steps_than_trained_steps_fail_with_the_fix() -> None:
    with pytest.raises(ValueError, match="use steps <= 999"):
        DDPMSampler(steps=1000).time_grid(DDPMPath(1000), None)


def test_trained_steps_grid_refuses_a_continuous_spacing() -> None:
    with pytest.raises(ValueError, match="LeadingGrid, TrailingGrid or LinspaceGrid"):
        TrainedStepsGrid(grids.EDMGrid())


def test_grid_round_trips_through_yaml() -> None:
    parser = ArgumentParser()
    parser.add_argument("--sampler", type=Sampler)
    config = parser.parse_string(
        """
        sampler:
          class_path: diffusion_pl.samplers.DDIMSampler
          init_args:
            steps: 20
            grid:
              class_path: diffusion_pl.samplers.grids.TrailingGrid
        """
    )
    sampler = parser.instantiate_classes(config).sampler
    assert isinstance(sampler, DDIMSampler) and isinstance(sampler.grid, grids.TrailingGrid)
    assert torch.equal(sampler.time_grid(DDPMPath(), None), grids.TrailingGrid()(DDPMPath(), 20))
    heun_config = parser.parse_string(
        "sampler: {class_path: diffusion_pl.samplers.HeunSampler, init_args: {steps: 4, "
        "grid: {class_path: diffusion_pl.samplers.EDMGrid, init_args: {rho: 3.0}}}}"
    )
    again = parser.parse_string(parser.dump(heun_config))  # dump and parse back
    heun = parser.instantiate_classes(again).sampler
    assert isinstance(heun.grid, grids.EDMGrid) and heun.grid.rho == 3.0
    plain = parser.parse_string("sampler: diffusion_pl.samplers.EulerSampler")
    assert plain.sampler.init_args.grid is None
