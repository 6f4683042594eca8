"""The bundled source: scikit-learn's 8×8 handwritten digits, offline."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from diffusion_pl.data.sources import Source, Split, check_fraction, check_split

__all__ = ["Digits"]

_DIGIT_LEVELS = 17


class Digits(Source):
    """Scikit-learn's bundled 8×8 handwritten digits: 1,797 images, 17 grey levels, offline.

    A pixel v ∈ {0, …, 16} becomes x = v/16·2 − 1 ∈ [−1, 1]. For ``size`` ≠ 8 images are
    resized bilinearly (antialiased when shrinking) and snapped back to the 17 levels, so
    :attr:`num_levels` stays 17. A split stratified by class and seeded by ``seed`` holds out
    ``val_fraction`` of the images: the defaults give 1,437 train / 360 val. Labels are the
    digits 0–9. A mirrored digit is not a digit, so the DataModule refuses ``hflip``.

    Reference:
        Alpaydin & Kaynak (1998), Optical Recognition of Handwritten Digits, UCI ML Repository.

    Args:
        size: side of the square images.
        val_fraction: fraction of the images held out for validation.
        seed: seed of the train/val split.
    """

    def __init__(self, size: int = 8, val_fraction: float = 0.2, seed: int = 0) -> None:
        if size <= 0:
            raise ValueError(f"size must be > 0, got {size}")
        check_fraction(val_fraction)
        self.size = size
        self.val_fraction = val_fraction
        self.seed = seed

    @property
    def shape(self) -> tuple[int, ...]:
        """``(1, size, size)``."""
        return (1, self.size, self.size)

    @property
    def num_classes(self) -> int:
        """Ten digit classes."""
        return 10

    @property
    def num_levels(self) -> int:
        """17 grey levels, 0–16."""
        return _DIGIT_LEVELS

    def load(self, split: Split) -> TensorDataset:
        """Read the bundled images and return one split as ``(x, y)`` examples."""
        check_split(split)
        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16 * 2 - 1
        if self.size != 8:
            size = (self.size, self.size)
            x = F.interpolate(x, size, mode="bilinear", antialias=self.size < 8)
            steps = _DIGIT_LEVELS - 1
            x = torch.round((x + 1) / 2 * steps) / steps * 2 - 1
        train, val = train_test_split(
            np.arange(len(x)),
            test_size=self.val_fraction,
            random_state=self.seed,
            stratify=digits.target,
        )
        index = torch.as_tensor(train if split == "train" else val)
        return TensorDataset(x[index], torch.as_tensor(digits.target, dtype=torch.int64)[index])
