"""The loaders of :class:`~.datamodule.DiffusionDataModule`: the global batch split over
devices and accumulation, its shuffle across ranks, random flips, and a loader that resumes
mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from diffusion_pl.data.sources import Example

__all__ = ["GlobalBatchShuffle", "RandomHFlip", "ResumableLoader", "split_global_batch"]


def split_global_batch(
    global_batch_size: int, world_size: int, max_device_batch: int | None = None
) -> tuple[int, int]:
    """The per-device batch b and the accumulated micro-batches A of a global batch G.

    G = world_size · A · b, with b the largest divisor of G / world_size that is at most
    ``max_device_batch`` (EDM2's ``batch_gpu``), so that every micro-batch on every device has
    the same size and the mean of the micro-batch means is the mean over the global batch.

    Args:
        global_batch_size: G, examples per optimizer step over all devices.
        world_size: the number of processes (devices × nodes).
        max_device_batch: the most examples one device holds at once; None: G / world_size.

    Raises:
        ValueError: G is not a multiple of the world size (the message names both and the fix).
    """
    if global_batch_size % world_size:
        lower = global_batch_size // world_size * world_size
        near = " or ".join(str(g) for g in (lower, lower + world_size) if g > 0)
        raise ValueError(
            f"data.global_batch_size={global_batch_size} is not divisible by the {world_size} "
            "processes (trainer.devices x trainer.num_nodes), so the devices cannot hold equal "
            f"shares of it: set data.global_batch_size to a multiple of {world_size} (e.g. "
            f"{near}), or run on a number of devices that divides it"
        )
    share = global_batch_size // world_size
    cap = share if max_device_batch is None else min(max_device_batch, share)
    device_batch = max(b for b in range(1, cap + 1) if share % b == 0)
    return device_batch, share // device_batch


class RandomHFlip(Dataset[Example]):
    """Index i < n: example i as it is; n + i: example i mirrored left–right (n examples).

    The sampler chooses the flips, from the epoch's seed, so they depend neither on the number
    of devices nor on DataLoader workers.
    """

    def __init__(self, data: Dataset[Example]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Example:
        x, y = self.data[index % len(self.data)]
        return (x.flip(-1) if index >= len(self.data) else x), y


class GlobalBatchShuffle(DistributedSampler):
    """This rank's micro-batches of global batches cut from a permutation drawn from (seed, epoch).

    Epoch e is the permutation of the dataset seeded by seed + e (DistributedSampler's), cut
    into ⌊N / G⌋ global batches of G = ranks · accumulate · device_batch examples (the
    remainder is dropped). Rank r reads the contiguous slice [r·A·b, (r + 1)·A·b) of every
    global batch, as A micro-batches of b in order, so global batch k holds the same examples,
    in the same global positions, on any number of ranks and micro-batches. With ``hflip`` each
    position also draws a mirror bit from the same seed (index + N means mirrored).

    As ``DistributedSampler`` (Lightning calls :meth:`set_epoch` before every epoch, and then
    leaves the sampler alone under DDP), plus: the epoch advances by itself after each pass,
    for loops outside Lightning; and ``start`` skips the first global batches of the next pass.
    """

    def __init__(
        self,
        data: Dataset[Example],
        ranks: int,
        rank: int,
        seed: int,
        device_batch: int,
        accumulate: int,
        hflip: bool,
    ) -> None:
        super().__init__(data, num_replicas=ranks, rank=rank, shuffle=True, seed=seed)
        self.share = accumulate * device_batch
        self.steps = len(data) // (ranks * self.share)
        self.hflip = hflip
        self.start = 0

    def __len__(self) -> int:
        return self.steps * self.share

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=generator)
        if self.hflip:
            order += n * torch.randint(0, 2, (n,), generator=generator)
        batches = order[: self.steps * self.num_replicas * self.share]
        mine = batches.view(self.steps, self.num_replicas, self.share)[self.start :, self.rank]
        self.start = 0
        self.epoch += 1
        return iter(mine.reshape(-1).tolist())


class ResumableLoader(DataLoader):
    """A training DataLoader that resumes mid-epoch, on any number of devices.

    Lightning saves a loader's ``state_dict`` in checkpoints and restores it on resume. The
    order of an epoch depends only on (seed, epoch), so the state is the number of optimizer
    steps (global batches) of the current epoch served so far; a restored loader skips them
    without loading them, whatever the number of devices and micro-batches of either run.
    The loader's own generator (worker seeds) is reseeded from (seed, epoch) too, and so never
    draws from the global one.
    """

    def __init__(self, *args: Any, accumulate: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accumulate = accumulate
        self._served = 0
        self._skip_steps = 0

    def __iter__(self) -> Iterator[Any]:
        self._served, self._skip_steps = self._skip_steps * self.accumulate, 0
        if isinstance(self.sampler, GlobalBatchShuffle):  # Lightning swaps it for overfit_batches
            self.generator.manual_seed(self.sampler.seed + self.sampler.epoch)
            self.sampler.start = self._served // self.accumulate
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Optimizer steps of the current epoch served so far (0 once the epoch is complete)."""
        return {"steps_served": (self._served % len(self)) // self.accumulate}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the global batches already served when the next epoch pass starts.

        Checkpoints of runs before the global batch count ``batches_served`` (one device, no
        accumulation: the same thing).
        """
        self._skip_steps = state.get("steps_served", state.get("batches_served", 0))
