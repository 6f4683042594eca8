"""Write a trained autoencoder with ``save_pretrained``, its latent normalisation measured.

LDM scales the codes by s = 1 / std of the training codes (0.18215 for its f = 8 KL
autoencoder); Stable Diffusion 3 also shifts them by b, their mean. Both are measured here on
the posterior means μ(x) of the whole training split (what ``diffusion-pl encode`` stores by
default), over every element of every code, and stored in the ``AutoencoderKL`` config as
``scaling_factor`` = 1 / std and ``shift_factor`` = mean, so that the codes
z = s · (μ(x) − b) that ``encode`` and :class:`~diffusion_pl.data.Latents` compute have mean 0
and standard deviation 1 on the training split, with no other setting.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["export_checkpoint", "latent_statistics", "save_autoencoder"]

FOLDER = "autoencoder"
"""The folder of a run's exported autoencoder, in the run's log dir."""


@torch.no_grad()
def latent_statistics(
    vae: nn.Module, data: Dataset, batch_size: int = 256, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """Mean and standard deviation of all elements of the posterior means μ(x) over ``data``.

    Accumulated in float64: std = √(E[μ²] − E[μ]²) over N·C·h·w elements.
    """
    total, total_sq, count = 0.0, 0.0, 0
    was_training = vae.training
    vae.eval()
    for x, _ in DataLoader(data, batch_size=batch_size):
        mean = vae.encode(x.to(device, vae.dtype)).latent_dist.mean.double()
        total += float(mean.sum())
        total_sq += float(mean.pow(2).sum())
        count += mean.numel()
    vae.train(was_training)
    if count == 0:
        raise ValueError("the training split is empty: no codes to measure the scaling factor on")
    mu = total / count
    std = math.sqrt(max(total_sq / count - mu * mu, 0.0))
    if not std > 0:
        raise ValueError(f"the codes have standard deviation {std}: the encoder is constant")
    return mu, std


def save_autoencoder(
    vae: nn.Module, train_data: Dataset, folder: str | Path, batch_size: int = 256
) -> Path:
    """``save_pretrained`` a copy of ``vae`` to ``folder`` with its measured latent factors.

    The folder is written beside and renamed into place, so a reader never sees half of it.

    Args:
        vae: a ``diffusers`` ``AutoencoderKL`` (left unchanged).
        train_data: the training split's ``(image, label)`` examples, images in [−1, 1].
        folder: where to write.
        batch_size: images per encoder call.
    """
    device = next(vae.parameters()).device
    shift, std = latent_statistics(vae, train_data, batch_size, device)
    exported = copy.deepcopy(vae).float().cpu()
    exported.register_to_config(scaling_factor=1.0 / std, shift_factor=shift)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    exported.save_pretrained(tmp)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def export_checkpoint(
    ckpt_path: str, output: str, weights: str = "ema", batch_size: int = 256, device: str = "cpu"
) -> Path:
    """Write the autoencoder of a ``diffusion-pl fit`` checkpoint of ``AutoencoderKLModule``.

    What the end of ``fit`` writes to ``<log dir>/autoencoder``, on demand, from any checkpoint
    (e.g. an earlier one, or the raw weights).

    Args:
        ckpt_path: the checkpoint.
        output: the folder to write (checked before any work).
        weights: ``ema`` (the moving average when the run kept one) or ``raw``.
        batch_size: images per encoder call when measuring the scaling factor.
        device: torch device of the encoder.
    """
    from diffusion_pl.autoencoders.module import AutoencoderKLModule
    from diffusion_pl.checkpoints import load_datamodule, load_module
    from diffusion_pl.cli.outputs import check_writable

    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    check_writable("output", output, folder=True)
    module = load_module(ckpt_path, device, weights=weights)
    if not isinstance(module, AutoencoderKLModule):
        raise ValueError(
            f"{ckpt_path} holds a {type(module).__name__}, not an AutoencoderKLModule: give "
            "the checkpoint of a run of configs/digits/autoencoder.yaml (or its like)"
        )
    data = load_datamodule(ckpt_path).dataset("train")
    return save_autoencoder(module.vae, data, output, batch_size)
