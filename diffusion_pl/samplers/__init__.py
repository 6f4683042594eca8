"""Samplers: pure functions over (denoiser, path, x_T) plus thin YAML-facing configs."""

from diffusion_pl.samplers.base import DenoiserFn, Sampler, uniform_time_grid
from diffusion_pl.samplers.ode import (
    EulerSampler,
    HeunSampler,
    ode_drift,
    sample_euler,
    sample_heun,
)
from diffusion_pl.samplers.rk45 import RK45Sampler, sample_rk45, solve_ode_rk45

SAMPLERS: dict[str, type[Sampler]] = {
    "euler": EulerSampler,
    "heun": HeunSampler,
    "rk45": RK45Sampler,
}
"""Short names for ``diffusion-pl sample --sampler NAME``; YAML uses ``class_path`` instead."""

__all__ = [
    "SAMPLERS",
    "DenoiserFn",
    "EulerSampler",
    "HeunSampler",
    "RK45Sampler",
    "Sampler",
    "ode_drift",
    "sample_euler",
    "sample_heun",
    "sample_rk45",
    "solve_ode_rk45",
    "uniform_time_grid",
]
