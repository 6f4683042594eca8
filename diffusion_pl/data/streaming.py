"""Streamed training data: Hugging Face ``IterableDataset`` shards, read once, resumable mid-epoch.

A dataset too large to load (LAION-style parquet shards, full-size ImageNet) is read as a stream
(:class:`StreamingSplit`) and served by :class:`StreamingLoader`. What one epoch reads, for a
run of ``world`` ranks with ``W`` DataLoader workers each (``W = 1`` when ``num_workers`` is 0):

* **shards**: worker w (of every rank) takes every W-th shard (``IterableDataset.shard``), and
  the ranks split those (``datasets.distributed.split_dataset_by_node``: whole shards when
  their count divides evenly, else every ``world``-th example), so the (rank, worker) pairs
  share the shards out without overlap: every example is read at most once per epoch. The
  order of a worker's shards is drawn anew each epoch from (seed, epoch)
  (``IterableDataset.set_epoch``), the same on every rank.
* **shuffle buffer**: each worker reads its stream in windows of ``shuffle_buffer`` raw
  (undecoded) rows and serves each window in a random order drawn from (seed, epoch, rank,
  worker, window), so a worker holds at most one window in memory. ``hflip`` flips are drawn
  from the same generator.
* **length**: every rank serves exactly ``num_examples // (world · batch_size)`` batches per
  epoch (the remainder, fewer than ``world · batch_size`` examples, is left out, like
  ``drop_last``), so the ranks take the same number of steps; a rank whose share runs out
  earlier (shards of very unequal size) stops the run with an error.

**Resuming exactly.** Each batch carries its worker's position: the ``datasets`` state dict
(``IterableDataset.state_dict()``) at the start of the current window, the window's index and
how many of its rows were served. The loader keeps the position of the last batch each worker
delivered, and which worker is next. A checkpoint stores these for every rank (gathered from
all ranks when the loader's state is saved); a resumed loader has each worker load its
``datasets`` state, re-read that one window, draw the same order, skip what was served, and
rotates the workers so the worker due next comes first. The resumed run then serves the batches
the uninterrupted run would have, in the same order. This holds for the same number of ranks
and workers: a resume that changes either is refused (the shards would be dealt out anew).
``datasets``' own shuffle buffer is not used: its state does not hold the buffer's rows, so a
resume from it would lose them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets as hf
import fsspec
import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from datasets.distributed import split_dataset_by_node
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from diffusion_pl.data.sources import Example

__all__ = ["StreamingLoader", "StreamingSplit", "parquet_rows"]

Batch = tuple[Tensor, Tensor]
Position = dict[str, Any]
"""A worker's place in its stream: ``start`` (the datasets state at the start of the window,
None for the first), ``window`` (its index) and ``served`` (rows of it served so far)."""


def _seed(*parts: int) -> int:
    """A 31-bit seed from integers (a hash), for numpy's and datasets' generators."""
    key = "/".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % (2**31 - 1)


def parquet_rows(files: list[str]) -> int | None:
    """Rows in local parquet files, read from their footers; None unless all are local parquet."""
    paths = [Path(f) for f in files]
    if not paths or not all(p.suffix == ".parquet" and p.is_file() for p in paths):
        return None
    return sum(pq.read_metadata(p).num_rows for p in paths)


@dataclass
class _Pass:
    """What one pass over the stream needs to know, set by the loader before each pass."""

    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world: int = 1
    workers: int = 1
    first_worker: int = 0
    positions: dict[int, Position] = field(default_factory=dict)


class StreamingSplit(IterableDataset):
    """One split of a Hugging Face ``IterableDataset``, served as ``(x, y)`` batches.

    Iterated by :class:`StreamingLoader` (which sets the pass: epoch, rank, workers, resume
    positions); each item is ``(x, y, position, worker)``: a collated batch, the worker's
    position after it, and the worker's index. See the module docstring for the order.

    Args:
        data: the streamed split; image columns should not be decoded (``Image(decode=False)``),
            so a window holds raw bytes.
        decode: turns one raw row (a dict of columns) into an ``(x, y)`` example; it must pickle
            (a module-level function or a ``functools.partial`` of one).
        num_examples: examples in the split, for the epoch's length.
        shuffle_buffer: rows per window (1: no shuffling within shards).
    """

    def __init__(
        self,
        data: hf.IterableDataset,
        decode: Callable[[dict[str, Any]], Example],
        num_examples: int,
        shuffle_buffer: int = 1000,
    ) -> None:
        if num_examples <= 0:
            raise ValueError(f"num_examples must be > 0, got {num_examples}")
        if shuffle_buffer <= 0:
            raise ValueError(f"shuffle_buffer must be > 0 (1: no shuffling), got {shuffle_buffer}")
        self.data = data
        self.decode = decode
        self.num_examples = num_examples
        self.shuffle_buffer = shuffle_buffer
        self.batch_size, self.hflip = 1, False  # set by the loader
        self.plan = _Pass()

    @property
    def num_shards(self) -> int:
        """Shards (files) of the split."""
        return self.data.num_shards

    def stream(self, worker: int) -> hf.IterableDataset:
        """The raw rows of one worker of this pass, in the epoch's shard order."""
        plan = self.plan
        data = self.data
        if plan.world > 1:
            data = split_dataset_by_node(data, rank=plan.rank, world_size=plan.world)
        if plan.workers > 1:
            data = data.shard(num_shards=plan.workers, index=worker, contiguous=False)
        data.set_epoch(1 + _seed(plan.seed, plan.epoch))  # any value > 0 shuffles the shards
        return data

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Position, int]]:
        info = get_worker_info()
        plan = self.plan
        worker = (plan.first_worker + (0 if info is None else info.id)) % plan.workers
        if info is not None:
            fsspec.asyn.reset_lock()  # as datasets does in workers: fsspec's lock after fork
        data = self.stream(worker)
        position = plan.positions.get(worker, {"start": None, "window": 0, "served": 0})
        if position["start"] is not None:
            data.load_state_dict(position["start"])
        start, window, skip = position["start"], position["window"], position["served"]
        examples: list[Example] = []
        for rows in data.iter(batch_size=self.shuffle_buffer):
            after = data.state_dict()  # where the next window starts
            size = len(next(iter(rows.values())))
            rng = np.random.default_rng(_seed(plan.seed, plan.epoch, plan.rank, worker, window))
            order = rng.permutation(size) if self.shuffle_buffer > 1 else np.arange(size)
            flips = rng.random(size) < 0.5
            for served in range(skip + 1, size + 1):
                i = order[served - 1]
                x, y = self.decode({k: v[i] for k, v in rows.items()})
                examples.append((x.flip(-1) if self.hflip and flips[i] else x, y))
                if len(examples) == self.batch_size:
                    here = {"start": start, "window": window, "served": served}
                    yield *self._collate(examples), here, worker
                    examples = []
            start, window, skip = after, window + 1, 0
        if examples:  # this worker's last, smaller batch
            here = {"start": start, "window": window, "served": 0}
            yield *self._collate(examples), here, worker

    @staticmethod
    def _collate(examples: list[Example]) -> Batch:
        return torch.stack([x for x, _ in examples]), torch.stack([y for _, y in examples])


