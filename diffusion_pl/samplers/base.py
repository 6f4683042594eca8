"""What every sampler shares: the denoiser type, time grids, and the thin config base class.

Samplers are functions ``sample_x(denoiser, path, x, ts, *, generator, progress) -> Tensor``
that integrate from ``ts[0]`` down to ``ts[-1]``. The ``Sampler`` classes are thin YAML-facing
configs (``class_path``/``init_args``): the base draws the prior, builds the grid, calls the
subclass's function with the subclass's settings and applies the final denoising step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusion_pl.parameterization import Prediction
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators
from diffusion_pl.samplers.grids import Grid, UniformGrid

__all__ = ["DenoiserFn", "Sampler", "progress_bar"]

DenoiserFn = Callable[[Tensor, Tensor | float], Prediction]
"""``denoiser(x [B, ...], t) -> Prediction(x0, eps)``: a trained net or an exact oracle."""


def progress_bar(items: Iterable, total: int, enabled: bool, desc: str) -> Iterator:
    """A tqdm bar over ``items`` when ``enabled`` (sampling loops are long; show them)."""
    return iter(tqdm(items, total=total, disable=not enabled, desc=desc, leave=False))


def _show(value: object) -> str:
    """``repr`` of a setting; a function by its import path, as YAML names it."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


class Sampler:
    """Thin config for a sampling function: its settings, steps, and the final denoising step.

    A subclass names its function in :attr:`solver` and passes its constructor arguments to
    ``__init__``, which keeps them as attributes, in order (:meth:`arguments`). Calling the
    sampler checks the path, draws x ~ prior, builds the grid (:meth:`time_grid`), runs
    ``solver(denoiser, path, x, ts, generator=…, progress=…, **settings)`` with every
    constructor argument other than ``steps`` and ``denoise_final`` as a keyword setting, and,
    if σ(t_min) > 0 and ``denoise_final``, returns the denoised x̂_0(x_{t_min}) (one more
    network evaluation; Song et al., 2021, App. G).

    Args:
        denoise_final: return x̂_0 at the last time instead of x_{t_min}.
        **settings: the subclass's own arguments: ``steps`` (>= 1) for a sampler on a fixed
            grid, and the keyword settings of :attr:`solver`.
    """

    solver: ClassVar[Callable[..., Tensor]]
    """``solver(denoiser, path, x, ts, *, generator, progress, **settings) -> x at ts[-1]``."""

    default_grid: ClassVar[Grid] = UniformGrid()
    """The time grid of the sampler's paper, used when its ``grid`` setting is None or absent."""

    def __init__(self, *, denoise_final: bool = True, **settings: Any) -> None:
        steps = settings.get("steps")
        if steps is not None and steps < 1:
            raise ValueError(f"{type(self).__name__}: steps must be >= 1, got {steps}")
        vars(self).update(settings, denoise_final=denoise_final)

    def with_steps(self, steps: int) -> Sampler:
        """A copy of this sampler with ``steps`` steps (every other setting kept)."""
        if "steps" not in self.arguments():
            raise ValueError(f"{type(self).__name__} chooses its own steps; drop --steps")
        return self._replaced(steps=steps)

    def with_grid(self, grid: Grid) -> Sampler:
        """A copy of this sampler on the time grid ``grid`` (every other setting kept)."""
        if "grid" not in self.arguments():
            raise ValueError(
                f"{type(self).__name__} chooses its own times (it has no grid setting); drop --grid"
            )
        return self._replaced(grid=grid)

    def _replaced(self, **changes: Any) -> Sampler:
        # A jsonargparse lazy_instance (the formulations' defaults) is a subclass whose
        # constructor takes no settings; rebuild the class it stands for.
        cls = getattr(self, "_lazy_class_type", type(self))
        return cls(**{**self.arguments(), **changes})

    def check(self, path: NoisePath) -> None:
        """Raise ValueError, saying why, if this sampler cannot run on ``path``."""

    def time_grid(self, path: NoisePath, device: torch.device | str | None) -> Tensor:
        """The decreasing times ``solver`` visits: ``steps`` steps t_max → t_min on the
        sampler's ``grid`` setting, else on its paper's :attr:`default_grid`."""
        grid = self.arguments().get("grid") or self.default_grid
        return grid(path, self.steps, device)

    def arguments(self) -> dict[str, Any]:
        """The constructor arguments, in order (a jsonargparse lazy instance's ``_lazy…``
        bookkeeping, also in ``vars(self)``, left out)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def settings(self) -> dict[str, Any]:
        """The keyword settings of :attr:`solver`: the arguments but steps and denoise_final."""
        fixed = ("steps", "grid", "denoise_final")
        return {k: v for k, v in self.arguments().items() if k not in fixed}

    @torch.no_grad()
    def __call__(
        self,
        denoiser: DenoiserFn,
        path: NoisePath,
        shape: tuple[int, ...],
        *,
        generator: Generators = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Draw ``shape`` samples: prior → :attr:`solver` on :meth:`time_grid` → denoising.

        Args:
            denoiser: ``(x, t) -> Prediction``.
            path: the noise path.
            shape: ``[B, ...]``.
            generator: one generator, or one per sample (row k of all noise from the k-th).
            device: device of the samples.
            dtype: dtype of the prior sample (default: torch's default dtype).
            progress: show a progress bar.
        """
        self.check(path)
        x = path.prior_sample(shape, generator=generator, device=device, dtype=dtype)
        ts = self.time_grid(path, x.device)
        x = self.solver(
            denoiser, path, x, ts, generator=generator, progress=progress, **self.settings()
        )
        if self.denoises_at_end(path):
            x = denoiser(x, path.t_min).x0
        return x

    def denoises_at_end(self, path: NoisePath) -> bool:
        """Whether a call ends with one more network evaluation, x̂_0 at ``path.t_min``:
        ``denoise_final`` is set and σ(t_min) > 0."""
        return self.denoise_final and float(path.sigma(path.as_time(path.t_min))) > 0

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_show(v)}" for k, v in self.arguments().items())
        return f"{type(self).__name__}({args})"
