"""Shared fixtures: every noise path, built once per test."""

from __future__ import annotations

import pytest

from diffusion_pl.paths import (
    DDPMPath,
    LinearPath,
    NoisePath,
    SubVPPath,
    VEPath,
    VPCosinePath,
    VPLinearPath,
)

ALL_PATHS = {
    "vp_linear": VPLinearPath,
    "vp_cosine": VPCosinePath,
    "sub_vp": SubVPPath,
    "ve": VEPath,
    "linear": LinearPath,
    "ddpm": DDPMPath,
}


@pytest.fixture(params=sorted(ALL_PATHS))
def path(request: pytest.FixtureRequest) -> NoisePath:
    """Each noise path of MATH.md with its paper defaults."""
    return ALL_PATHS[request.param]()
