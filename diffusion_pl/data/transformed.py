"""Other data made from an image source by a fixed transform of every image: the "other data" a
LoRA fine-tune adapts a base model to (LCM-LoRA's acceleration vector, Luo et al. 2023b,
Sec. 3.2), e.g. the digits inverted or transposed, or drawn in another style (:class:`Gamma`).

``Transformed(source, transform)`` serves ``transform(x)`` for each example ``(x, y)`` of
``source`` (labels kept), so FID's reference statistics, computed from the data source, are
those of the transformed images, under a cache key of their own (the FID key hashes the nested
source's configuration and the transform's).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor
from torch.utils.data import Dataset

from diffusion_pl.data.sources import Example, Source, Split
from diffusion_pl.data.streaming import StreamingSplit

__all__ = ["Gamma", "ImageTransform", "Invert", "Transformed", "Transpose"]


class ImageTransform(ABC):
    """A fixed map of one image ``[C, H, W]`` in [−1, 1] to another (``repr``: its settings,
    which the FID cache key is made of)."""

    @abstractmethod
    def __call__(self, x: Tensor) -> Tensor:
        """The transformed image."""

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of a transformed image of ``shape`` (the same by default)."""
        return shape

    keeps_mirror_symmetry: bool = False
    """Whether the mirror image of a transformed example is one where the source's is (hflip)."""

    keeps_levels: bool = True
    """Whether evenly spaced grey levels stay evenly spaced (else the data count as continuous
    for a discretized likelihood)."""


@dataclass(frozen=True)
class Invert(ImageTransform):
    """x → −x: the negative image (white digits on black become black on white); the grey
    levels of the source are kept."""

    keeps_mirror_symmetry = True  # mirroring commutes with x -> -x

    def __call__(self, x: Tensor) -> Tensor:
        return -x


@dataclass(frozen=True)
class Gamma(ImageTransform):
    """x → 2 ((x + 1)/2)^γ − 1: each pixel's brightness p ∈ [0, 1] raised to γ, the shapes
    kept. γ < 1 lifts the faint pixels, so digits are drawn with bolder, fuller strokes: a change
    of style rather than of content, the kind of fine-tune LCM-LoRA's acceleration vector is
    shown on (Luo et al. 2023b, Sec. 3.2).

    Args:
        gamma: γ > 0 (1: the identity).
    """

    gamma: float = 0.5
    keeps_mirror_symmetry = True  # a per-pixel map commutes with mirroring
    keeps_levels = False  # the grey levels are no longer evenly spaced

    def __post_init__(self) -> None:
        if not self.gamma > 0:
            raise ValueError(f"Gamma needs gamma > 0 (1 is the identity), got {self.gamma}")

    def __call__(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(min=0).pow(self.gamma) * 2 - 1


@dataclass(frozen=True)
class Transpose(ImageTransform):
    """x[c, i, j] → x[c, j, i]: the image mirrored about its main diagonal."""

    def __call__(self, x: Tensor) -> Tensor:
        return x.transpose(-1, -2)

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*shape[:-2], shape[-1], shape[-2])


class TransformedSplit(Dataset):
    """A map-style split whose images pass through ``transform``."""

    def __init__(self, data: Dataset[Example], transform: ImageTransform) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Example:
        x, y = self.data[index]
        return self.transform(x), y


class Transformed(Source):
    """The images of ``source``, each passed through ``transform``; labels, grey levels and
    the train/val split are the source's.

    Args:
        source: an image source (``Digits``, ``HFImages``; not autoencoder codes).
        transform: ``Invert``, ``Transpose`` or ``Gamma`` (an :class:`ImageTransform`).

    Reference: Luo et al. (2023b), "LCM-LoRA: A Universal Stable-Diffusion Acceleration
    Module", Sec. 3.2 (a fine-tune on other data, accelerated by the LCM-LoRA of its base).
    """

    def __init__(self, source: Source, transform: ImageTransform) -> None:
        if not source.clip_samples or len(source.shape) != 3:
            raise ValueError(
                f"Transformed transforms images [C, H, W], but {type(source).__name__} serves "
                f"data of shape {source.shape}{'' if source.clip_samples else ' (codes)'}: "
                "give an image source, e.g. diffusion_pl.data.Digits"
            )
        self.source, self.transform = source, transform

    @property
    def shape(self) -> tuple[int, ...]:
        return self.transform.shape(self.source.shape)

    @property
    def num_classes(self) -> int | None:
        return self.source.num_classes

    @property
    def mirror_symmetric(self) -> bool:
        return self.source.mirror_symmetric and self.transform.keeps_mirror_symmetry

    @property
    def num_levels(self) -> int | None:
        return self.source.num_levels if self.transform.keeps_levels else None

    def prepare(self) -> None:
        self.source.prepare()

    def load(self, split: Split) -> Dataset[Example]:
        data = self.source.load(split)
        if isinstance(data, StreamingSplit):
            raise ValueError(
                f"{type(self.source).__name__} streams its {split} split, which Transformed "
                "does not transform: use a source read whole (HFImages with streaming: false)"
            )
        return TransformedSplit(data, self.transform)
