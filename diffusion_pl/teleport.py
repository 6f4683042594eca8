"""The Gaussian teleport: the sampler's first, high-noise stretch taken in closed form.

At high noise every data distribution looks Gaussian to the flow: the posterior mean
E[x_0 | x_t] of data with mean μ and covariance Σ = U diag(λ) Uᵀ is, up to terms of the
signal-to-noise ratio's higher powers, that of N(μ, Σ). For Gaussian data the
probability-flow ODE of any path x_t = α_t x_0 + σ_t ε is linear and solved exactly: along each
eigenvector u_k of Σ the marginal is N(α_t μ_k, α_t² λ_k + σ_t²), and the flow is the monotone
map between two of them,

    x_s = α_s μ + U diag(√((α_s² λ + σ_s²) / (α_t² λ + σ_t²))) Uᵀ (x_t − α_t μ).

Wang & Vastola (2023, "The Hidden Linear Structure in Score-Based Models and its Application",
arXiv 2311.10892; "analytical teleportation" in their later work) replace the first 15–30 % of
a sampler's steps by this map. It
matters most for ε-prediction on VP paths at few steps: at t_max of the DDPM path α ≈ 0.006, so
the network's x̂_0 = (x − σ ε̂)/α multiplies the error of ε̂ by σ/α ≈ 160, and the first solver
step carries that error into every later one; the Gaussian map there is exact to the data's
second moments and costs no network call.

A :class:`~diffusion_pl.samplers.CustomGrid` with ``teleport: true`` (what ``tune-grid
--teleport`` writes) starts its solver below t_max; the sampler carries the prior draw there by
:meth:`DataMoments.carry`, with the data's moments that :func:`attach_data_moments` measured
from the training split (model space: codes for a latent model).
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from diffusion_pl.paths import NoisePath

if TYPE_CHECKING:
    from diffusion_pl.data import DiffusionDataModule

__all__ = [
    "MAX_DIMENSIONS",
    "DataMoments",
    "HoldsMoments",
    "MayTeleport",
    "attach_data_moments",
    "moments_of_data",
]

MAX_DIMENSIONS = 4096
"""The most dimensions whose full covariance (D² float64 numbers, 128 MiB at 4,096) is kept."""


@dataclass(frozen=True)
class DataMoments:
    """Mean and covariance of the data, the covariance by its eigendecomposition Σ = U diag(λ) Uᵀ.

    Attributes:
        mean: μ, ``[D]`` float64.
        eigenvalues: λ, ``[D]`` float64, ≥ 0.
        eigenvectors: U, ``[D, D]`` float64, columns orthonormal.
        examples: how many examples they were measured on.
    """

    mean: Tensor
    eigenvalues: Tensor
    eigenvectors: Tensor
    examples: int

    @classmethod
    def of(cls, x: Tensor) -> DataMoments:
        """The moments of the examples ``x`` ``[N, ...]`` (N ≥ 2), the covariance with 1/(N − 1).

        Raises:
            ValueError: fewer than two examples, or more than :data:`MAX_DIMENSIONS` dimensions.
        """
        flat = x.flatten(1).double()
        n, d = flat.shape
        if n < 2:
            raise ValueError(f"the data's moments need at least 2 examples, got {n}")
        if d > MAX_DIMENSIONS:
            raise ValueError(
                f"the Gaussian teleport keeps the data's full covariance, for at most "
                f"{MAX_DIMENSIONS} dimensions; this data has {d} ({tuple(x.shape[1:])}): sample "
                "without teleport (a grid file without it), or train in a latent space"
            )
        mean = flat.mean(0)
        eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(flat.T).reshape(d, d))
        return cls(mean, eigenvalues.clamp_min(0), eigenvectors, n)

    def carry(self, x: Tensor, path: NoisePath, t: float, s: float) -> Tensor:
        """x_s from x_t along the exact probability-flow ODE of N(μ, Σ) on ``path`` (module
        docstring), in ``x``'s shape and dtype.

        Raises:
            ValueError: ``x``'s examples have another number of dimensions than the moments.
        """
        flat = x.flatten(1).double()
        if flat.shape[1] != self.mean.numel():
            raise ValueError(
                f"the data's moments are of {self.mean.numel()} dimensions, the samples of "
                f"{flat.shape[1]} ({tuple(x.shape[1:])}): measure them on this model's data"
            )
        mean, values, vectors = (m.to(flat.device) for m in (self.mean, self.eigenvalues,
                                                             self.eigenvectors))  # fmt: skip
        alpha_t, sigma_t, alpha_s, sigma_s = (
            float(f(path.as_time(u))) for u in (t, s) for f in (path.alpha, path.sigma)
        )
        scale = ((alpha_s**2 * values + sigma_s**2) / (alpha_t**2 * values + sigma_t**2)).sqrt()
        carried = ((flat - alpha_t * mean) @ vectors * scale) @ vectors.T + alpha_s * mean
        return carried.to(x.dtype).reshape(x.shape)


def moments_of_data(datamodule: DiffusionDataModule, limit: int = 50_000) -> DataMoments:
    """The moments of up to ``limit`` examples of the train split (of val where train is
    streamed), in model space."""
    for split in ("train", "val"):
        data = datamodule.dataset(split)
        if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
            if split == "val":
                print("note: the train split is streamed; the Gaussian teleport uses the val "
                      "split's moments", file=sys.stderr, flush=True)  # fmt: skip
            examples = itertools.islice(range(len(data)), limit)
            return DataMoments.of(torch.stack([data[i][0] for i in examples]))
    raise ValueError(
        "the Gaussian teleport needs the data's moments, but both splits are streamed: sample "
        "without teleport (a grid file without it)"
    )


class HoldsMoments(Protocol):
    """What :func:`attach_data_moments` gives the moments to (a ``DiffusionModule``; typed by
    what it uses, so this module imports no formulation)."""

    data_moments: DataMoments | None


class MayTeleport(Protocol):
    """A sampler, as far as :func:`attach_data_moments` asks it (``Sampler.teleports``)."""

    def teleports(self) -> bool: ...


def attach_data_moments(
    module: HoldsMoments, sampler: MayTeleport, datamodule: DiffusionDataModule, limit: int = 50_000
) -> None:
    """Give ``module`` the moments of its training data (``module.data_moments``) when
    ``sampler`` teleports and the module has none yet: measured on up to ``limit`` examples."""
    if sampler.teleports() and module.data_moments is None:
        module.data_moments = moments_of_data(datamodule, limit)
