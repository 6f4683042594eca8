"""How a ``diffusion-pl fit`` run ends: where its outputs are, and the command that resumes it."""

from __future__ import annotations

from pathlib import Path

from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from diffusion_pl.callbacks import FID, EarlierSelf, PostHocEMA, SampleGrid, SaveAdapters, run_dir

__all__ = ["print_outputs", "resume_hint"]


def resume_hint(trainer: Trainer) -> str:
    """The command that resumes this run: its own saved config.yaml, with ``--ckpt_path last``."""
    config = run_dir(trainer) / "config.yaml"
    given = config if config.is_file() else "<this run's config>"
    return f"diffusion-pl fit --config {given} --ckpt_path last"


def print_outputs(trainer: Trainer, state: str) -> None:
    """Print where the run's outputs are and how it ended (rank 0 only).

    Args:
        trainer: the trainer of the run.
        state: how the run ended, e.g. ``finished at step 3000``.
    """
    if not trainer.is_global_zero:
        return
    lines = [f"state:       {state}", f"logs:        {run_dir(trainer)}"]
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint) and (ckpt.last_model_path or ckpt.best_model_path):
        lines.append(f"checkpoint:  {ckpt.last_model_path or ckpt.best_model_path}")
    exported = getattr(trainer.lightning_module, "exported", None)
    if exported is not None:
        lines.append(f"autoencoder: {exported} (encode with `diffusion-pl encode --autoencoder "
                     f"{exported}`)")  # fmt: skip
    shown: list[Path] = []
    for callback in trainer.callbacks:
        if isinstance(callback, SampleGrid) and callback.last_path is not None:
            lines.append(f"samples:     {callback.last_path}")
        if isinstance(callback, PostHocEMA) and callback.written:
            lines.append(f"phema:       {callback.written[-1].parent} (post-hoc EMA snapshots; "
                         "rebuild any width with `diffusion-pl phema`)")  # fmt: skip
        guide = guide_file(callback) if isinstance(callback, SampleGrid | FID) else None
        if guide is not None and guide not in shown:
            shown.append(guide)
            lines.append(f"guide:       {shown[-1]} (autoguidance: `diffusion-pl sample` or "
                         f"`fid` with --guide_ckpt PATH --guidance_scale "
                         f"{callback.guide.guidance_scale})")  # fmt: skip
        if isinstance(callback, SaveAdapters) and callback.path is not None:
            lines.append(f"adapters:    {callback.path} (LoRA adapters alone: sample with "
                         "--ckpt_path BASE --lora PATH)")  # fmt: skip
    print("\n".join(["", "diffusion-pl outputs", *lines]), flush=True)


def guide_file(callback: SampleGrid | FID) -> Path | None:
    """The file of the callback's :class:`~.callbacks.EarlierSelf` guide, once the run has
    written (or found) it; None for any other guide or none."""
    guide = callback.guide
    if isinstance(guide.teacher, EarlierSelf) and guide.guide is not None:
        return Path(guide.teacher.path)
    return None
