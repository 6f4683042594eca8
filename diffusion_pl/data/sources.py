"""The contract every data source fulfils, so one DataModule can serve toys, digits and images.

A source is a small config object chosen in YAML by ``class_path`` + ``init_args``. Its
constructor only validates; data are read or drawn in :meth:`Source.load`. Each example is a pair
``(x, y)``: ``x`` a float32 tensor of shape :attr:`Source.shape` (images in [−1, 1], channels
first; toy points as raw coordinates) and ``y`` a 0-dim int64 class label, −1 where the data carry
none. Default collation turns a batch into ``x: [B, *shape]`` and ``y: [B]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal, get_args

from torch import Tensor
from torch.utils.data import Dataset

from diffusion_pl.mixture import GaussianMixtureSpec

__all__ = ["Example", "Source", "Split", "check_fraction", "check_split"]

Split = Literal["train", "val"]
Example = tuple[Tensor, Tensor]


def check_split(split: str) -> None:
    """Raise a ValueError unless ``split`` is one of :data:`Split`.

    Args:
        split: the split name a caller asked for.
    """
    if split not in get_args(Split):
        raise ValueError(f"split must be one of {get_args(Split)}, got {split!r}")


class Source(ABC):
    """Where examples come from; see the module docstring for the ``(x, y)`` contract."""

    @property
    @abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Shape of one example ``x``, known from the constructor arguments alone."""

    @property
    @abstractmethod
    def num_classes(self) -> int | None:
        """Number of label classes, or None when labels are absent (``y`` is then −1)."""

    @property
    @abstractmethod
    def num_levels(self) -> int | None:
        """Quantisation levels per dimension of the raw data, or None if continuous.

        256 for 8-bit images, 17 for the 0–16 digits; likelihoods in bits per dimension need it
        to account for dequantisation.
        """

    @property
    def mirror_symmetric(self) -> bool:
        """Whether a horizontally mirrored example is still a plausible example (``hflip``)."""
        return False

    def mixture(self) -> GaussianMixtureSpec | None:
        """The exact data distribution when it is an isotropic Gaussian mixture, else None."""
        return None

    @property
    def clip_samples(self) -> bool:
        """Whether a model's samples of this data are clipped to [−1, 1] (images); False for
        autoencoder codes (:class:`~diffusion_pl.data.latents.Latents`)."""
        return True

    def decode(self, x: Tensor) -> Tensor:
        """A model's samples ``[B, *shape]`` as data to look at: themselves, except for codes,
        which are decoded to images."""
        return x

    def images(self, split: Split) -> Dataset[Example] | None:
        """The images a split's examples stand for, when they are not the examples themselves
        (codes: the images they encode); None otherwise."""
        return None

    def prepare(self) -> None:
        """Download or cache the data once per machine; called from ``prepare_data``."""
        return None

    @abstractmethod
    def load(self, split: Split) -> Dataset[Example]:
        """Read or draw one split.

        Args:
            split: ``"train"`` or ``"val"``.

        Returns:
            A map-style dataset of ``(x, y)`` examples as described in the module docstring,
            or, for a streamed train split, a :class:`~diffusion_pl.data.streaming.StreamingSplit`.
        """


def check_fraction(val_fraction: float) -> None:
    """Raise a ValueError unless 0 < ``val_fraction`` < 1."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
