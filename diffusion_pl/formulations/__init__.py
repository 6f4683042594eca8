"""One thin LightningModule per formulation over the shared core."""

from diffusion_pl.formulations.base import DiffusionModule, mean_flat
from diffusion_pl.formulations.rectified_flow import RectifiedFlow, Reflow

__all__ = ["DiffusionModule", "RectifiedFlow", "Reflow", "mean_flat"]
