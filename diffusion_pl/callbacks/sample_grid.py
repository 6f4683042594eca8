"""Periodic sample pictures with fixed seeds, so pictures are comparable over training."""

from __future__ import annotations

from pathlib import Path

from lightning import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from diffusion_pl.callbacks.ema import Weights, weights_in_use, weights_list
from diffusion_pl.callbacks.guide import CallbackGuide, GuidedCallback
from diffusion_pl.callbacks.lora_sampling import CallbackAdapters
from diffusion_pl.callbacks.run_paths import run_dir
from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.generate import every_class, generate
from diffusion_pl.objectives import Teacher
from diffusion_pl.teleport import attach_data_moments
from diffusion_pl.visualize import save_samples_figure

__all__ = ["SampleGrid"]


class SampleGrid(GuidedCallback):
    """Draw ``num_samples`` samples every ``every_n_steps`` steps and at the end of fitting.

    Images become a PNG grid, 2-D points a scatter plot over validation data, both under
    ``<log_dir>/samples/`` and, when a TensorBoard logger is on, in its Images tab. Samples of
    autoencoder codes are decoded to images first (the DataModule's ``decode``). The seed is
    the same every time, so pictures show training progress and not sampling noise. A
    class-conditional model draws the classes in turn (0, 1, …, K−1, 0, …), one per grid cell.
    Steps count optimizer steps: with gradient accumulation a step draws once, not once per
    micro-batch.

    Args:
        num_samples: samples per picture.
        every_n_steps: period in optimizer steps; 0 draws only at the end of fitting.
        seed: seed of the sampling generator.
        weights: which weights draw: ``ema`` (the moving average when an EMA callback is on,
            else the raw weights) and/or ``raw``; a second entry gets its own picture.
        guide: the guide of autoguidance (:class:`~.guide.CallbackGuide`), e.g. ``{class_path:
            diffusion_pl.checkpoints.Checkpoint, init_args: {path: RUN.ckpt}}``, or the run
            itself at an early step (:class:`~.guide.EarlierSelf`; unguided before that
            step); None draws the model as it samples by itself.
        guidance_scale: autoguidance's w; required with ``guide`` and only with it.
        lora: LoRA adapters added to the model for its samples, ``PATH[:SCALE]`` each as
            ``diffusion-pl sample --lora`` (e.g. an LCM-LoRA on a style LoRA being trained);
            each trained on the model's base weights (checked when training starts). None:
            the model as it is.
    """

    def __init__(
        self,
        num_samples: int = 64,
        every_n_steps: int = 0,
        seed: int = 0,
        weights: list[Weights] | None = None,
        guide: Teacher | None = None,
        guidance_scale: float | None = None,
        lora: list[str] | None = None,
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples must be > 0, got {num_samples}")
        if every_n_steps < 0:
            raise ValueError(
                f"every_n_steps must be >= 0 (0 = only at the end), got {every_n_steps}"
            )
        weights = weights_list(weights)
        self.num_samples, self.every_n_steps, self.seed = num_samples, every_n_steps, seed
        self.weights = weights
        self.guide = CallbackGuide(guide, guidance_scale, "SampleGrid")
        self.adapters = CallbackAdapters(lora, "SampleGrid")
        self.last_path: Path | None = None
        self._step_seen = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.guide.load(pl_module)

    @rank_zero_only
    def draw(self, trainer: Trainer, pl_module: LightningModule, name: str) -> Path:
        """Sample with the fixed seed and save ``samples/<name>.png`` (``<name>_raw.png``, …)."""
        reference = None
        datamodule = getattr(trainer, "datamodule", None)
        if len(pl_module.data_shape) == 1 and hasattr(datamodule, "real_samples"):
            reference = datamodule.real_samples("val", min(2000, len(datamodule.dataset("val"))))
        if isinstance(datamodule, DiffusionDataModule):
            attach_data_moments(pl_module, pl_module.sampler, datamodule)
        for i, weights in enumerate(self.weights):
            suffix = "" if i == 0 else f"_{weights}"
            with weights_in_use(trainer, pl_module, weights), self.adapters.applied(pl_module):
                n, classes = self.num_samples, every_class(pl_module)
                x = generate(
                    pl_module, n, seed=self.seed, batch_size=n, class_labels=classes,
                    **self.guide.sampling(),
                )  # fmt: skip
                if hasattr(datamodule, "decode"):
                    x = datamodule.decode(x.to(pl_module.device)).cpu()
            path = run_dir(trainer) / "samples" / f"{name}{suffix}.png"
            title = f"step {trainer.global_step}" + (f" ({weights} weights)" if suffix else "")
            self.last_path = save_samples_figure(x, path, reference, title=title)
            self._log_image(trainer, f"samples{suffix}", self.last_path)
        return self.last_path

    @staticmethod
    def _log_image(trainer: Trainer, tag: str, path: Path) -> None:
        """Show the saved picture in TensorBoard's Images tab, if that logger is on."""
        from torchvision.io import ImageReadMode, read_image

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                image = read_image(str(path), ImageReadMode.RGB)
                logger.experiment.add_image(tag, image, trainer.global_step)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._step_seen = trainer.global_step  # 0, or the step a resumed run starts from
        self.adapters.check(pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        self.guide.update(trainer, pl_module)
        step = trainer.global_step
        if step == self._step_seen:  # a micro-batch of gradient accumulation: no step yet
            return
        self._step_seen = step
        if self.every_n_steps and step % self.every_n_steps == 0:
            self.draw(trainer, pl_module, f"step_{step:07d}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.draw(trainer, pl_module, "final")
