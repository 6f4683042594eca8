"""The table of samplers, by their declared short names: the one list the CLI, the tests and
the README read.

``python -m diffusion_pl.samplers`` prints the README's sampler table (the rows between
``<!-- samplers:begin -->`` and ``<!-- samplers:end -->``).
"""

from __future__ import annotations

import inspect

from diffusion_pl.samplers.ancestral import DDIMSampler, DDPMSampler
from diffusion_pl.samplers.base import Sampler
from diffusion_pl.samplers.consistency import ConsistencySampler
from diffusion_pl.samplers.dpm_solver import DPMSolver3MSampler, DPMSolverSampler
from diffusion_pl.samplers.edm import EDMSampler
from diffusion_pl.samplers.ipndm import IPNDMSampler
from diffusion_pl.samplers.langevin import AnnealedLangevinSampler
from diffusion_pl.samplers.meanflow import MeanFlowSampler
from diffusion_pl.samplers.ode import EulerSampler, HeunSampler
from diffusion_pl.samplers.rk45 import RK45Sampler
from diffusion_pl.samplers.sde import EulerMaruyamaSampler, PCSampler
from diffusion_pl.samplers.unipc import UniPCSampler

__all__ = ["SAMPLERS", "sampler_table"]

SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (
        EulerSampler,
        HeunSampler,
        RK45Sampler,
        EulerMaruyamaSampler,
        PCSampler,
        DDPMSampler,
        DDIMSampler,
        AnnealedLangevinSampler,
        DPMSolverSampler,
        DPMSolver3MSampler,
        UniPCSampler,
        IPNDMSampler,
        EDMSampler,
        MeanFlowSampler,
        ConsistencySampler,
    )
}
"""Short names for ``diffusion-pl sample --sampler NAME`` (each class's :attr:`Sampler.name`)
-> config class; YAML uses ``class_path`` instead."""


def _summary(cls: type[Sampler]) -> str:
    """The summary line of ``cls``'s docstring, in markdown (``code`` → `code`, | escaped)."""
    line = inspect.cleandoc(cls.__doc__ or "").splitlines()[0]
    return line.replace("``", "`").replace("|", "\\|")


def sampler_table() -> str:
    """The README's sampler table in markdown: name | config class | what it is (the class
    docstring's summary line) | deterministic or stochastic | network evaluations per step."""
    rows = [
        "| name | config class | what it is | noise | NFE per step |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, cls in SAMPLERS.items():
        cells = (f"`{name}`", f"`{cls.__name__}`", _summary(cls), cls.randomness, cls.nfe_per_step)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
