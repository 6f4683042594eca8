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

__all__ = ["latent_statistics", "save_autoencoder"]

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
