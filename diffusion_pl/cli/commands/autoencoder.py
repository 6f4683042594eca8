"""``diffusion-pl autoencoder export``: write the autoencoder of an ``AutoencoderKLModule`` run,
on demand, as the end of its ``fit`` does (diffusers' ``save_pretrained`` with the latent
scaling measured on the training split)."""

from __future__ import annotations

from pathlib import Path

from diffusion_pl.autoencoders import AutoencoderKLModule, save_autoencoder
from diffusion_pl.callbacks import Weights
from diffusion_pl.checkpoints import load_datamodule, load_module
from diffusion_pl.cli.options import check_device, check_positive
from diffusion_pl.cli.outputs import check_writable

__all__ = ["AUTOENCODER_COMMANDS", "export"]


def export(
    ckpt_path: str,
    output: str,
    weights: Weights = "ema",
    batch_size: int = 256,
    device: str = "cpu",
) -> Path:
    """Write the autoencoder of a ``diffusion-pl fit`` checkpoint of ``AutoencoderKLModule``.

    What the end of ``fit`` writes to ``<log dir>/autoencoder``, from any checkpoint of such a
    run (an earlier one, or the raw weights): ``diffusion-pl encode --autoencoder OUTPUT`` and
    ``data.Latents`` read it unchanged.

    Args:
        ckpt_path: the checkpoint.
        output: the folder to write (checked before any work).
        weights: ``ema`` (the moving average when the run kept one) or ``raw``.
        batch_size: images per encoder call when measuring the scaling factor.
        device: torch device of the encoder.
    """
    check_positive(batch_size=batch_size)
    check_device(device)
    check_writable("output", output, folder=True)
    module = load_module(ckpt_path, device, weights=weights)
    if not isinstance(module, AutoencoderKLModule):
        raise ValueError(
            f"{ckpt_path} holds a {type(module).__name__}, not an AutoencoderKLModule: give "
            "the checkpoint of a run of configs/digits/autoencoder.yaml (or its like)"
        )
    data = load_datamodule(ckpt_path).dataset("train")
    folder = save_autoencoder(module.vae, data, output, batch_size)
    print(f"wrote {folder}: use it with diffusion-pl encode --autoencoder {folder}", flush=True)
    return folder


AUTOENCODER_COMMANDS = {"export": export}
"""``diffusion-pl autoencoder …``'s subcommands."""
