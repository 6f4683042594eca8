"""One thin LightningModule per formulation over the shared core."""

from diffusion_pl.formulations.base import DiffusionModule, mean_flat
from diffusion_pl.formulations.rectified_flow import RectifiedFlow

__all__ = ["DiffusionModule", "RectifiedFlow", "mean_flat"]
