"""The seam through which training receives a trained model: a teacher, a guide, a start.

Consistency distillation (and LCM) needs a frozen teacher, ECT a diffusion model to start
from, the FID and sample-grid callbacks an autoguidance guide. Each of them is a *trained model
handed in*, not something a formulation, an objective or a callback loads itself: loading a
checkpoint rebuilds a model of any formulation, so the loader sits above all of them
(:class:`diffusion_pl.checkpoints.Checkpoint`). Below it, code sees only this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from lightning import LightningModule

__all__ = ["Teacher"]


class Teacher(ABC):
    """A trained model that training uses but does not train, chosen by ``class_path``."""

    @abstractmethod
    def load(self, map_location: str | torch.device = "cpu") -> LightningModule:
        """The model on ``map_location``, in eval mode, with its gradients off."""

    @abstractmethod
    def __str__(self) -> str:
        """How errors name the model, e.g. its checkpoint file."""
