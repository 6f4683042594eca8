"""Samplers: pure functions over (denoiser, path, x_T) plus thin YAML-facing configs derived
from them; :data:`SAMPLERS` names them (the CLI, the tests and the README's table read it)."""

import importlib
import pkgutil

from diffusion_pl.parameterization import DenoiserFn
from diffusion_pl.samplers.ancestral import DDIMSampler, DDPMSampler, sample_ddim, sample_ddpm
from diffusion_pl.samplers.base import Sampler
from diffusion_pl.samplers.consistency import (
    ConsistencySampler,
    consistency_levels,
    sample_consistency,
)
from diffusion_pl.samplers.dpm_solver import DPMSolver3MSampler, DPMSolverSampler, sample_dpmpp
from diffusion_pl.samplers.edm import EDMSampler, sample_edm
from diffusion_pl.samplers.grids import (
    GRIDS,
    CustomGrid,
    EDMGrid,
    Grid,
    LeadingGrid,
    LinspaceGrid,
    LogSNRGrid,
    TrailingGrid,
    UniformGrid,
    karras_sigmas,
    parse_grid,
    uniform_time_grid,
)
from diffusion_pl.samplers.ipndm import IPNDMSampler, sample_ipndm
from diffusion_pl.samplers.langevin import (
    AnnealedLangevinSampler,
    langevin_corrector,
    langevin_dynamics,
    sample_annealed_langevin,
    score_at,
)
from diffusion_pl.samplers.lcm import LCMSampler, lcm_timesteps, sample_lcm
from diffusion_pl.samplers.meanflow import AverageVelocityFn, MeanFlowSampler, sample_meanflow
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
from diffusion_pl.samplers.unipc import UniPCSampler, sample_unipc


def _declared_samplers() -> dict[str, type[Sampler]]:
    """Every config class that a module of this package declares with a ``name``, in the order
    of the modules' names and then of the definitions: adding a sampler is adding its module.

    Only classes that set ``name`` themselves count (not jsonargparse's lazy-default
    subclasses, which inherit it), and only those defined in this package.
    """
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += [
            cls
            for cls in vars(module).values()
            if isinstance(cls, type)
            and issubclass(cls, Sampler)
            and cls.__module__ == module.__name__
            and "name" in vars(cls)
        ]
    names = [cls.name for cls in found]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two samplers declare the same name: {sorted(names)}")
    return {cls.name: cls for cls in found}


SAMPLERS: dict[str, type[Sampler]] = _declared_samplers()
"""Short names for ``diffusion-pl sample --sampler NAME`` (each class's :attr:`Sampler.name`)
-> config class; YAML uses ``class_path`` instead."""

__all__ = [
    "GRIDS",
    "SAMPLERS",
    "AnnealedLangevinSampler",
    "AverageVelocityFn",
    "ConsistencySampler",
    "CustomGrid",
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
    "LCMSampler",
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
    "consistency_levels",
    "karras_sigmas",
    "langevin_corrector",
    "langevin_dynamics",
    "lcm_timesteps",
    "ode_drift",
    "parse_grid",
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
    "sample_lcm",
    "sample_meanflow",
    "sample_pc",
    "sample_rk45",
    "sample_unipc",
    "score_at",
    "solve_ode_rk45",
    "uniform_time_grid",
]
