"""Where noise comes from: one generator for a batch, one per sample, or one per training example.

Samplers, priors and stochastic steps draw their noise through :func:`randn`, which takes
either a single ``torch.Generator`` (the batch's noise comes from one stream) or a sequence
of generators, one per sample, in which case row k of every draw comes from generator k alone.
:func:`sample_generators` seeds generator k from (seed, k), so sample k of a run depends on
the seed and its own index only: N = 200 extends N = 100, and neither the batch size nor the
number of processes changes a sample.

Training draws (t, ε, label dropout, …) go through :func:`rand` and :func:`randn` too; during
``fit`` their source is an :class:`ExampleNoise` (set by the ``StepSeed`` callback), whose row
k is a function of (run seed, optimizer step, global example index k) alone, so how the global
batch is split over devices and accumulated micro-batches does not change any draw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "ExampleNoise",
    "Generators",
    "low_discrepancy_uniform",
    "rand",
    "randn",
    "sample_generators",
    "sample_seed",
]


def _seed(*key: object) -> int:
    """A 63-bit seed hashed from ``key`` (a hash, not a sum, so nearby keys are unrelated)."""
    digest = hashlib.blake2b("/".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ExampleNoise:
    """The training draws of rows ``start … start + n − 1`` of one optimizer step's global batch.

    Every draw is a function of (seed, step, draw number, global row index) only. Draw number c
    (the c-th call since this object was made: t, then ε, … as the loss asks for them) of row k
    is read from a stream seeded by (seed, step, c, k // ``BLOCK``): rows are drawn in blocks of
    ``BLOCK`` consecutive global indices, one generator per block, and a micro-batch takes its
    rows out of the blocks it overlaps. A device that holds rows 32–63 of a global batch of 64
    therefore draws exactly what one device holding all 64 draws for those rows, whatever the
    number of devices and of accumulated micro-batches, as long as every part of the batch makes
    the same sequence of calls (the same loss code does). Blocks (rather than one generator per
    row) keep the cost at about n / ``BLOCK`` generator calls per draw.

    Args:
        seed: the run seed.
        step: the optimizer step (global step) the batch trains.
        start: global index of this micro-batch's first row in the step's global batch.
        total: the global batch size (the denominator of low-discrepancy draws).
    """

    BLOCK = 16
    """Rows per generator; part of the definition of the stream, so never change it."""

    def __init__(self, seed: int, step: int, start: int, total: int) -> None:
        if not 0 <= start < total:
            raise ValueError(f"start must be in [0, total={total}), got {start}")
        self.seed, self.step, self.start, self.total = seed, step, start, total
        self.calls = 0

    def _next_key(self) -> tuple[int, int, int]:
        self.calls += 1
        return self.seed, self.step, self.calls - 1

    def draw(
        self,
        fn: str,
        shape: Sequence[int],
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> Tensor:
        """``torch.<fn>`` (``rand`` or ``randn``) of ``shape`` = ``[n, ...]``, global rows
        start … start + n − 1."""
        n, rest, key = shape[0], tuple(shape[1:]), self._next_key()
        if self.start + n > self.total:
            raise ValueError(
                f"rows {self.start}..{self.start + n - 1} exceed the global batch of {self.total}"
            )
        first, last = self.start // self.BLOCK, (self.start + n - 1) // self.BLOCK
        device = torch.device(device or "cpu")
        blocks = [
            getattr(torch, fn)(
                (self.BLOCK, *rest),
                generator=torch.Generator(device=device).manual_seed(_seed(*key, j)),
                device=device,
                dtype=dtype,
            )
            for j in range(first, last + 1)
        ]
        offset = self.start - first * self.BLOCK
        return torch.cat(blocks)[offset : offset + n]

    def low_discrepancy(self, n: int, device: torch.device | str | None) -> Tensor:
        """u_k = (u_0 + k / total) mod 1 for the global rows k of this micro-batch, float64.

        u_0 is one draw shared by the whole global batch, so the global batch, not each
        micro-batch, covers [0, 1) evenly (Kingma et al., 2021, App. I.1).
        """
        generator = torch.Generator().manual_seed(_seed(*self._next_key(), "shared"))
        u0 = torch.rand((), generator=generator, dtype=torch.float64).to(device)
        k = torch.arange(self.start, self.start + n, device=device, dtype=torch.float64)
        return torch.remainder(u0 + k / self.total, 1.0)


Generators = torch.Generator | Sequence[torch.Generator] | ExampleNoise | None
"""One generator for the whole batch, one per sample (row), a training step's per-example
noise, or None (torch's global one)."""


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run seeded ``seed`` (a hash, not seed + index,
    so the streams of (seed, k) and (seed + 1, k − 1) are unrelated)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_generators(
    seed: int, start: int, n: int, device: torch.device | str | None = None
) -> list[torch.Generator]:
    """Generators of samples ``start … start + n − 1``, generator k seeded by (seed, k)."""
    return [
        torch.Generator(device=device or "cpu").manual_seed(sample_seed(seed, k))
        for k in range(start, start + n)
    ]


def _draw(
    fn: str,
    shape: Sequence[int],
    generator: Generators,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> Tensor:
    """``torch.rand`` or ``torch.randn`` (``fn``) from any :data:`Generators`."""
    if isinstance(generator, ExampleNoise):
        return generator.draw(fn, shape, device, dtype)
    if generator is None or isinstance(generator, torch.Generator):
        return getattr(torch, fn)(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(
            f"{len(generator)} per-sample generators for a batch of {shape[0]}: pass one per sample"
        )
    rows = [
        getattr(torch, fn)(tuple(shape[1:]), generator=g, device=device, dtype=dtype)
        for g in generator
    ]
    return torch.stack(rows) if rows else torch.empty(tuple(shape), device=device, dtype=dtype)


def randn(
    shape: Sequence[int],
    generator: Generators = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal noise of ``shape``; with per-sample generators row k comes from the k-th.

    Args:
        shape: ``[B, ...]``.
        generator: a ``torch.Generator``, a sequence of B generators, an :class:`ExampleNoise`,
            or None.
        device: device of the result (and of the generators).
        dtype: floating dtype of the result (default: torch's default dtype).
    """
    return _draw("randn", shape, generator, device, dtype)


def rand(
    shape: Sequence[int],
    generator: Generators = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """U[0, 1) draws of ``shape``, from the same sources as :func:`randn`."""
    return _draw("rand", shape, generator, device, dtype)


def low_discrepancy_uniform(
    n: int, generator: Generators = None, device: torch.device | str | None = None
) -> Tensor:
    """``n`` float64 draws u_k = (u_0 + k/n) mod 1 with one u_0 ~ U[0, 1): each u_k uniform,
    the batch covering [0, 1) evenly; for an :class:`ExampleNoise`, k and n are the rows'
    global indices and the global batch size.

    Reference: Kingma et al. (2021), "Variational Diffusion Models", App. I.1.
    """
    if isinstance(generator, ExampleNoise):
        return generator.low_discrepancy(n, device)
    u0 = rand((1,), generator, device=device, dtype=torch.float64)
    return torch.remainder(u0 + torch.arange(n, device=device, dtype=torch.float64) / n, 1.0)
