"""The one LightningDataModule: batches of ``(x, y)`` from any :class:`~.sources.Source`."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffusion_pl.data.loading import (
    GlobalBatchShuffle,
    RandomHFlip,
    ResumableLoader,
    split_global_batch,
)
from diffusion_pl.data.sources import Example, Source, Split, check_split
from diffusion_pl.data.streaming import StreamingLoader, StreamingSplit
from diffusion_pl.hparams import save_config

__all__ = ["DiffusionDataModule"]


class DiffusionDataModule(L.LightningDataModule):
    """Serve batches ``(x, y)`` from a source: ``x: [B, *source.shape]`` float32, ``y: [B]`` int64.

    Images are in [−1, 1], toy points raw coordinates, ``y`` is −1 where the data have no labels.
    The DataModule knows nothing of noise.

    The config sets the global batch G, the examples of one optimizer step over all devices;
    when fitting starts the per-device batch b and Lightning's ``accumulate_grad_batches`` A
    follow from the number of processes W (:func:`split_global_batch`: G = W · A · b, b as
    large as ``max_device_batch`` allows). Training batches are shuffled with a seed taken from
    ``torch.initial_seed()``, so ``lightning.seed_everything(s)`` fixes their order, and global
    batch k holds the same examples on any W and A (each rank reads its contiguous share of
    it); the incomplete last global batch of an epoch is dropped. A run resumed from a
    checkpoint taken mid-epoch continues with the global batches the interrupted run would have
    drawn next, on any number of devices. Validation batches (b per device) keep the split's
    order and keep the last, smaller batch.

    A streamed train split (``HFImages(streaming: true)``) is served by a
    :class:`~diffusion_pl.data.streaming.StreamingLoader` instead: micro-batches of b from each
    rank's shards through a shuffle buffer. It resumes exactly too, but only on the same number
    of ranks and workers, and its order depends on W (shards are dealt out to ranks).

    Args:
        source: where the examples come from, e.g. ``Toy2D``, ``Digits`` or ``HFImages``.
        global_batch_size: G, examples per optimizer step over all devices and micro-batches.
        max_device_batch: the most examples a device holds at once (its memory's limit);
            larger shares of G are accumulated over micro-batches. None: no limit.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        hflip: mirror training images left–right at random (only for sources whose examples
            are mirror-symmetric images).
        pin_memory: pin batches in page-locked memory for faster host-to-GPU copies.
        prefetch_factor: batches each worker loads ahead (None: PyTorch's default, 2); needs
            ``num_workers`` > 0.
    """

    def __init__(
        self,
        source: Source,
        global_batch_size: int = 128,
        max_device_batch: int | None = None,
        num_workers: int = 0,
        hflip: bool = False,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        super().__init__()
        if global_batch_size <= 0:
            raise ValueError(f"global_batch_size must be > 0, got {global_batch_size}")
        if max_device_batch is not None and max_device_batch <= 0:
            raise ValueError(
                f"max_device_batch must be > 0, or null for no limit; got {max_device_batch}"
            )
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
        self.global_batch_size, self.max_device_batch = global_batch_size, max_device_batch
        self.num_workers = num_workers
        self.hflip = hflip
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
    def world_size(self) -> int:
        """Processes of the attached trainer (1 without one)."""
        return 1 if self.trainer is None else self.trainer.world_size

    @property
    def device_batch(self) -> int:
        """b, the examples of one micro-batch on one device (:func:`split_global_batch`)."""
        return split_global_batch(self.global_batch_size, self.world_size, self.max_device_batch)[0]

    @property
    def accumulate(self) -> int:
        """A, the micro-batches each device accumulates per optimizer step."""
        return split_global_batch(self.global_batch_size, self.world_size, self.max_device_batch)[1]

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
        """Load the splits a stage needs: train and val to fit, val to validate and to test.

        When fitting, set the trainer's ``accumulate_grad_batches`` to A; a config that sets it
        to anything else is refused (the global batch decides it).

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        """
        needs = {"fit": ("train", "val"), "validate": ("val",), "test": ("val",)}
        for split in needs.get(stage, ()):
            self.dataset(split)
        if stage == "fit" and self.trainer is not None:
            accumulate = self.accumulate
            if self.trainer.accumulate_grad_batches not in (1, accumulate):
                raise ValueError(
                    f"trainer.accumulate_grad_batches={self.trainer.accumulate_grad_batches}, "
                    "but the micro-batches follow from data.global_batch_size="
                    f"{self.global_batch_size} over {self.world_size} process(es): remove "
                    "trainer.accumulate_grad_batches and set data.max_device_batch (the most "
                    "examples a device holds) to accumulate"
                )
            self.trainer.accumulate_grad_batches = accumulate

    def dataset(self, split: Split) -> Dataset[Example]:
        """One split, un-augmented, loaded from the source on first use.

        Args:
            split: ``"train"`` or ``"val"``.
        """
        check_split(split)
        if split not in self._datasets:
            self._datasets[split] = self.source.load(split)
        return self._datasets[split]

    def real_samples(self, split: Split, n: int, name: str = "n") -> Tensor:
        """The first ``n`` examples of a split, un-augmented, stacked to ``[n, *data_shape]``.

        Args:
            split: ``"train"`` or ``"val"``.
            n: number of examples, at most the size of the split.
            name: how an error names ``n`` (a command's option, e.g. ``--num_samples``).
        """
        data = self.dataset(split)
        if isinstance(data, StreamingSplit):
            raise ValueError(f"the {split} split is streamed and has no first n examples: use val")
        if not 0 < n <= len(data):
            raise ValueError(f"{name} must be in [1, {len(data)}] for the {split} split, got {n}")
        return torch.stack([data[i][0] for i in range(n)])

    def train_dataloader(self) -> DataLoader[Example]:
        """Shuffled training batches, randomly mirrored when ``hflip``."""
        data = self.dataset("train")
        rank = 0 if self.trainer is None else self.trainer.global_rank
        if isinstance(data, StreamingSplit):
            return StreamingLoader(
                data, self.device_batch, rank, self.world_size, torch.initial_seed() % 2**63,
                self.hflip, self.num_workers, self.pin_memory, self.prefetch_factor,
            )  # fmt: skip
        if len(data) < self.global_batch_size:
            raise ValueError(
                f"the train split has {len(data)} examples, fewer than global_batch_size="
                f"{self.global_batch_size}, so no whole global batch; lower global_batch_size"
            )
        data = RandomHFlip(data) if self.hflip else data
        sampler = GlobalBatchShuffle(
            data,
            self.world_size,
            rank,
            seed=torch.initial_seed() % 2**63,
            device_batch=self.device_batch,
            accumulate=self.accumulate,
            hflip=self.hflip,
        )
        return ResumableLoader(
            data,
            accumulate=self.accumulate,
            sampler=sampler,
            generator=torch.Generator(),
            drop_last=True,
            **self._loader_options(),
        )

    def val_dataloader(self) -> DataLoader[Example]:
        """Validation batches in order, the last one possibly smaller."""
        return DataLoader(
            self.dataset("val"), shuffle=False, drop_last=False, **self._loader_options()
        )

    def test_dataloader(self) -> DataLoader[Example]:
        """``diffusion-pl test``'s batches: the val split's (the sources have train and val
        splits only, so ``test`` reports on the held-out val split)."""
        return self.val_dataloader()

    def _loader_options(self) -> dict[str, Any]:
        return {
            "batch_size": self.device_batch,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "prefetch_factor": self.prefetch_factor,
            "persistent_workers": self.num_workers > 0,
        }
