"""Latent space: encode a dataset once with a pretrained autoencoder, train on its latents.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", Sec. 3) trains the diffusion model on z = E(x), the code of a pretrained autoencoder,
and decodes x = D(z) after sampling. Here E and D are a ``diffusers`` ``AutoencoderKL`` (a hub
name such as ``stabilityai/sd-vae-ft-mse``, or a local folder written by ``save_pretrained``),
with Stable Diffusion's normalisation of the codes
(:class:`~diffusion_pl.data.autoencoder_kl.Autoencoder`).

``diffusion-pl encode`` (:func:`encode_dataset`) writes both splits of a config's data as
memory-mapped ``.npy`` arrays with a ``latents.json`` that records the autoencoder, the factors
and the image data it came from. :class:`Latents` serves them like any other source, and
decodes through the recorded autoencoder: sample grids, ``diffusion-pl sample`` and FID (whose
reference statistics are of the original images) see images, not codes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse.typing import import_object
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from diffusion_pl.data.autoencoder_kl import Autoencoder
from diffusion_pl.data.sources import Example, Source, Split, check_split

__all__ = ["METADATA", "Latents", "encode_dataset"]

METADATA = "latents.json"
"""The file in a latent dataset's folder that describes it."""


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
