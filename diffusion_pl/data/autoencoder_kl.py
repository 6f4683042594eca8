"""A pretrained ``diffusers`` ``AutoencoderKL`` with Stable Diffusion's latent normalisation:
the encoder and decoder of latent diffusion (:mod:`diffusion_pl.data.latents`).

Codes are normalised with the autoencoder's ``scaling_factor`` s and ``shift_factor`` b (config
values; b = 0 where absent) to roughly unit variance: z = s · (E(x) − b), x = D(z / s + b).
``diffusers`` is an optional dependency (``pip install 'diffusion-pl[latent]'``), imported only
here, when an autoencoder is loaded. Reference: Rombach et al. (2022), "High-Resolution Image
Synthesis with Latent Diffusion Models", Sec. 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from diffusion_pl.errors import MissingDependency

__all__ = ["Autoencoder", "autoencoder_class"]

_INSTALL_HINT = "pip install 'diffusion-pl[latent]'"


def autoencoder_class(name_or_path: str) -> type[nn.Module]:
    """``diffusers.AutoencoderKL``; one line with the install command where diffusers is missing.

    Args:
        name_or_path: the autoencoder asked for (for the message).

    Raises:
        MissingDependency: diffusers is not installed.
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise MissingDependency(
            f"the autoencoder {name_or_path!r} needs diffusers, which is not installed: "
            f"{_INSTALL_HINT}"
        ) from err
    return AutoencoderKL


class Autoencoder(nn.Module):
    """A ``diffusers`` ``AutoencoderKL`` with its latent normalisation (module docstring).

    Images are ``[B, C, H, W]`` in [−1, 1]; one-channel images are repeated to the three
    channels of an RGB autoencoder, and decoded back to one channel by the mean of the three.

    Args:
        name_or_path: a hub name such as ``stabilityai/sd-vae-ft-mse``, or a local folder.
        subfolder: the autoencoder's folder inside a pipeline repository (e.g. ``vae``).
    """

    def __init__(self, name_or_path: str, subfolder: str | None = None) -> None:
        super().__init__()
        autoencoder_kl = autoencoder_class(name_or_path)
        local = Path(name_or_path).expanduser()
        if name_or_path.startswith(("/", ".", "~")):
            if not local.is_dir():
                raise FileNotFoundError(
                    f"the AutoencoderKL {name_or_path!r} is a local path, but there is no such "
                    "folder: give a folder written by save_pretrained, or a hub name such as "
                    "stabilityai/sd-vae-ft-mse"
                )
            name_or_path = str(local)
        where = f"the AutoencoderKL {name_or_path!r}" + (
            f" (subfolder {subfolder!r})" if subfolder else ""
        )
        _check_class_name(local / (subfolder or "") / "config.json", where)
        try:
            self.vae, info = autoencoder_kl.from_pretrained(
                name_or_path, subfolder=subfolder, output_loading_info=True
            )
        except OSError as err:  # not found locally, hub out of reach, or not an AutoencoderKL
            raise FileNotFoundError(
                f"could not load {where}: {_one_line(err)}. Give a local folder written by "
                "save_pretrained, or a hub name such as stabilityai/sd-vae-ft-mse on a machine "
                "that can reach the hub (it is then cached; HF_HUB_OFFLINE=1 reads the cache)"
            ) from err
        except ValueError as err:  # weights of other shapes than its config.json says
            raise ValueError(
                f"{where}: its weights do not match its config.json "
                f"({_one_line(err).split('. If you want')[0]}); "
                "write the folder again with save_pretrained"
            ) from err
        missing = [*info.get("missing_keys", []), *info.get("mismatched_keys", [])]
        if missing:
            raise ValueError(
                f"{where}: its weights do not match its config.json: {len(missing)} tensors "
                f"missing or of another shape (e.g. {sorted(map(str, missing))[0]}); write the "
                "folder again with save_pretrained"
            )
        self.vae.requires_grad_(False).eval()
        config = self.vae.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        self.channels = int(config.in_channels)
        self.downsampling = 2 ** (len(config.block_out_channels) - 1)

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The code's shape for images of ``image_shape`` ``(C, H, W)``."""
        channels, height, width = image_shape
        grey_as_rgb = channels == 1 and self.channels == 3
        if (
            (channels != self.channels and not grey_as_rgb)
            or height % self.downsampling
            or (width % self.downsampling)
        ):
            raise ValueError(
                f"images of shape {tuple(image_shape)} do not fit this autoencoder: it takes "
                f"{self.channels} channels{' (or 1, repeated)' if self.channels == 3 else ''} "
                "and sides divisible by "
                f"{self.downsampling}; resize the data (image_size, or size for Digits)"
            )
        latent_channels = int(self.vae.config.latent_channels)
        return latent_channels, height // self.downsampling, width // self.downsampling

    @torch.no_grad()
    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Codes z = s · (E(x) − b): the posterior mean, or a draw from it with ``generator``."""
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        posterior = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        code = posterior.mean if generator is None else posterior.sample(generator)
        return (code.float() - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: Tensor, channels: int) -> Tensor:
        """Images x = D(z / s + b) in [−1, 1] with ``channels`` channels."""
        x = self.vae.decode((z / self.scaling_factor + self.shift_factor).to(self.vae.dtype))
        x = x.sample.float()
        if channels == 1 and x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        return x.clamp(-1, 1)


def _one_line(error: BaseException) -> str:
    """An error's message on one line (diffusers' messages span several)."""
    return " ".join(str(error).split()).rstrip(".")


def _check_class_name(config: Path, where: str) -> None:
    """Refuse a local folder whose ``config.json`` is another diffusers class's (a UNet's)."""
    if not config.is_file():
        return
    try:
        name = json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, AttributeError):
        return  # from_pretrained says what is wrong with it
    if name not in (None, "AutoencoderKL"):
        raise ValueError(
            f"{where} holds a {name}, not an AutoencoderKL (its config.json's _class_name): "
            "give the folder of an autoencoder written by save_pretrained"
        )
