"""Small tensor helpers shared by every module."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["append_dims", "as_batch"]


def append_dims(x: Tensor, target_ndim: int) -> Tensor:
    """Append trailing singleton dimensions so a per-sample ``[B]`` tensor broadcasts.

    Args:
        x: tensor of shape ``[B]`` (or any shape with ``x.ndim <= target_ndim``).
        target_ndim: number of dimensions of the tensor ``x`` must broadcast against.

    Returns:
        ``x`` viewed as ``[B, 1, ..., 1]`` with ``target_ndim`` dimensions.
    """
    missing = target_ndim - x.ndim
    if missing < 0:
        raise ValueError(f"append_dims: x has {x.ndim} dims, more than target_ndim={target_ndim}")
    return x.reshape(*x.shape, *([1] * missing))


def as_batch(t: Tensor | float, batch_size: int, like: Tensor) -> Tensor:
    """Broadcast a time (python float, 0-dim or ``[B]`` tensor) to a ``[B]`` tensor.

    Args:
        t: a scalar time or per-sample times ``[B]``.
        batch_size: B.
        like: a tensor whose device the result takes; float64 times stay float64,
            everything else becomes float32.
    """
    t = torch.as_tensor(t, device=like.device)
    if not t.is_floating_point() or t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    return t.expand(batch_size) if t.ndim == 0 else t.reshape(batch_size)
