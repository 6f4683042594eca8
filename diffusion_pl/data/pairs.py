"""Noise–sample pairs drawn from a trained flow, the training data of reflow."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from diffusion_pl.data.sources import Source, Split, check_split

__all__ = ["ReflowPairs"]


class ReflowPairs(Source):
    """Pairs ``(x, z)`` written by ``diffusion-pl reflow``: a sample x and the noise z it came from.

    The second element of each example is the coupled noise ``z`` (shaped like ``x``), not a
    label; the ``Reflow`` formulation trains on it. The last ``val_fraction`` of the pairs are
    the validation split.

    Args:
        path: ``.pt`` file with tensors ``samples`` and ``noise`` of equal shape ``[N, ...]``.
        val_fraction: fraction of pairs held out for validation.

    Reference: Liu, Gong & Liu (2023), "Flow Straight and Fast", Sec. 2.2 (reflow).
    """

    def __init__(self, path: str, val_fraction: float = 0.05) -> None:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.path, self.val_fraction = path, val_fraction
        self._shape: tuple[int, ...] | None = None

    def _read(self) -> dict[str, torch.Tensor]:
        file = Path(self.path)
        if not file.is_file():
            raise FileNotFoundError(
                f"reflow pairs file {self.path!r} does not exist; write it with "
                "`diffusion-pl reflow --ckpt_path FLOW.ckpt --output PAIRS.pt`"
            )
        pairs = torch.load(file, map_location="cpu", weights_only=True)
        if pairs["samples"].shape != pairs["noise"].shape:
            raise ValueError(f"{self.path}: samples and noise differ in shape")
        return pairs

    @property
    def shape(self) -> tuple[int, ...]:
        if self._shape is None:
            self._shape = tuple(self._read()["samples"].shape[1:])
        return self._shape

    @property
    def num_classes(self) -> int | None:
        return None

    @property
    def num_levels(self) -> int | None:
        return None

    def load(self, split: Split) -> TensorDataset:
        check_split(split)
        pairs = self._read()
        n_val = max(1, int(len(pairs["samples"]) * self.val_fraction))
        part = slice(None, -n_val) if split == "train" else slice(-n_val, None)
        return TensorDataset(pairs["samples"][part].float(), pairs["noise"][part].float())
