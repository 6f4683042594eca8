"""Gaussian noise paths ``x_t = α_t x_0 + σ_t ε`` with t = 0 data and t = 1 noise.

The interface (:mod:`.base`), the continuous-time paths (:mod:`.continuous`) and the discrete
DDPM path with its β schedules (:mod:`.discrete`). docs/math.md (sections 2 and 4) has the
table every path implements.
"""

from diffusion_pl.paths.base import NoisePath, PathCoefficients
from diffusion_pl.paths.continuous import LinearPath, SubVPPath, VEPath, VPCosinePath, VPLinearPath
from diffusion_pl.paths.discrete import DDPMPath, cosine_betas, linear_betas

__all__ = [
    "DDPMPath",
    "LinearPath",
    "NoisePath",
    "PathCoefficients",
    "SubVPPath",
    "VEPath",
    "VPCosinePath",
    "VPLinearPath",
    "cosine_betas",
    "linear_betas",
]
