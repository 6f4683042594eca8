"""What every sampler shares: the denoiser type, time grids, and the thin config base class.

Samplers are functions ``sample_x(denoiser, path, x, ts, *, generator, progress) -> Tensor``
that integrate from ``ts[0]`` down to ``ts[-1]``. The ``Sampler`` classes are thin YAML-facing
configs (``class_path``/``init_args``) that draw the prior, build the grid, call the function
and apply the final denoising step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusion_pl.parameterization import Prediction
from diffusion_pl.paths import NoisePath

__all__ = ["DenoiserFn", "Sampler", "progress_bar", "uniform_time_grid"]

DenoiserFn = Callable[[Tensor, Tensor | float], Prediction]
"""``denoiser(x [B, ...], t) -> Prediction(x0, eps)``: a trained net or an exact oracle."""


def uniform_time_grid(
    path: NoisePath, steps: int, device: torch.device | str | None = None
) -> Tensor:
    """``steps + 1`` times evenly spaced from ``path.t_max`` down to ``path.t_min`` (float64).

    On the VE path this is the geometric σ grid of Song et al. (2021); on ``DDPMPath(T)``
    (t_min = 1/T) ``steps = T − 1`` visits exactly the discrete steps i/T, i = T … 1.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(path.t_max, path.t_min, steps + 1, dtype=torch.float64, device=device)


def progress_bar(items: Iterable, total: int, enabled: bool, desc: str) -> Iterator:
    """A tqdm bar over ``items`` when ``enabled`` (sampling loops are long; show them)."""
    return iter(tqdm(items, total=total, disable=not enabled, desc=desc, leave=False))


class Sampler:
    """Thin config for a sampler: number of steps and whether to denoise at the end.

    Subclasses implement :meth:`solve`. Calling the sampler draws x ~ prior, integrates from
    ``t_max`` to ``t_min`` and, if σ(t_min) > 0 and ``denoise_final``, returns the denoised
    x̂_0(x_{t_min}) (one more network evaluation; Song et al., 2021, App. G).

    Args:
        steps: number of integration steps (must be >= 1).
        denoise_final: return x̂_0 at the last time instead of x_{t_min}.
    """

    def __init__(self, steps: int = 100, denoise_final: bool = True) -> None:
        if steps < 1:
            raise ValueError(f"{type(self).__name__}: steps must be >= 1, got {steps}")
        self.steps, self.denoise_final = steps, denoise_final

    def with_steps(self, steps: int) -> Sampler:
        """A copy of this sampler with ``steps`` steps (every other setting kept)."""
        if "steps" not in vars(self):
            raise ValueError(f"{type(self).__name__} chooses its own steps; drop --steps")
        return type(self)(**{**vars(self), "steps": steps})

    def check(self, path: NoisePath) -> None:
        """Raise ValueError, saying why, if this sampler cannot run on ``path``."""

    def solve(
        self,
        denoiser: DenoiserFn,
        path: NoisePath,
        x: Tensor,
        *,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Integrate from the prior sample ``x`` at ``path.t_max`` to ``path.t_min``."""
        raise NotImplementedError

    def __call__(
        self,
        denoiser: DenoiserFn,
        path: NoisePath,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Draw ``shape`` samples: prior → :meth:`solve` → optional final denoising."""
        self.check(path)
        x = path.prior_sample(shape, generator=generator, device=device)
        x = self.solve(denoiser, path, x, generator=generator, progress=progress)
        t_min = torch.tensor(path.t_min, dtype=torch.float64)
        if self.denoise_final and float(path.sigma(t_min)) > 0:
            x = denoiser(x, path.t_min).x0
        return x

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"
