"""The guide of autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version
of Itself"): a :class:`~diffusion_pl.objectives.Teacher` loaded and checked against the model it
guides, for the callbacks that sample while training (FID, sample grids) and the commands.

Why the guide is a callback argument and not a model argument: a guide is a choice of how to
sample, like the sampler of the FID callback, not part of the model. Kept out of the model's
init args, it is not recorded in the model's hparams, so every checkpoint (older ones included)
loads as before, and a later ``diffusion-pl sample`` of the run does not depend on the guide's
file; ``diffusion-pl sample --guide_ckpt`` and ``fid --guide_ckpt`` name one when wanted.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning import LightningModule

from diffusion_pl.formulations import DiffusionModule, check_guide
from diffusion_pl.objectives import Teacher

__all__ = ["CallbackGuide", "load_guide"]


def load_guide(
    guide: Teacher,
    model: DiffusionModule,
    *,
    model_name: str = "the model",
    map_location: str | torch.device = "cpu",
) -> DiffusionModule:
    """The guide of autoguidance, loaded from ``guide`` onto ``map_location`` and checked
    against ``model`` (:func:`~diffusion_pl.formulations.check_guide`: same data shape, path,
    conditioning), frozen in eval mode.

    Args:
        guide: the weaker diffusion model, e.g. a
            :class:`~diffusion_pl.checkpoints.Checkpoint` of an earlier step of the same run.
        model: the diffusion model it will guide.
        model_name: how errors name ``model``, e.g. ``"the model RUN.ckpt"``.
        map_location: device to load onto.
    """
    loaded = guide.load(map_location)
    if not isinstance(loaded, DiffusionModule):
        raise ValueError(
            f"the guide {guide} holds a {type(loaded).__name__}, not a diffusion model: "
            "autoguidance needs a weaker diffusion model of the same data and path (an earlier "
            "checkpoint of the same run, or a smaller net)"
        )
    check_guide(model, loaded, model=model_name, other=f"the guide {guide}")
    return loaded.eval().requires_grad_(False)


class CallbackGuide:
    """A callback's guide and its scale w; loaded and checked when fitting or validating
    starts, so a guide that does not fit fails before the first step.

    Args:
        guide: a weaker diffusion model of the same data, path and conditioning (in YAML:
            ``{class_path: diffusion_pl.checkpoints.Checkpoint, init_args: {path: RUN.ckpt}}``,
            an earlier checkpoint of a run, or a smaller net); None: no guide.
        guidance_scale: autoguidance's w (1 the model alone, > 1 guided); required with
            ``guide`` and only with it (the model's own ``guidance_scale`` is its
            classifier-free guidance scale).
        owner: the callback's name, for errors.
    """

    def __init__(self, guide: Teacher | None, guidance_scale: float | None, owner: str) -> None:
        if (guide is None) != (guidance_scale is None):
            raise ValueError(
                f"{owner}: guide and guidance_scale go together (autoguidance's guide and its "
                f"w), got guide={guide}, guidance_scale={guidance_scale!r}; the model's own "
                "guidance_scale already sets classifier-free guidance"
            )
        if guidance_scale is not None and not math.isfinite(guidance_scale):
            raise ValueError(
                f"{owner}: guidance_scale must be a finite number, got {guidance_scale}"
            )
        self.teacher, self.guidance_scale = guide, guidance_scale
        self.guide: DiffusionModule | None = None

    def load(self, module: LightningModule) -> None:
        """Load the guide (once) and check it against ``module``, the model being trained."""
        if self.teacher is None or self.guide is not None:
            return
        self.guide = load_guide(
            self.teacher, module, model_name="the model being trained", map_location=module.device
        )

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~diffusion_pl.generate.generate`: the guide and its w,
        or none."""
        if self.teacher is None:
            return {}
        if self.guide is None:
            raise ValueError(f"the guide {self.teacher} is loaded by setup(): call it first")
        return {"guide": self.guide, "guidance_scale": self.guidance_scale}
