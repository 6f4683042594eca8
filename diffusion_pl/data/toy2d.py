"""Low-dimensional sources drawn once into memory: Gaussian mixtures and the classic 2-D toys."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Literal, get_args

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from diffusion_pl.data.sources import Source, Split, check_split
from diffusion_pl.mixture import GaussianMixtureSpec

__all__ = ["GaussianMixture", "Toy2D", "Toy2DName"]

Toy2DName = Literal["8gaussians", "2gaussians-unequal", "moons", "checkerboard", "swissroll"]


class _SampledSource(Source):
    """A source drawn once, in memory, from ``seed``.

    One draw of ``num_train + num_val`` i.i.d. points: the first ``num_train`` are the train
    split, the rest the val split, so the two are disjoint and the same seed gives the same data.
    """

    def __init__(self, num_train: int, num_val: int, seed: int) -> None:
        if num_train <= 0:
            raise ValueError(f"num_train must be > 0, got {num_train}")
        if num_val < 0:
            raise ValueError(f"num_val must be >= 0, got {num_val}")
        self.num_train = num_train
        self.num_val = num_val
        self.seed = seed

    @property
    def num_levels(self) -> None:
        """Continuous data: no quantisation."""
        return None

    @abstractmethod
    def _sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw ``n`` points ``[n, D]`` (float64) and labels ``[n]`` (int64, −1 for none)."""

    def load(self, split: Split) -> TensorDataset:
        """Draw the data from ``seed`` and return one split as ``(x, y)`` examples."""
        check_split(split)
        x, y = self._sample(self.num_train + self.num_val, torch.Generator().manual_seed(self.seed))
        part = slice(None, self.num_train) if split == "train" else slice(self.num_train, None)
        return TensorDataset(x[part].float(), y[part])


class GaussianMixture(_SampledSource):
    """Isotropic Gaussian mixture in any dimension, given in YAML.

    Labels are the component indices, so ``num_classes`` is the number of components.

    Args:
        means: K component means, all of the same dimension D.
        std: σ shared by all components, or one per component; each > 0.
        weights: K positive weights summing to 1 (within 1e-6); None for equal weights.
        num_train: number of training points.
        num_val: number of validation points.
        seed: seed of the single draw that makes both splits.
    """

    def __init__(
        self,
        means: list[list[float]],
        std: float | list[float] = 0.5,
        weights: list[float] | None = None,
        num_train: int = 100_000,
        num_val: int = 5_000,
        seed: int = 0,
    ) -> None:
        super().__init__(num_train, num_val, seed)
        self.means, self.std, self.weights = means, std, weights  # the configuration, as given
        self._spec = GaussianMixtureSpec.isotropic(means, std, weights)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(D,)``."""
        return (self._spec.dim,)

    @property
    def num_classes(self) -> int:
        """Number of mixture components K."""
        return self._spec.num_components

    def mixture(self) -> GaussianMixtureSpec:
        """The mixture the data are drawn from."""
        return self._spec

    def _sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self._spec.sample(n, generator)


def _eight_gaussians() -> GaussianMixtureSpec:
    """Eight equal modes on a circle of radius 4 at angles kπ/4, σ = 0.5."""
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    means = 4.0 * torch.stack([angle.cos(), angle.sin()], dim=-1)
    return GaussianMixtureSpec.isotropic(means.tolist(), 0.5)


def _two_gaussians_unequal() -> GaussianMixtureSpec:
    """Modes at (−4, 0) and (4, 0) with weights 0.8 / 0.2, σ = 0.5."""
    return GaussianMixtureSpec.isotropic([[-4.0, 0.0], [4.0, 0.0]], 0.5, [0.8, 0.2])


def _moons(n: int, generator: torch.Generator) -> Tensor:
    """Two interleaving half circles (noise 0.1), centred and scaled by 2.5 to about [−4, 4]."""
    theta = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, theta.cos(), 1.0 - theta.cos())
    y = torch.where(upper, theta.sin(), 0.5 - theta.sin())
    noise = 0.1 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    centre = torch.tensor([0.5, 0.25], dtype=torch.float64)
    return 2.5 * (torch.stack([x, y], dim=-1) + noise - centre)


def _checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Uniform on the 8 dark squares of a 4 × 4 board covering [−4, 4]²."""
    col = torch.randint(0, 4, (n,), generator=generator)
    row = 2 * torch.randint(0, 2, (n,), generator=generator) + col % 2
    corner = torch.stack([col, row], dim=-1).to(torch.float64)
    return -4.0 + 2.0 * (corner + torch.rand(n, 2, generator=generator, dtype=torch.float64))


def _swissroll(n: int, generator: torch.Generator) -> Tensor:
    """The spiral r = θ, θ ∈ [1.5π, 4.5π], scaled to radius 4, with Gaussian noise σ = 0.2."""
    theta = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=generator, dtype=torch.float64))
    spiral = theta.unsqueeze(-1) * torch.stack([theta.cos(), theta.sin()], dim=-1)
    noise = 0.2 * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return spiral * (4.0 / (4.5 * math.pi)) + noise


_MIXTURES = {"8gaussians": _eight_gaussians, "2gaussians-unequal": _two_gaussians_unequal}
_SHAPES = {"moons": _moons, "checkerboard": _checkerboard, "swissroll": _swissroll}


class Toy2D(_SampledSource):
    """The classic 2-D toy distributions, as raw coordinates in about [−4, 4]².

    ``8gaussians``: equal modes on a circle of radius 4 at angles kπ/4, σ = 0.5.
    ``2gaussians-unequal``: modes at (∓4, 0), σ = 0.5, weights 0.8 / 0.2 (the trap for plain
    Langevin dynamics). For these two mixtures labels are the component index and
    :meth:`mixture` gives the exact distribution; ``moons``, ``checkerboard`` and ``swissroll``
    have no labels (−1).

    Args:
        name: which distribution.
        num_train: number of training points.
        num_val: number of validation points.
        seed: seed of the single draw that makes both splits.
    """

    def __init__(
        self,
        name: Toy2DName = "8gaussians",
        num_train: int = 100_000,
        num_val: int = 5_000,
        seed: int = 0,
    ) -> None:
        if name not in get_args(Toy2DName):
            raise ValueError(f"name must be one of {get_args(Toy2DName)}, got {name!r}")
        super().__init__(num_train, num_val, seed)
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        """``(2,)``."""
        return (2,)

    @property
    def num_classes(self) -> int | None:
        """Number of mixture components, or None for the unlabelled shapes."""
        spec = self.mixture()
        return None if spec is None else spec.num_components

    def mixture(self) -> GaussianMixtureSpec | None:
        """The exact mixture for ``8gaussians`` and ``2gaussians-unequal``, else None."""
        build = _MIXTURES.get(self.name)
        return None if build is None else build()

    def _sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        spec = self.mixture()
        if spec is not None:
            return spec.sample(n, generator)
        return _SHAPES[self.name](n, generator), torch.full((n,), -1, dtype=torch.int64)