class StreamingLoader(DataLoader):
    """The training loader of a :class:`StreamingSplit`: fixed-length epochs, exact resume.

    ``len`` is the number of batches each rank serves per epoch, the same on every rank, so
    Lightning knows it (validation at ``val_check_interval``, end of epoch) and, as for a
    map-style loader, does not fetch ahead of the step it trains. Its ``state_dict`` holds every
    rank's stream positions (gathered over ``torch.distributed`` when it is initialised; call it
    on every rank, as Lightning's checkpointing does); see the module docstring.

    Args:
        data: the split to stream.
        batch_size: examples per batch.
        rank: this process's global rank.
        world: the number of ranks.
        seed: seed of the shard orders, windows' orders and flips.
        hflip: mirror images left–right with probability 1/2.
        num_workers: DataLoader worker processes (0: read in the main process).
        pin_memory: pin batches in page-locked memory.
        prefetch_factor: batches each worker loads ahead (None: PyTorch's default, 2).
    """

    def __init__(
        self,
        data: StreamingSplit,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        hflip: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        length = data.num_examples // (world * batch_size)
        if length == 0:
            raise ValueError(
                f"the streamed train split has {data.num_examples} examples, fewer than "
                f"{world} ranks x batch_size={batch_size}: lower batch_size"
            )
        workers = max(1, num_workers)
        if workers > data.num_shards:
            raise ValueError(
                f"num_workers={num_workers}, but the stream has {data.num_shards} shard(s) and a "
                f"worker reads whole shards: set num_workers <= {data.num_shards}"
            )
        super().__init__(
            data,
            batch_size=None,  # the StreamingSplit batches, so each batch carries its position
            num_workers=num_workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor,
            persistent_workers=False,  # each pass starts its workers with that pass's plan
        )
        data.batch_size, data.hflip = batch_size, hflip
        self.rank, self.world, self.seed, self.workers = rank, world, seed, workers
        self.length = length
        self.epoch, self.served, self.next_worker = 0, 0, 0
        self.positions: dict[int, Position] = {}

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Batch]:
        if self.served >= self.length:  # the last pass was complete: start the next epoch
            self.epoch, self.served, self.next_worker, self.positions = self.epoch + 1, 0, 0, {}
        self.dataset.plan = _Pass(
            self.seed, self.epoch, self.rank, self.world, self.workers, self.next_worker,
            dict(self.positions),
        )  # fmt: skip
        batches = super().__iter__()
        while self.served < self.length:
            try:
                x, y, position, worker = next(batches)
            except StopIteration:
                raise RuntimeError(
                    f"rank {self.rank}'s share of the stream ran out after {self.served} of "
                    f"{self.length} batches in epoch {self.epoch}: its shards hold fewer examples "
                    "than the others'. Use shards of equal size (or a shard count divisible by "
                    "ranks x workers), or set the source's num_train to the examples each rank "
                    "can serve times the ranks"
                ) from None
            self.positions[worker] = position
            self.served += 1
            self.next_worker = (worker + 1) % self.workers
            yield x, y

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches served and worker positions of every rank (``{"ranks": [...]}``)."""
        state = {
            "epoch": self.epoch,
            "batches_served": self.served,
            "next_worker": self.next_worker,
            "num_workers": self.workers,
            "positions": {str(k): v for k, v in self.positions.items()},
        }
        states = [state]
        if self.world > 1 and dist.is_available() and dist.is_initialized():
            states = [None] * self.world
            dist.all_gather_object(states, state)
        return {"ranks": states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from this rank's saved position; refuse other rank or worker counts."""
        ranks = state["ranks"]
        if len(ranks) != self.world:
            raise ValueError(
                f"the checkpoint's stream positions are for {len(ranks)} rank(s), but this run "
                f"has {self.world}: a streamed dataset resumes exactly only on as many ranks "
                "(trainer.devices x trainer.num_nodes) as it was saved with"
            )
        mine = ranks[self.rank]
        if mine["num_workers"] != self.workers:
            raise ValueError(
                f"the checkpoint's stream positions are for {mine['num_workers']} reader(s) per "
                f"rank, but this run has {self.workers} (data.num_workers, 0 counting as 1): a "
                "streamed dataset resumes exactly only with the num_workers it was saved with"
            )
        self.epoch, self.served = mine["epoch"], mine["batches_served"]
        self.next_worker = mine["next_worker"]
        self.positions = {int(k): v for k, v in mine["positions"].items()}
