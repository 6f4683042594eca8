"""Periodic FID (and KID) during training, logged as ``val/fid`` so it can drive checkpoints."""

from __future__ import annotations

from lightning import LightningModule, Trainer
from torch import nn

from diffusion_pl.callbacks.ema import Weights, weights_in_use, weights_list
from diffusion_pl.callbacks.guide import CallbackGuide, GuidedCallback
from diffusion_pl.callbacks.lora_sampling import CallbackAdapters
from diffusion_pl.data.sources import Split
from diffusion_pl.metrics.fid import FIDEvaluator
from diffusion_pl.objectives import Teacher
from diffusion_pl.samplers import Sampler

__all__ = ["FID"]


class FID(GuidedCallback):
    """Score ``num_samples`` generated images against a data split after validation.

    Every rank draws its share of the samples (see :class:`~diffusion_pl.metrics.FIDEvaluator`)
    and the feature statistics are summed across ranks, so the score is the same with any
    number of processes. Logs ``val/fid`` (and ``val/kid``) for the first entry of ``weights``
    and ``val/fid_<weights>`` for the others, e.g. ``val/fid_raw``; ``ModelCheckpoint`` can
    monitor ``val/fid`` with ``mode: min``.

    Args:
        feature: ``"digits"``, ``"inception"`` or an ``nn.Module`` (class_path in YAML).
        num_samples: generated images per evaluation.
        every_n_validations: score after every n-th validation run (sanity checks excluded).
        split: data split of the reference statistics.
        sampler: sampler for the samples; default: the model's.
        batch_size: images per sampling batch.
        kid: also log KID.
        weights: which weights to score: ``ema`` (the default when an EMA callback is on;
            the raw weights otherwise) and/or ``raw``.
        cache_dir: reference statistics cache (see ``FIDEvaluator``).
        seed: seed of the sampling generators (the same samples' noise every time).
        guide: the guide of autoguidance (:class:`~.guide.CallbackGuide`), e.g. ``{class_path:
            diffusion_pl.checkpoints.Checkpoint, init_args: {path: RUN.ckpt}}``, or the run
            itself at an early step (:class:`~.guide.EarlierSelf`; unguided before that
            step): the FID is then the guided samples'; None scores the model as it samples
            by itself.
        guidance_scale: autoguidance's w; required with ``guide`` and only with it.
        lora: LoRA adapters added to the model for its samples, ``PATH[:SCALE]`` each as
            ``diffusion-pl sample --lora`` (e.g. an LCM-LoRA on a style LoRA being trained);
            each trained on the model's base weights (checked when training starts). None:
            the model as it is.
    """

    def __init__(
        self,
        feature: str | nn.Module = "digits",
        num_samples: int = 2000,
        every_n_validations: int = 1,
        split: Split = "val",
        sampler: Sampler | None = None,
        batch_size: int = 250,
        kid: bool = False,
        weights: list[Weights] | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
        guide: Teacher | None = None,
        guidance_scale: float | None = None,
        lora: list[str] | None = None,
    ) -> None:
        if every_n_validations <= 0:
            raise ValueError(f"every_n_validations must be > 0, got {every_n_validations}")
        weights = weights_list(weights)
        self.guide = CallbackGuide(guide, guidance_scale, "FID")
        self.adapters = CallbackAdapters(lora, "FID")
        self.evaluator = FIDEvaluator(
            feature, split, num_samples, batch_size, kid=kid, cache_dir=cache_dir, seed=seed
        )
        self.every_n_validations, self.sampler, self.weights = every_n_validations, sampler, weights
        self.validations = 0
        self.last: dict[str, float] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.guide.load(pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.adapters.check(pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        self.guide.update(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.guide.update(trainer, pl_module)
        self.validations += 1
        if self.validations % self.every_n_validations:
            return
        for i, weights in enumerate(self.weights):
            suffix = "" if i == 0 else f"_{weights}"
            with weights_in_use(trainer, pl_module, weights):
                scores = self.scores(trainer, pl_module)
            for name, value in scores.items():
                self.last[f"val/{name}{suffix}"] = value
                pl_module.log(
                    f"val/{name}{suffix}", value, prog_bar=name == self.headline and i == 0
                )

    headline = "fid"
    """The score shown on the progress bar (of the first weights)."""

    def scores(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """The scores of ``pl_module`` with the weights in use, by metric name."""
        with self.adapters.applied(pl_module, self.sampler) as model:
            return self.evaluator.evaluate(
                model, trainer.datamodule, self.sampler, **self.guide.sampling()
            )

    def state_dict(self) -> dict[str, int]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.validations = state_dict["validations"]
