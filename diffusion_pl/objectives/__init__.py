"""What a training step minimises (objectives), and the models it is handed (teachers).

An objective is a plain object, ``objective(model, x0, labels, generator, step, eps) -> [B]``,
run by :class:`~diffusion_pl.formulations.DiffusionModule` and callable without a Trainer.
"""

from diffusion_pl.objectives.base import Batch, Draws, Model, Objective, mean_flat
from diffusion_pl.objectives.consistency import ConsistencyObjective
from diffusion_pl.objectives.meanflow import MeanFlowLoss, meanflow_target
from diffusion_pl.objectives.regression import DenoisingRegression, VariationalBoundLoss
from diffusion_pl.objectives.teacher import Teacher

__all__ = [
    "Batch",
    "ConsistencyObjective",
    "DenoisingRegression",
    "Draws",
    "MeanFlowLoss",
    "Model",
    "Objective",
    "Teacher",
    "VariationalBoundLoss",
    "mean_flat",
    "meanflow_target",
]
