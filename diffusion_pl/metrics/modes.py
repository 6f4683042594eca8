"""How well 2-D samples cover the modes of an isotropic Gaussian mixture."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ModeStats", "mode_stats"]


@dataclass(frozen=True)
class ModeStats:
    """Fraction of samples within ``k`` std of their nearest mode, and each mode's share.

    Attributes:
        within: fraction of samples within ``k · std`` (Euclidean) of their nearest mean.
        weights: ``[K]`` share of all samples nearest each mean (sums to 1).
    """

    within: float
    weights: Tensor

    def summary(self) -> str:
        shares = ", ".join(f"{w:.3f}" for w in self.weights.tolist())
        return f"within={self.within:.4f} weights=[{shares}]"


def mode_stats(samples: Tensor, means: Tensor, std: float, k: float = 3.0) -> ModeStats:
    """Assign each sample to its nearest mean; count those within ``k · std`` of it.

    Args:
        samples: ``[N, D]`` points.
        means: ``[K, D]`` mixture means.
        std: the components' isotropic standard deviation.
        k: radius in standard deviations.
    """
    samples = samples.to(torch.float64)
    dist = torch.cdist(samples, means.to(torch.float64))
    nearest, index = dist.min(dim=1)
    weights = torch.bincount(index, minlength=means.shape[0]).double() / len(samples)
    return ModeStats(within=float((nearest <= k * std).double().mean()), weights=weights)
