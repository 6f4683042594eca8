"""The guide of autoguidance for the callbacks that sample while training (FID, sample grids).

Why the guide is a callback argument and not a model argument: a guide is a choice of how to
sample, like the sampler of the FID callback, not part of the model. Kept out of the model's
init args, it is not recorded in the model's hparams, so every checkpoint (older ones included)
loads as before, and a later ``diffusion-pl sample`` of the run does not depend on the guide's
file; ``diffusion-pl sample --guide_ckpt`` and ``fid --guide_ckpt`` name one when wanted.
"""

from __future__ import annotations

import math
from typing import Any

from lightning import LightningModule

__all__ = ["CallbackGuide"]


class CallbackGuide:
    """A guide named by its checkpoint, with its scale w; loaded and checked when fitting or
    validating starts, so a guide that does not fit fails before the first step.

    Args:
        guide_ckpt: checkpoint of a weaker diffusion model of the same data, path and
            conditioning (an earlier checkpoint of a run, or a smaller net); None: no guide.
        guidance_scale: autoguidance's w (1 the model alone, > 1 guided); required with
            ``guide_ckpt`` and only with it (the model's own ``guidance_scale`` is its
            classifier-free guidance scale).
        owner: the callback's name, for errors.
    """

    def __init__(self, guide_ckpt: str | None, guidance_scale: float | None, owner: str) -> None:
        if (guide_ckpt is None) != (guidance_scale is None):
            raise ValueError(
                f"{owner}: guide_ckpt and guidance_scale go together (autoguidance's guide and "
                f"its w), got guide_ckpt={guide_ckpt!r}, guidance_scale={guidance_scale!r}; the "
                "model's own guidance_scale already sets classifier-free guidance"
            )
        if guidance_scale is not None and not math.isfinite(guidance_scale):
            raise ValueError(
                f"{owner}: guidance_scale must be a finite number, got {guidance_scale}"
            )
        self.guide_ckpt, self.guidance_scale = guide_ckpt, guidance_scale
        self.guide: LightningModule | None = None

    def load(self, module: LightningModule) -> None:
        """Load the guide (once) and check it against ``module``, the model being trained."""
        if self.guide_ckpt is None or self.guide is not None:
            return
        from diffusion_pl.checkpoints import load_guide  # checkpoints imports the callbacks

        self.guide = load_guide(
            self.guide_ckpt,
            module,
            model_name="the model being trained",
            map_location=module.device,
        )

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~diffusion_pl.generate.generate`: the guide and its w,
        or none."""
        if self.guide_ckpt is None:
            return {}
        if self.guide is None:
            raise ValueError(f"the guide {self.guide_ckpt} is loaded by setup(): call it first")
        return {"guide": self.guide, "guidance_scale": self.guidance_scale}
