"""Samplers: pure functions over (denoiser, path, x_T) plus thin YAML-facing configs."""

from diffusion_pl.samplers.ancestral import DDIMSampler, DDPMSampler, sample_ddim, sample_ddpm
from diffusion_pl.samplers.base import DenoiserFn, Sampler
from diffusion_pl.samplers.consistency import ConsistencySampler, sample_consistency
from diffusion_pl.samplers.edm import EDMSampler, sample_edm
from diffusion_pl.samplers.grids import (
    GRIDS,
    EDMGrid,
    Grid,
    LeadingGrid,
    LinspaceGrid,
    LogSNRGrid,
    TrailingGrid,
    UniformGrid,
    karras_sigmas,
    uniform_time_grid,
)
from diffusion_pl.samplers.langevin import (
    AnnealedLangevinSampler,
    langevin_corrector,
    langevin_dynamics,
    sample_annealed_langevin,
    score_at,
)
from diffusion_pl.samplers.meanflow import AverageVelocityFn, MeanFlowSampler, sample_meanflow
from diffusion_pl.samplers.multistep import (
    DPMSolver3MSampler,
    DPMSolverSampler,
    IPNDMSampler,
    UniPCSampler,
    sample_dpmpp,
    sample_ipndm,
    sample_unipc,
)
from diffusion_pl.samplers.ode import (
    EulerSampler,
    HeunSampler,
    ode_drift,
    sample_euler,
    sample_heun,
)
from diffusion_pl.samplers.rk45 import RK45Sampler, sample_rk45, solve_ode_rk45
from diffusion_pl.samplers.sde import (
    EulerMaruyamaSampler,
    PCSampler,
    sample_euler_maruyama,
    sample_pc,
)

SAMPLERS: dict[str, type[Sampler]] = {
    "euler": EulerSampler,
    "heun": HeunSampler,
    "rk45": RK45Sampler,
    "euler_maruyama": EulerMaruyamaSampler,
    "pc": PCSampler,
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "annealed_langevin": AnnealedLangevinSampler,
    "dpmpp_2m": DPMSolverSampler,
    "dpmpp_3m": DPMSolver3MSampler,
    "unipc": UniPCSampler,
    "ipndm": IPNDMSampler,
    "edm_sde": EDMSampler,
    "meanflow": MeanFlowSampler,
    "consistency": ConsistencySampler,
}
"""Short names for ``diffusion-pl sample --sampler NAME``; YAML uses ``class_path`` instead."""

__all__ = [
    "GRIDS",
    "SAMPLERS",
    "AnnealedLangevinSampler",
    "AverageVelocityFn",
    "ConsistencySampler",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolver3MSampler",
    "DPMSolverSampler",
    "DenoiserFn",
    "EDMGrid",
    "EDMSampler",
    "EulerMaruyamaSampler",
    "EulerSampler",
    "Grid",
    "HeunSampler",
    "IPNDMSampler",
    "LeadingGrid",
    "LinspaceGrid",
    "LogSNRGrid",
    "MeanFlowSampler",
    "PCSampler",
    "RK45Sampler",
    "Sampler",
    "TrailingGrid",
    "UniPCSampler",
    "UniformGrid",
    "karras_sigmas",
    "langevin_corrector",
    "langevin_dynamics",
    "ode_drift",
    "sample_annealed_langevin",
    "sample_consistency",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp",
    "sample_edm",
    "sample_euler",
    "sample_euler_maruyama",
    "sample_heun",
    "sample_ipndm",
    "sample_meanflow",
    "sample_pc",
    "sample_rk45",
    "sample_unipc",
    "score_at",
    "solve_ode_rk45",
    "uniform_time_grid",
]
