"""Post-hoc EMA (EDM2): track power-function averages, snapshot them, choose the width later."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from torch import Tensor

from diffusion_pl.callbacks.run_paths import run_dir
from diffusion_pl.checkpoint_io import AtomicCheckpointIO, remove_stale_temporaries
from diffusion_pl.phema import (
    SNAPSHOT_FOLDER,
    check_sigma_rel,
    gamma_of_sigma_rel,
    power_beta,
    snapshot_name,
)

__all__ = ["PostHocEMA"]


class PostHocEMA(Callback):
    """Power-function averages of the weights (Karras et al. 2024, EDM2, Sec. 3), snapshotted.

    For each width σ_rel the average is updated after every optimizer step t = 1, 2, … by
    θ̂ ← β_t θ̂ + (1 − β_t) θ with β_t = (1 − 1/t)^{γ+1}, γ solving σ_rel² = (γ + 1) / ((γ + 2)²
    (γ + 3)) (:mod:`diffusion_pl.phema`); t counts optimizer steps, so β_1 = 0 and the average
    weighs θ_1 … θ_t like the profile (γ + 1) τ^γ / t^{γ+1} over [0, t], whose width grows
    with the run while its width relative to t stays σ_rel. Every ``snapshot_every`` steps,
    and when training ends, the averages are written (rank 0, atomically, averaged parameters
    only) to ``<log dir>/phema/phema-<step>.pt``; ``diffusion-pl phema`` rebuilds the average
    of any other σ_rel from them.

    The averages are kept in float32 (float64 weights stay float64) on the module's device,
    beside the weights the module trains with; this callback never swaps them into the module,
    so it works beside :class:`~diffusion_pl.callbacks.EMA`, whose average validation, sample
    grids and FID keep using. Under DDP every rank holds the same averages (the weights are
    equal after every step). They are saved in the checkpoint, so a resumed run
    (``--ckpt_path last``) continues them and writes the snapshots the uninterrupted run would
    have written; the run's id (kept in every snapshot) tells ``diffusion-pl phema`` which
    snapshots belong to it.

    Args:
        sigma_rels: widths of the tracked averages, each in (0, 0.3003); EDM2 tracks 0.05 and
            0.10.
        snapshot_every: period of the snapshots in optimizer steps. Each holds one copy of
            the weights per σ_rel; the rebuilt average's profile error (printed by
            ``diffusion-pl phema``) falls as snapshots get denser: from 10 snapshots of 0.05
            and 0.10 over the run, 0.7 % for σ_rel 0.08, 2 % for 0.04 and 0.15, 20 % for
            0.02; from 20, 0.2 %, 0.7 %, 0.6 % and 9 %.
    """

    def __init__(self, sigma_rels: list[float] | None = None, snapshot_every: int = 1000) -> None:
        sigma_rels = [0.05, 0.10] if sigma_rels is None else list(sigma_rels)
        if not sigma_rels or len(set(sigma_rels)) != len(sigma_rels):
            raise ValueError(
                f"sigma_rels must list distinct widths, e.g. [0.05, 0.10], got {sigma_rels}"
            )
        for sigma_rel in sigma_rels:
            check_sigma_rel(sigma_rel, "sigma_rels")
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1 (optimizer steps), got {snapshot_every}")
        self.sigma_rels, self.snapshot_every = sigma_rels, snapshot_every
        self.gammas = [gamma_of_sigma_rel(s) for s in sigma_rels]
        self.averages: list[dict[str, Tensor]] | None = None
        self.step = 0
        self.run_id: str | None = None
        self.written: list[Path] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Name the run (rank 0's id on every rank); a resumed run's checkpoint replaces it."""
        if stage == "fit" and self.run_id is None:
            self.run_id = trainer.strategy.broadcast(uuid.uuid4().hex, src=0)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the averages at the weights (a fresh run), or bring the restored ones over."""
        params = dict(pl_module.named_parameters())
        if self.averages is None:
            if trainer.global_step > 0:
                raise ValueError(
                    f"PostHocEMA joins this run at step {trainer.global_step}, but its averages "
                    "span the run from step 1 and the checkpoint holds none: start a new run "
                    "with the callback, or resume without it"
                )
            self.averages = [
                {name: _fp32(p.detach()).clone() for name, p in params.items()}
                for _ in self.sigma_rels
            ]
        elif self.step != trainer.global_step or set(self.averages[0]) != set(params):
            raise ValueError(
                f"PostHocEMA's restored averages (step {self.step}, {len(self.averages[0])} "
                f"tensors) do not fit this run (step {trainer.global_step}, {len(params)} "
                "parameters): resume from a checkpoint of this run"
            )
        else:
            self.averages = [
                {name: a.to(params[name].device) for name, a in average.items()}
                for average in self.averages
            ]
        if trainer.is_global_zero:
            remove_stale_temporaries(self.folder(trainer))

    def folder(self, trainer: Trainer) -> Path:
        """Where the snapshots go: ``<log dir>/phema``."""
        return run_dir(trainer) / SNAPSHOT_FOLDER

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        step = trainer.global_step
        if step <= self.step:  # no optimizer step (gradient accumulation)
            return
        self.step = step
        params = dict(pl_module.named_parameters())
        for gamma, average in zip(self.gammas, self.averages, strict=True):
            weight = 1.0 - power_beta(gamma, step)
            for name, a in average.items():
                a.lerp_(params[name].detach().to(a.dtype), weight)
        if step % self.snapshot_every == 0:
            self.snapshot(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Snapshot the final step too (unless it fell on the period): the run's end."""
        if self.step > 0 and self.step % self.snapshot_every:
            self.snapshot(trainer)

    def snapshot(self, trainer: Trainer) -> None:
        """Write the averages of this step (rank 0), in float32, atomically."""
        if not trainer.is_global_zero:
            return
        path = self.folder(trainer) / snapshot_name(self.step)
        averages = [{k: v.detach().cpu() for k, v in a.items()} for a in self.averages]
        AtomicCheckpointIO().save_checkpoint(
            {"step": self.step, "run_id": self.run_id, "sigma_rels": list(self.sigma_rels),
             "gammas": list(self.gammas), "averages": averages}, path,
        )  # fmt: skip
        self.written.append(path)

    # --- checkpoint -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"sigma_rels": list(self.sigma_rels), "step": self.step, "run_id": self.run_id,
                "averages": self.averages}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = list(state_dict["sigma_rels"])
        if saved != self.sigma_rels:
            raise ValueError(
                f"the checkpoint's PostHocEMA tracks sigma_rels {saved}, this config's "
                f"{self.sigma_rels}: a resumed run continues the same averages, so set "
                f"sigma_rels: {saved}"
            )
        self.step, self.run_id = int(state_dict["step"]), state_dict["run_id"]
        self.averages = state_dict["averages"]


def _fp32(p: Tensor) -> Tensor:
    """``p`` in float32, unless it is float64."""
    return p if p.dtype == torch.float64 else p.float()
