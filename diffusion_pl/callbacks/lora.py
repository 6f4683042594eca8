"""Writing a LoRA run's adapters file when its fit ends."""

from __future__ import annotations

from pathlib import Path

from lightning import Callback, LightningModule, Trainer

from diffusion_pl.callbacks.run_paths import run_dir
from diffusion_pl.formulations import DiffusionModule

__all__ = ["SaveAdapters"]


class SaveAdapters(Callback):
    """At the end of a fit with ``lora:``, write the adapters alone to ``<log_dir>/adapters.pt``.

    ``diffusion-pl fit`` adds it to every run; it does nothing for a model without ``lora:``.
    The file (:class:`~diffusion_pl.lora.Adapters`) holds the adapters' weights as the model
    holds them when fitting ends — the moving average when the run has the EMA callback (which
    leaves it in the model), as the checkpoint's ``state_dict`` does —, the LoRA setting, the
    base checkpoint's path and the hash of the base's weights. It is written on rank 0,
    atomically. A run stopped early (SIGTERM) writes it when its resumed run ends.

    Attributes:
        path: the file written, None before.
    """

    def __init__(self) -> None:
        self.path: Path | None = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not isinstance(pl_module, DiffusionModule) or pl_module.lora is None:
            return
        if trainer.is_global_zero:
            folder = run_dir(trainer)
            folder.mkdir(parents=True, exist_ok=True)
            self.path = pl_module.adapters(trainer.global_step).save(folder / "adapters.pt")
