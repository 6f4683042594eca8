"""One thin LightningModule per formulation over the shared core, and the noisy classifier."""

from diffusion_pl.formulations.base import DiffusionModule, mean_flat
from diffusion_pl.formulations.classifier import NoisyClassifier
from diffusion_pl.formulations.consistency import ConsistencyModel
from diffusion_pl.formulations.edm import EDM
from diffusion_pl.formulations.meanflow import MeanFlow, meanflow_target
from diffusion_pl.formulations.ncsn import NCSN
from diffusion_pl.formulations.optim import optimizer_config
from diffusion_pl.formulations.rectified_flow import RectifiedFlow, Reflow
from diffusion_pl.formulations.score_sde import ScoreSDE
from diffusion_pl.formulations.vdm import VDM

__all__ = [
    "EDM",
    "NCSN",
    "VDM",
    "ConsistencyModel",
    "DiffusionModule",
    "MeanFlow",
    "NoisyClassifier",
    "RectifiedFlow",
    "Reflow",
    "ScoreSDE",
    "mean_flat",
    "meanflow_target",
    "optimizer_config",
]
