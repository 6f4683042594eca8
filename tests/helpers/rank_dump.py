"""A test-only callback for multi-process runs: each rank saves its raw and averaged weights."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer

from diffusion_pl.callbacks import weights_in_use


class DumpWeights(Callback):
    """At the end of fitting, write ``rank<R>.pt`` = {"raw": state, "ema": state} to ``out_dir``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        weights = {}
        for which in ("raw", "ema"):
            with weights_in_use(trainer, pl_module, which):
                weights[which] = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(weights, self.out_dir / f"rank{trainer.global_rank}.pt")
