"""The one LightningDataModule: batches of ``(x, y)`` from any :class:`~.sources.Source`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from diffusion_pl.data.sources import Example, Source, Split, check_split
from diffusion_pl.data.streaming import StreamingLoader, StreamingSplit
from diffusion_pl.hparams import save_config

__all__ = ["DiffusionDataModule"]


class _RandomHFlip(Dataset[Example]):
    """Mirror each image left–right with probability 1/2.

    Draws from torch's global generator, which PyTorch seeds per DataLoader worker from the
    loader's generator (and which ``lightning.seed_everything`` seeds in the main process).
    """

    def __init__(self, data: Dataset[Example]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Example:
        x, y = self.data[index]
        return (x.flip(-1) if torch.rand(()) < 0.5 else x), y


class _EpochShuffle(DistributedSampler):
    """This rank's share of a permutation drawn from (seed, epoch); it can start mid-epoch.

    As ``DistributedSampler`` (Lightning calls :meth:`set_epoch` before every epoch, and then
    leaves the sampler alone under DDP), plus: the epoch advances by itself after each pass,
    for loops outside Lightning; and ``start`` skips the first indices of the next pass.
    """

    def __init__(self, data: Dataset[Example], num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(data, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self.start :]
        self.start = 0
        self.epoch += 1
        return iter(indices)


class _ResumableLoader(DataLoader):
    """A training DataLoader that resumes mid-epoch.

    Lightning saves a loader's ``state_dict`` in checkpoints and restores it on resume. The
    order of an epoch depends only on (seed, epoch), so the state is the number of batches of
    the current epoch served so far; a restored loader skips them without loading them. The
    loader's own generator (worker seeds) is reseeded from (seed, epoch) too, and so never
    draws from the global one that the model's noise comes from.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._skip = 0

    def __iter__(self) -> Iterator[Any]:
        self._served, self._skip = self._skip, 0
        if isinstance(self.sampler, _EpochShuffle):  # Lightning swaps it for overfit_batches
            self.generator.manual_seed(self.sampler.seed + self.sampler.epoch)
            self.sampler.start = self._served * self.batch_size
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Batches of the current epoch served so far (0 once the epoch is complete)."""
        return {"batches_served": self._served % len(self)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the batches already served when the next epoch pass starts."""
        self._skip = state["batches_served"]


