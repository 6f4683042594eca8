"""Rows of an image dataset decoded into ``(x, y)`` examples: PIL, undecoded cells or arrays,
centre-cropped, resized and scaled to [−1, 1]."""

from __future__ import annotations

from functools import partial
from typing import Any

import datasets as hf
import numpy as np
import PIL.Image
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffusion_pl.data.sources import Example

__all__ = ["ImageRows", "image_to_tensor", "row_example"]


def image_to_tensor(image: PIL.Image.Image, size: int, mode: str) -> Tensor:
    """Convert to ``mode``, centre-crop to a square, resize to ``size``, scale to [−1, 1].

    Args:
        image: any PIL image.
        size: side of the output.
        mode: ``"RGB"`` or ``"L"``.

    Returns:
        ``[C, size, size]`` float32, C = 3 for RGB and 1 for L.
    """
    image = image.convert(mode)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), PIL.Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).reshape(size, size, -1)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1.0


def row_example(
    row: dict[str, Any], image_column: str, label_column: str | None, size: int, mode: str
) -> Example:
    """One dataset row as an ``(x, y)`` example (see :func:`image_to_tensor`).

    The image may be a PIL image, an undecoded ``{"bytes", "path"}`` cell of an ``Image``
    column (decoded here), or an array of 8-bit pixels.
    """
    image = row[image_column]
    if isinstance(image, dict):
        image = hf.Image().decode_example(image)
    elif not isinstance(image, PIL.Image.Image):
        image = PIL.Image.fromarray(np.asarray(image, dtype=np.uint8))
    label = -1 if label_column is None else row[label_column]
    return image_to_tensor(image, size, mode), torch.tensor(label, dtype=torch.int64)


class ImageRows(Dataset[Example]):
    """Rows (a Hugging Face split, or a list of raw rows) decoded into ``(x, y)`` on access."""

    def __init__(self, data: hf.Dataset | list[dict[str, Any]], decode: partial[Example]) -> None:
        self.data = data
        self.decode = decode

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Example:
        return self.decode(self.data[index])
