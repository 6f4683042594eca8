"""Where sampling noise comes from: one generator for a batch, or one per sample.

Samplers, priors and stochastic steps draw their noise through :func:`randn`, which takes
either a single ``torch.Generator`` (the batch's noise comes from one stream) or a sequence
of generators, one per sample, in which case row k of every draw comes from generator k alone.
:func:`sample_generators` seeds generator k from (seed, k), so sample k of a run depends on
the seed and its own index only: N = 200 extends N = 100, and neither the batch size nor the
number of processes changes a sample.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Generators", "randn", "sample_generators", "sample_seed"]

Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the whole batch, one per sample (row), or None (torch's global one)."""


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
        generator: a ``torch.Generator``, a sequence of B generators, or None.
        device: device of the result (and of the generators).
        dtype: floating dtype of the result (default: torch's default dtype).
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(
            f"{len(generator)} per-sample generators for a batch of {shape[0]}: pass one per sample"
        )
    rows = [
        torch.randn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in generator
    ]
    return torch.stack(rows) if rows else torch.empty(tuple(shape), device=device, dtype=dtype)
