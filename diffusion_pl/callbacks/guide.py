"""The guide of autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version
of Itself"): a :class:`~diffusion_pl.objectives.Teacher` loaded and checked against the model it
guides, for the callbacks that sample while training (FID, sample grids) and the commands.

Why the guide is a callback argument and not a model argument: a guide is a choice of how to
sample, like the sampler of the FID callback, not part of the model. Kept out of the model's
init args, it is not recorded in the model's hparams, so every checkpoint (older ones included)
loads as before, and a later ``diffusion-pl sample`` of the run does not depend on the guide's
file; ``diffusion-pl sample --guide_ckpt`` and ``fid --guide_ckpt`` name one when wanted.

The cheapest guide is the run itself, less trained (:class:`EarlierSelf`): the run writes its
weights at an early step as a checkpoint beside ``last.ckpt``, and the callbacks that name it
sample guided from then on.
"""

from __future__ import annotations

import math
import weakref
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from diffusion_pl.callbacks.run_paths import last_checkpoint_path
from diffusion_pl.checkpoint_io import Weights
from diffusion_pl.checkpoints import Checkpoint
from diffusion_pl.formulations import DiffusionModule, check_guide
from diffusion_pl.objectives import Teacher

__all__ = ["CallbackGuide", "EarlierSelf", "GuidedCallback", "load_guide"]


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


class EarlierSelf(Checkpoint):
    """The run being trained, as it was at training step ``step``: autoguidance's guide at no
    training cost.

    Karras et al. 2024 (Sec. 3) guide a model with a weaker one of the same task; a shorter
    training of the same net is such a model, and this run's own weights at an early step are
    one that needs nothing trained besides (on the digits, the EMA at a quarter of the run,
    w = 1.5, takes rectified flow's FID from 10.0 to 6.3: benchmarks/RESULTS.md, issue 16).
    When training reaches ``step``, the run writes its full state as
    ``guide-step=<step>.ckpt`` beside ``last.ckpt``; the callbacks that name this guide sample
    guided from then on and unguided before, and ``diffusion-pl sample/fid --guide_ckpt`` take
    the file after the run. A run resumed past ``step`` reads the file it wrote (its
    checkpoints record where). The weights are those the callbacks see at the end of that
    step: with the EMA callback listed after them, its average of the steps before.

    In YAML, as a callback's guide: ``{class_path: diffusion_pl.callbacks.EarlierSelf,
    init_args: {step: 250}}``.

    Args:
        step: the training step (optimizer steps) whose weights guide; > 0, and below the
            run's ``max_steps`` for the guide to be used.
        weights: ``ema`` (the moving average, when the run keeps one) or ``raw``.
    """

    def __init__(self, step: int, weights: Weights = "ema") -> None:
        if step <= 0:
            raise ValueError(f"EarlierSelf: step must be > 0 (a training step), got {step}")
        super().__init__("", weights)
        self.step = step

    def bind(self, trainer: Trainer) -> Path:
        """The file of this run's guide, beside its ``last.ckpt`` (and remember it)."""
        path = last_checkpoint_path(trainer).parent / f"guide-step={self.step}.ckpt"
        self.path = str(path)
        return path

    def __str__(self) -> str:
        return self.path or f"this run at step {self.step}"


GUIDES_KEY = "earlier_self_guides"
"""Where checkpoints record the :class:`EarlierSelf` files their run wrote or read, by step."""

_WRITTEN: weakref.WeakKeyDictionary[Trainer, set[Path]] = weakref.WeakKeyDictionary()
"""The guide files each trainer wrote, so that two callbacks naming the same step write once
(the same decision on every rank: it depends on the steps alone)."""


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
        self.teacher, self.guidance_scale, self.owner = guide, guidance_scale, owner
        self.guide: DiffusionModule | None = None
        self.recorded: Path | None = None
        self.missing_warned = False

    def load(self, module: LightningModule) -> None:
        """Load the guide (once) and check it against ``module``, the model being trained; an
        :class:`EarlierSelf` is loaded by :meth:`update` when the run has written it."""
        if self.teacher is None or self.guide is not None or isinstance(self.teacher, EarlierSelf):
            return
        self.guide = load_guide(
            self.teacher, module, model_name="the model being trained", map_location=module.device
        )

    def update(self, trainer: Trainer, module: LightningModule) -> None:
        """For an :class:`EarlierSelf` guide: write it when training reaches its step (a
        collective save: every rank calls this at the same step), and load it once the run
        is at or past that step: this run's file, else the one its checkpoint recorded (a
        resumed run logs to a new folder). Nothing to do before the step, once loaded, or
        once the file was found missing past the step (it is written only at the step)."""
        teacher = self.teacher
        if not isinstance(teacher, EarlierSelf) or self.guide is not None or self.missing_warned:
            return
        if trainer.global_step < teacher.step:
            return
        own = teacher.bind(trainer)
        written = _WRITTEN.setdefault(trainer, set())
        if trainer.training and trainer.global_step == teacher.step and own not in written:
            trainer.save_checkpoint(own)
            written.add(own)
        path = own if own.exists() else self.recorded
        if path is not None and path.exists():
            teacher.path = str(path)
            self.guide = load_guide(
                teacher, module, model_name="the model being trained", map_location=module.device
            )
        elif not self.missing_warned:
            self.missing_warned = True
            rank_zero_warn(
                f"{self.owner}: the guide {own} is missing (this run is past step "
                f"{teacher.step}, where it writes it; was the guide added on resume?): "
                "sampling unguided"
            )

    def save(self, checkpoint: dict[str, Any]) -> None:
        """Record a loaded :class:`EarlierSelf` file in ``checkpoint``, for a resumed run."""
        if isinstance(self.teacher, EarlierSelf) and self.guide is not None:
            checkpoint.setdefault(GUIDES_KEY, {})[self.teacher.step] = self.teacher.path

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Read back the file :meth:`save` recorded for this guide's step, if any."""
        if isinstance(self.teacher, EarlierSelf):
            path = checkpoint.get(GUIDES_KEY, {}).get(self.teacher.step)
            self.recorded = None if path is None else Path(path)

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~diffusion_pl.generate.generate`: the guide and its w,
        or none (no guide, or an :class:`EarlierSelf` not written yet)."""
        if self.teacher is None:
            return {}
        if self.guide is None:
            if isinstance(self.teacher, EarlierSelf):
                return {}
            raise ValueError(f"the guide {self.teacher} is loaded by setup(): call it first")
        return {"guide": self.guide, "guidance_scale": self.guidance_scale}


class GuidedCallback(Callback):
    """A callback that samples with a :class:`CallbackGuide` (``self.guide``): its checkpoints
    record an :class:`EarlierSelf` file, and a resumed run reads the record back."""

    guide: CallbackGuide

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.guide.save(checkpoint)

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.guide.restore(checkpoint)