class DiffusionDataModule(L.LightningDataModule):
    """Serve batches ``(x, y)`` from a source: ``x: [B, *source.shape]`` float32, ``y: [B]`` int64.

    Images are in [−1, 1], toy points raw coordinates, ``y`` is −1 where the data have no labels.
    The DataModule knows nothing of noise. Training batches are shuffled with a seed taken from
    ``torch.initial_seed()``, so ``lightning.seed_everything(s)`` fixes their order; under DDP
    each rank reads its own share of every epoch. A run resumed from a checkpoint taken
    mid-epoch continues with the batches the interrupted run would have drawn next.
    Validation batches keep the split's order and keep the last, smaller batch. A streamed
    train split (``HFImages(streaming: true)``) is served by a
    :class:`~diffusion_pl.data.streaming.StreamingLoader` instead, which resumes exactly too
    (on the same number of ranks and workers).

    Args:
        source: where the examples come from, e.g. ``Toy2D``, ``Digits`` or ``HFImages``.
        batch_size: examples per batch.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        hflip: mirror training images left–right at random (only for sources whose examples
            are mirror-symmetric images).
        drop_last: drop the last incomplete training batch.
        pin_memory: pin batches in page-locked memory for faster host-to-GPU copies.
        prefetch_factor: batches each worker loads ahead (None: PyTorch's default, 2); needs
            ``num_workers`` > 0.
    """

    def __init__(
        self,
        source: Source,
        batch_size: int = 128,
        num_workers: int = 0,
        hflip: bool = False,
        drop_last: bool = True,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if num_workers < 0:
            raise ValueError(
                f"num_workers must be >= 0 (0 loads in the main process), got {num_workers}"
            )
        if prefetch_factor is not None and (prefetch_factor <= 0 or num_workers == 0):
            raise ValueError(
                f"prefetch_factor={prefetch_factor} needs num_workers > 0 (got {num_workers}) "
                "and a value > 0: it is the batches each worker process loads ahead"
            )
        if hflip and not source.mirror_symmetric:
            reason = (
                f"its examples of shape {source.shape} have no horizontal axis to flip"
                if len(source.shape) != 3
                else "a mirrored example is not a plausible one (a mirrored digit is no digit)"
            )
            raise ValueError(f"hflip=True does not suit {type(source).__name__}: {reason}")
        self.source = source
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.hflip = hflip
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self._datasets: dict[Split, Dataset[Example]] = {}
        save_config(self)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one example, ``source.shape``; linked to the model's ``data_shape``."""
        return self.source.shape

    @property
    def num_classes(self) -> int | None:
        """Number of label classes, or None for unlabelled data."""
        return self.source.num_classes

    @property
    def num_levels(self) -> int | None:
        """Quantisation levels of the raw data (256 for 8-bit images), None if continuous."""
        return self.source.num_levels

    @property
    def clip_samples(self) -> bool:
        """Whether samples are clipped to [−1, 1]; linked to the model's ``clip_samples``."""
        return self.source.clip_samples

    def decode(self, x: Tensor) -> Tensor:
        """A model's samples as data to look at (codes decoded to images; see ``Source``)."""
        return self.source.decode(x)

    def images(self, split: Split) -> Dataset[Example]:
        """A split as images: the examples, or for codes the images they encode (FID)."""
        images = self.source.images(split)
        return self.dataset(split) if images is None else images

    def prepare_data(self) -> None:
        """Download or cache the data once per machine."""
        self.source.prepare()

    def setup(self, stage: str) -> None:
        """Load the splits a stage needs: train and val to fit, val to validate.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        """
        for split in {"fit": ("train", "val"), "validate": ("val",)}.get(stage, ()):
            self.dataset(split)

    def dataset(self, split: Split) -> Dataset[Example]:
        """One split, un-augmented, loaded from the source on first use.

        Args:
            split: ``"train"`` or ``"val"``.
        """
        check_split(split)
        if split not in self._datasets:
            self._datasets[split] = self.source.load(split)
        return self._datasets[split]

    def real_samples(self, split: Split, n: int) -> Tensor:
        """The first ``n`` examples of a split, un-augmented, stacked to ``[n, *data_shape]``.

        Args:
            split: ``"train"`` or ``"val"``.
            n: number of examples, at most the size of the split.
        """
        data = self.dataset(split)
        if isinstance(data, StreamingSplit):
            raise ValueError(f"the {split} split is streamed and has no first n examples: use val")
        if not 0 < n <= len(data):
            raise ValueError(f"n must be in [1, {len(data)}] for the {split} split, got {n}")
        return torch.stack([data[i][0] for i in range(n)])

    def train_dataloader(self) -> DataLoader[Example]:
        """Shuffled training batches, randomly mirrored when ``hflip``."""
        data = self.dataset("train")
        trainer = self.trainer
        ranks, rank = (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)
        if isinstance(data, StreamingSplit):
            return StreamingLoader(
                data, self.batch_size, rank, ranks, torch.initial_seed() % 2**63, self.hflip,
                self.num_workers, self.pin_memory, self.prefetch_factor,
            )  # fmt: skip
        if self.drop_last and len(data) < self.batch_size:
            raise ValueError(
                f"the train split has {len(data)} examples, fewer than batch_size="
                f"{self.batch_size}, so drop_last=True leaves no batch; lower batch_size"
            )
        data = _RandomHFlip(data) if self.hflip else data
        return _ResumableLoader(
            data,
            sampler=_EpochShuffle(data, ranks, rank, seed=torch.initial_seed() % 2**63),
            generator=torch.Generator(),
            drop_last=self.drop_last,
            **self._loader_options(),
        )

    def val_dataloader(self) -> DataLoader[Example]:
        """Validation batches in order, the last one possibly smaller."""
        return DataLoader(
            self.dataset("val"), shuffle=False, drop_last=False, **self._loader_options()
        )

    def _loader_options(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "prefetch_factor": self.prefetch_factor,
            "persistent_workers": self.num_workers > 0,
        }
