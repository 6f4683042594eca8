"""Latent space: encode a dataset once with a pretrained autoencoder, train on its latents.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", Sec. 3) trains the diffusion model on z = E(x), the code of a pretrained autoencoder,
and decodes x = D(z) after sampling. Here E and D are a ``diffusers`` ``AutoencoderKL`` (a hub
name such as ``stabilityai/sd-vae-ft-mse``, or a local folder written by ``save_pretrained``),
and, as in Stable Diffusion, codes are normalised with the autoencoder's ``scaling_factor`` s
and ``shift_factor`` b (config values; b = 0 where absent) to roughly unit variance:

    z = s · (E(x) − b),        x = D(z / s + b).

``diffusion-pl encode`` (:func:`encode_dataset`) writes both splits of a config's data as
memory-mapped ``.npy`` arrays with a ``latents.json`` that records the autoencoder, the factors
and the image data it came from. :class:`Latents` serves them like any other source, and
decodes through the recorded autoencoder: sample grids, ``diffusion-pl sample`` and FID (whose
reference statistics are of the original images) see images, not codes. ``diffusers`` is an
optional dependency (``pip install 'diffusion-pl[latent]'``), imported only to encode or decode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse.typing import import_object
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from diffusion_pl.data.sources import Example, Source, Split, check_split
from diffusion_pl.errors import MissingDependency

__all__ = ["METADATA", "Autoencoder", "Latents", "autoencoder_class", "encode_dataset"]

METADATA = "latents.json"
"""The file in a latent dataset's folder that describes it."""

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


class _Codes(Dataset[Example]):
    """One split's codes and labels, memory-mapped: nothing is read until an example is."""

    def __init__(self, folder: Path, split: Split) -> None:
        self.latents = np.load(folder / f"{split}_latents.npy", mmap_mode="r")
        self.labels = np.load(folder / f"{split}_labels.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> Example:
        x = torch.from_numpy(np.array(self.latents[index], dtype=np.float32))
        return x, torch.tensor(int(self.labels[index]), dtype=torch.int64)


def _instantiate(config: dict[str, Any]) -> Source:
    """A source from its YAML config ``{"class_path": …, "init_args": {…}}``."""
    return import_object(config["class_path"])(**config.get("init_args", {}))


class Latents(Source):
    """A dataset encoded by ``diffusion-pl encode``: autoencoder codes, decoded to images.

    Examples are the codes ``[C_z, H/f, W/f]`` (f the autoencoder's downsampling) and the
    labels of the images they encode. :meth:`decode` turns the model's samples back into images
    through the autoencoder (loaded on first use), and :meth:`images` reads the original images
    (for FID's reference statistics) from the image source recorded at encoding. Codes are not
    clipped to [−1, 1] when sampling (:attr:`clip_samples`), and have no quantisation levels.

    Args:
        path: the folder written by ``diffusion-pl encode``.
        autoencoder: where to load the autoencoder from for decoding; None: the one that
            encoded the data (recorded in the folder's ``latents.json``). Set it when the
            weights have moved; they must be the same weights.
    """

    def __init__(self, path: str, autoencoder: str | None = None) -> None:
        folder = Path(path).expanduser()
        if not (folder / METADATA).is_file():
            raise FileNotFoundError(
                f"{str(folder / METADATA)!r} not found: Latents reads a folder written by "
                "`diffusion-pl encode --config CFG --autoencoder NAME --output DIR`"
            )
        self.path = path
        self.autoencoder = autoencoder
        self.metadata: dict[str, Any] = json.loads((folder / METADATA).read_text())
        self._folder = folder
        self._decoder: Autoencoder | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The codes' shape, as recorded."""
        return tuple(self.metadata["latent_shape"])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of the images the codes decode to."""
        return tuple(self.metadata["image_shape"])

    @property
    def num_classes(self) -> int | None:
        """The image source's classes."""
        return self.metadata["num_classes"]

    @property
    def num_levels(self) -> None:
        """Codes are continuous."""
        return None

    @property
    def clip_samples(self) -> bool:
        """Codes are not confined to [−1, 1]."""
        return False

    def load(self, split: Split) -> _Codes:
        """One split's codes and labels, memory-mapped."""
        check_split(split)
        return _Codes(self._folder, split)

    def images(self, split: Split) -> Dataset[Example]:
        """The original images of a split, in the order of the codes."""
        return _instantiate(self.metadata["source"]).load(split)

    def decode(self, x: Tensor) -> Tensor:
        """Images ``[B, *image_shape]`` in [−1, 1] decoded from codes ``[B, *shape]``."""
        if self._decoder is None:
            name = self.autoencoder or self.metadata["autoencoder"]
            self._decoder = Autoencoder(name, self.metadata.get("subfolder"))
        decoder = self._decoder.to(x.device)
        return decoder.decode(x, channels=self.image_shape[0])


@torch.no_grad()
def encode_dataset(
    source_config: dict[str, Any],
    autoencoder: str,
    output: str | Path,
    subfolder: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    sample_posterior: bool = False,
    seed: int = 0,
) -> Path:
    """Encode the train and val splits of an image source; write a :class:`Latents` folder.

    Writes ``{split}_latents.npy`` (float32 codes), ``{split}_labels.npy`` (int64) and
    ``latents.json`` (the autoencoder, its factors, the shapes, the source's config) to
    ``output``.

    Args:
        source_config: the image source's YAML config (``class_path`` and ``init_args``).
        autoencoder: hub name or local folder of a ``diffusers`` ``AutoencoderKL``.
        output: the folder to write.
        subfolder: the autoencoder's folder inside a pipeline repository, e.g. ``vae``.
        batch_size: images per encoder call.
        device: torch device of the encoder.
        sample_posterior: store a draw from the posterior N(μ, σ²) (seeded by ``seed``), as
            Stable Diffusion's training does, instead of its mean μ.
        seed: seed of those draws.
    """
    source = _instantiate(source_config)
    if len(source.shape) != 3:
        raise ValueError(
            f"encode takes images (C, H, W), but {type(source).__name__} gives examples of "
            f"shape {source.shape}"
        )
    model = Autoencoder(autoencoder, subfolder).to(device)
    latent_shape = model.latent_shape(source.shape)
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device).manual_seed(seed) if sample_posterior else None
    counts = {}
    for split in ("train", "val"):
        data = source.load(split)
        codes = np.lib.format.open_memmap(
            folder / f"{split}_latents.npy", mode="w+", dtype=np.float32,
            shape=(len(data), *latent_shape),
        )  # fmt: skip
        labels = np.empty(len(data), dtype=np.int64)
        done = 0
        for x, y in tqdm(DataLoader(data, batch_size=batch_size), desc=f"encoding {split}"):
            codes[done : done + len(x)] = model.encode(x.to(device), generator).cpu().numpy()
            labels[done : done + len(x)] = y.numpy()
            done += len(x)
        codes.flush()
        np.save(folder / f"{split}_labels.npy", labels)
        counts[split] = done
    metadata = {
        "autoencoder": autoencoder,
        "subfolder": subfolder,
        "scaling_factor": model.scaling_factor,
        "shift_factor": model.shift_factor,
        "sample_posterior": sample_posterior,
        "image_shape": list(source.shape),
        "latent_shape": list(latent_shape),
        "num_classes": source.num_classes,
        "examples": counts,
        "source": source_config,
    }
    (folder / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    return folder
