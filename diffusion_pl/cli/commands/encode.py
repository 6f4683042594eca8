"""``diffusion-pl encode``: encode a config's images once with a pretrained autoencoder, to
train in its latent space (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models")."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from diffusion_pl.cli.options import check_device, check_positive
from diffusion_pl.cli.outputs import check_writable
from diffusion_pl.data.autoencoder_kl import autoencoder_class
from diffusion_pl.data.latents import encode_dataset
from diffusion_pl.errors import UsageError

__all__ = ["encode"]


def encode(
    data_config: str,
    autoencoder: str,
    output: str,
    subfolder: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    sample_posterior: bool = False,
    seed: int = 0,
) -> Path:
    """Encode a config's image data once with a pretrained autoencoder, to train in its latents.

    Reads the data source of the ``data`` section of ``--config`` (``--data_config``, the same
    option: jsonargparse keeps ``--config`` for a command's own options, so ``encode`` renames
    it), encodes its train and val splits with
    a ``diffusers`` AutoencoderKL (``pip install 'diffusion-pl[latent]'``) and writes them to
    OUTPUT, which ``data.source: diffusion_pl.data.Latents`` (``path: OUTPUT``) then serves to
    ``fit``; sample grids, ``sample`` and FID decode through the same autoencoder.

    Args:
        data_config: given as ``--config``: a YAML config whose ``data.source`` gives the
            images (e.g. a fit config).
        autoencoder: hub name (``stabilityai/sd-vae-ft-mse``) or local folder of an AutoencoderKL.
        output: the folder to write (checked before any work).
        subfolder: the autoencoder's folder inside a pipeline repository (e.g. ``vae``).
        batch_size: images per encoder call.
        device: torch device, e.g. ``cpu`` or ``cuda``.
        sample_posterior: store a draw from the encoder's posterior instead of its mean.
        seed: seed of those draws.
    """
    check_positive(batch_size=batch_size)
    check_device(device)
    path = Path(data_config)
    if not path.is_file():
        raise UsageError(f"--config {data_config}: no such file")
    source = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("source")
    if not isinstance(source, dict) or "class_path" not in source:
        raise UsageError(
            f"--config {data_config} has no data.source with a class_path: give a config whose "
            "data section names the images, e.g. configs/digits/rectified_flow_32.yaml"
        )
    autoencoder_class(autoencoder)  # diffusers is installed
    check_writable("output", output, folder=True)
    folder = encode_dataset(
        source, autoencoder, output, subfolder=subfolder, batch_size=batch_size, device=device,
        sample_posterior=sample_posterior, seed=seed,
    )  # fmt: skip
    metadata = json.loads((folder / "latents.json").read_text())
    print(f"wrote {folder}: {metadata['examples']} codes of shape "
          f"{tuple(metadata['latent_shape'])} (images {tuple(metadata['image_shape'])}, "
          f"scaling factor {metadata['scaling_factor']:g}); train on them with data.source "
          f"diffusion_pl.data.Latents, path: {folder}", flush=True)  # fmt: skip
    return folder
