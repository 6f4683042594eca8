"""Fitting a shipped config in-process through the real CLI (one Lightning import per suite)."""

from __future__ import annotations

from pathlib import Path

from diffusion_pl.cli import main

__all__ = ["fit_config"]


def fit_config(config: Path, root: Path, *overrides: str) -> Path:
    """``diffusion-pl fit --config config`` on CPU under ``root``; return its last.ckpt."""
    main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root),
          "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
          *overrides])  # fmt: skip
    (ckpt,) = root.rglob("last.ckpt")
    return ckpt
