"""Samplers: pure functions over (denoiser, path, x_T) plus thin YAML-facing configs."""

from diffusion_pl.samplers.base import DenoiserFn, Sampler, uniform_time_grid
from diffusion_pl.samplers.ode import (
    EulerSampler,
    HeunSampler,
    ode_drift,
    sample_euler,
    sample_heun,
)

SAMPLERS: dict[str, type[Sampler]] = {"euler": EulerSampler, "heun": HeunSampler}
"""Short names for ``diffusion-pl sample --sampler NAME``; YAML uses ``class_path`` instead."""

__all__ = [
    "SAMPLERS",
    "DenoiserFn",
    "EulerSampler",
    "HeunSampler",
    "Sampler",
    "ode_drift",
    "sample_euler",
    "sample_heun",
    "uniform_time_grid",
]
