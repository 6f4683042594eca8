"""The formulations: presets of one DiffusionModule over the shared core, and the noisy classifier.

:data:`FORMULATIONS` names each preset once (for docs tables, tests and the CLI).
"""

from diffusion_pl.formulations.base import DiffusionModule, mean_flat
from diffusion_pl.formulations.classifier import NoisyClassifier
from diffusion_pl.formulations.consistency import ConsistencyModel
from diffusion_pl.formulations.edm import EDM
from diffusion_pl.formulations.guided import check_guide
from diffusion_pl.formulations.lcm import LatentConsistencyModel
from diffusion_pl.formulations.meanflow import MeanFlow, meanflow_target
from diffusion_pl.formulations.ncsn import NCSN
from diffusion_pl.formulations.optim import optimizer_config
from diffusion_pl.formulations.rectified_flow import RectifiedFlow, Reflow
from diffusion_pl.formulations.score_sde import ScoreSDE
from diffusion_pl.formulations.vdm import VDM

FORMULATIONS: dict[str, type[DiffusionModule]] = {
    "vdm": VDM,
    "ncsn": NCSN,
    "score_sde": ScoreSDE,
    "rectified_flow": RectifiedFlow,
    "reflow": Reflow,
    "edm": EDM,
    "consistency": ConsistencyModel,
    "lcm": LatentConsistencyModel,
    "meanflow": MeanFlow,
}
"""Every named formulation (a preset of :class:`DiffusionModule`), by its short name."""

__all__ = [
    "EDM",
    "FORMULATIONS",
    "NCSN",
    "VDM",
    "ConsistencyModel",
    "DiffusionModule",
    "LatentConsistencyModel",
    "MeanFlow",
    "NoisyClassifier",
    "RectifiedFlow",
    "Reflow",
    "ScoreSDE",
    "check_guide",
    "mean_flat",
    "meanflow_target",
    "optimizer_config",
]
