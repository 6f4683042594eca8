"""An autoencoder's pictures and rFID during training: :class:`~diffusion_pl.callbacks.SampleGrid`
and :class:`~diffusion_pl.callbacks.FID` with reconstructions of held-out images in place of
samples (their schedules, weights choice, logging and checkpoint state unchanged)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from diffusion_pl.callbacks.ema import Weights, weights_in_use
from diffusion_pl.callbacks.fid import FID
from diffusion_pl.callbacks.run_paths import run_dir
from diffusion_pl.callbacks.sample_grid import SampleGrid
from diffusion_pl.data import DiffusionDataModule
from diffusion_pl.data.sources import Split
from diffusion_pl.metrics import FIDEvaluator
from diffusion_pl.visualize import save_image_grid

__all__ = ["ReconstructionFID", "ReconstructionGrid", "paired_rows", "reconstruction_fid"]


def paired_rows(x: Tensor, x_hat: Tensor, columns: int) -> Tensor:
    """Images and their reconstructions as alternating grid rows of ``columns``: row 2k holds
    originals k·c … k·c + c − 1, row 2k + 1 their reconstructions (a last, shorter row is
    dropped)."""
    if x.shape != x_hat.shape:
        raise ValueError(f"originals {tuple(x.shape)} and reconstructions {tuple(x_hat.shape)}")
    rows = len(x) // columns
    if rows == 0:
        raise ValueError(f"{len(x)} images do not fill one row of {columns}")
    n = rows * columns
    grid = (x[:n].unflatten(0, (rows, columns)), x_hat[:n].unflatten(0, (rows, columns)))
    return torch.stack(grid, 1).flatten(0, 2)


class ReconstructionGrid(SampleGrid):
    """Pictures of the first ``num_samples`` val images (rows of originals) above their
    reconstructions D(μ(x)), every ``every_n_steps`` steps and at the end of fitting, under
    ``<log_dir>/samples/`` (and TensorBoard), like :class:`~diffusion_pl.callbacks.SampleGrid`.

    Args:
        num_samples: images per picture (rounded down to full rows of ⌈√num_samples⌉).
        every_n_steps: period in optimizer steps; 0 draws only at the end of fitting.
        weights: ``ema`` and/or ``raw`` (as SampleGrid's).
    """

    def __init__(
        self, num_samples: int = 64, every_n_steps: int = 0, weights: list[Weights] | None = None
    ) -> None:
        super().__init__(num_samples, every_n_steps, weights=weights)

    @rank_zero_only
    def draw(self, trainer: Trainer, pl_module: LightningModule, name: str) -> Path:
        """Reconstruct and save ``samples/<name>.png`` (``<name>_raw.png``, …)."""
        datamodule = trainer.datamodule
        n = min(self.num_samples, len(datamodule.dataset("val")))
        x = datamodule.real_samples("val", n).to(pl_module.device)
        columns = max(1, math.ceil(math.sqrt(n)))
        for i, weights in enumerate(self.weights):
            suffix = "" if i == 0 else f"_{weights}"
            with weights_in_use(trainer, pl_module, weights), torch.no_grad():
                x_hat = pl_module.reconstruct(x).clamp(-1, 1)
            path = run_dir(trainer) / "samples" / f"{name}{suffix}.png"
            self.last_path = save_image_grid(paired_rows(x, x_hat, columns), path, nrow=columns)
            self._log_image(trainer, f"reconstructions{suffix}", self.last_path)
        return self.last_path


@torch.no_grad()
def reconstruction_fid(
    evaluator: FIDEvaluator, module: nn.Module, datamodule: DiffusionDataModule
) -> dict[str, float]:
    """rFID: FID of the reconstructions D(μ(x)) of the first ``evaluator.num_samples`` images
    of its split against that split's reference statistics; each rank scores its chunks."""
    evaluator.to(module.device)
    evaluator.prepare_reference(datamodule)
    data = datamodule.images(evaluator.split)
    if evaluator.num_samples > len(data):
        raise ValueError(
            f"rFID num_samples={evaluator.num_samples} exceeds the {len(data)} images of the "
            f"{evaluator.split} split: set num_samples <= {len(data)}"
        )
    reconstructions = []
    for start, n in evaluator.chunks():
        x = torch.stack([data[i][0] for i in range(start, start + n)]).to(module.device)
        reconstructions.append(module.reconstruct(x).clamp(-1, 1))
    return evaluator.score_images(torch.cat(reconstructions))


class ReconstructionFID(FID):
    """rFID after validation: :class:`~diffusion_pl.callbacks.FID` of reconstructions of the
    first ``num_samples`` images of ``split``, logged as ``val/rfid`` (``val/rfid_raw``, …).

    Args:
        feature: ``"digits"``, ``"inception"`` or an ``nn.Module`` (class_path in YAML).
        num_samples: images reconstructed per evaluation (at most the split's size).
        every_n_validations: score after every n-th validation run.
        split: the images reconstructed, and the reference statistics.
        batch_size: images per batch.
        weights: ``ema`` and/or ``raw``.
        cache_dir: reference statistics cache (see ``FIDEvaluator``).
    """

    def __init__(
        self,
        feature: str | nn.Module = "digits",
        num_samples: int = 360,
        every_n_validations: int = 1,
        split: Split = "val",
        batch_size: int = 250,
        weights: list[Weights] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(feature, num_samples, every_n_validations, split, None, batch_size,
                         weights=weights, cache_dir=cache_dir)  # fmt: skip

    headline = "rfid"

    def scores(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """The rFID of ``pl_module``'s reconstructions, with the weights in use."""
        return {"rfid": reconstruction_fid(self.evaluator, pl_module, trainer.datamodule)["fid"]}
