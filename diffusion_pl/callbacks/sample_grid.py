"""Periodic sample pictures with fixed seeds, so pictures are comparable over training."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from diffusion_pl.visualize import save_samples_figure

__all__ = ["SampleGrid", "run_dir"]


def run_dir(trainer: Trainer) -> Path:
    """The run's output folder: the logger's versioned log dir, else the root dir."""
    return Path(trainer.log_dir or trainer.default_root_dir)


class SampleGrid(Callback):
    """Draw ``num_samples`` samples every ``every_n_steps`` steps and at the end of fitting.

    Images become a PNG grid, 2-D points a scatter plot over validation data, both under
    ``<log_dir>/samples/``. The seed is the same every time, so pictures show training
    progress and not sampling noise.

    Args:
        num_samples: samples per picture.
        every_n_steps: period in optimizer steps; 0 draws only at the end of fitting.
        seed: seed of the sampling generator.
    """

    def __init__(self, num_samples: int = 64, every_n_steps: int = 0, seed: int = 0) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples must be > 0, got {num_samples}")
        if every_n_steps < 0:
            raise ValueError(
                f"every_n_steps must be >= 0 (0 = only at the end), got {every_n_steps}"
            )
        self.num_samples, self.every_n_steps, self.seed = num_samples, every_n_steps, seed
        self.last_path: Path | None = None

    @rank_zero_only
    def draw(self, trainer: Trainer, pl_module: LightningModule, name: str) -> Path:
        """Sample with the fixed seed and save the picture as ``samples/<name>.png``."""
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        x = pl_module.sample(self.num_samples, generator=generator)
        reference = None
        datamodule = getattr(trainer, "datamodule", None)
        if x.ndim == 2 and hasattr(datamodule, "real_samples"):
            reference = datamodule.real_samples("val", min(2000, len(datamodule.dataset("val"))))
        path = run_dir(trainer) / "samples" / f"{name}.png"
        self.last_path = save_samples_figure(
            x, path, reference, title=f"step {trainer.global_step}"
        )
        return self.last_path

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0:
            self.draw(trainer, pl_module, f"step_{step:07d}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.draw(trainer, pl_module, "final")
