"""What every sampler shares: its signature, progress bars and the thin config base class.

Samplers are functions ``sample_x(denoiser, path, x, ts, *, generator, progress) -> Tensor``
that integrate from ``ts[0]`` down to ``ts[-1]``. The ``Sampler`` classes are thin YAML-facing
configs (``class_path``/``init_args``) whose constructor is derived from their function: the
base draws the prior, builds the grid, calls the function with the config's settings and applies
the final denoising step.

The shared arguments of the sampling functions, documented here once (each function's ``Args:``
lists its own settings, and a shared argument only where it says more):

Args:
    denoiser: ``(x, t) -> Prediction``.
    path: the noise path.
    x: samples at ``ts[0]``, ``[B, ...]``.
    ts: decreasing times ``[N + 1]``.
    generator: the source of all noise beyond ``x``: one generator, or one per sample (row k
        of all noise from the k-th); a deterministic sampler takes it unused, for the shared
        signature.
    progress: show a progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusion_pl.compat import lazy_class
from diffusion_pl.parameterization import DenoiserFn, Prediction
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators
from diffusion_pl.samplers.grids import Grid, UniformGrid
from diffusion_pl.samplers.signature import Layout, derived_init, solver_settings

if TYPE_CHECKING:
    from diffusion_pl.teleport import DataMoments

__all__ = ["DenoiserFn", "Sampler", "batch_times", "denoise", "progress_bar"]


def progress_bar(items: Iterable, total: int, enabled: bool, desc: str) -> Iterator:
    """A tqdm bar over ``items`` when ``enabled`` (sampling loops are long; show them)."""
    return iter(tqdm(items, total=total, disable=not enabled, desc=desc, leave=False))


def batch_times(x: Tensor, t: Tensor) -> Tensor:
    """The scalar time ``t`` as one time per sample of ``x``, ``[B]`` in ``x``'s dtype."""
    return t.to(x.dtype).expand(x.shape[0])


def denoise(denoiser: DenoiserFn, x: Tensor, t: Tensor) -> Prediction:
    """The denoiser's (x̂_0, ε̂) at one scalar time ``t`` for the whole batch ``x``."""
    return denoiser(x, batch_times(x, t))


def _show(value: object) -> str:
    """``repr`` of a setting; a function by its import path, as YAML names it."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


class Sampler:
    """Thin config for a sampling function: its settings, steps, and the final denoising step.

    A subclass declares its :attr:`name`, its function in :attr:`solver` and, as class
    keywords, the layout of its constructor: ``steps=`` (the default number of steps; leave it
    out for a sampler that chooses its own), ``grid=False`` (no ``grid`` setting),
    ``denoise_final=False`` (no final denoising step), and new defaults of the solver's
    settings (``order=3``). The constructor is then derived from the solver's signature
    (:func:`~diffusion_pl.samplers.signature.derived_init`): ``steps``, the solver's keyword
    settings with their types and defaults, ``grid`` and ``denoise_final``; its Args are the
    solver's. Calling the sampler checks the path, draws x ~ prior, builds the grid
    (:meth:`time_grid`), runs ``solver(denoiser, path, x, ts, generator=…, progress=…,
    **settings)`` and, if σ(t_min) > 0 and ``denoise_final``, returns the denoised
    x̂_0(x_{t_min}) (one more network evaluation; Song et al., 2021, App. G).
    """

    name: ClassVar[str]
    """The short name of ``diffusion-pl sample --sampler NAME`` (YAML uses ``class_path``)."""

    solver: ClassVar[Callable[..., Tensor]]
    """``solver(denoiser, path, x, ts, *, generator, progress, **settings) -> x at ts[-1]``."""

    schedule: ClassVar[Callable[..., Any] | None] = None
    """A function whose keyword settings choose the times (they join the constructor's)."""

    default_grid: ClassVar[Grid] = UniformGrid()
    """The time grid of the sampler's paper, used when its ``grid`` setting is None or absent."""

    randomness: ClassVar[str] = "deterministic"
    """Whether a call draws noise beyond the prior (for the README's table)."""

    nfe_per_step: ClassVar[str] = "1"
    """Network evaluations per step (for the README's table)."""

    layout: ClassVar[Layout]
    """The constructor's fixed arguments and the solver's defaults it changes."""

    def __init_subclass__(cls, **declared: Any) -> None:
        """Derive ``__init__`` where a class declares a solver or a layout (``declared``); a
        subclass that declares neither (a jsonargparse lazy instance) keeps its parent's."""
        super().__init_subclass__()
        if "solver" in vars(cls) or declared:
            parent = getattr(cls, "layout", None)
            cls.layout = Layout.declare(parent, **declared)
            cls.__init__ = derived_init(cls, cls.layout)

    def _setup(self, arguments: dict[str, Any]) -> None:
        """Keep the constructor's ``arguments`` as attributes, in order, and check them."""
        steps = arguments.get("steps")
        if steps is not None and steps < 1:
            raise ValueError(f"{type(self).__name__}: steps must be >= 1, got {steps}")
        vars(self).update(arguments)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError, naming the bad setting, for settings the solver would refuse."""

    def is_deterministic(self) -> bool:
        """Whether a call draws no noise beyond the prior, with these settings (a sampler whose
        :attr:`randomness` depends on a setting overrides it)."""
        return self.randomness == "deterministic"

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
        cls = lazy_class(self)
        return cls(**{**self.arguments(), **changes})

    def check(self, path: NoisePath) -> None:
        """Raise ValueError, saying why, if this sampler cannot run on ``path``."""

    def time_grid(self, path: NoisePath, device: torch.device | str | None) -> Tensor:
        """The decreasing times ``solver`` visits: ``steps`` steps t_max → t_min on the
        sampler's ``grid`` setting, else on its paper's :attr:`default_grid`."""
        return self._grid()(path, self.steps, device)

    def _grid(self) -> Grid:
        return self.arguments().get("grid") or self.default_grid

    def teleports(self) -> bool:
        """Whether a call starts with the Gaussian teleport (its grid's ``teleport``), so it
        needs the data's moments (:mod:`diffusion_pl.teleport`)."""
        return "grid" in self.arguments() and self._grid().teleport

    def arguments(self) -> dict[str, Any]:
        """The constructor arguments, in order (a jsonargparse lazy instance's ``_lazy…``
        bookkeeping, also in ``vars(self)``, left out)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def settings(self) -> dict[str, Any]:
        """The keyword settings of :attr:`solver` (the arguments it takes)."""
        taken = solver_settings(self.solver)
        return {k: v for k, v in self.arguments().items() if k in taken}

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
        data_moments: DataMoments | None = None,
    ) -> Tensor:
        """Draw ``shape`` samples: prior → :attr:`solver` on :meth:`time_grid` → denoising;
        where the grid starts below t_max (:meth:`teleports`), the prior draw is carried there
        by the Gaussian teleport first.

        Args:
            denoiser: ``(x, t) -> Prediction``.
            path: the noise path.
            shape: ``[B, ...]``.
            generator: one generator, or one per sample (row k of all noise from the k-th).
            device: device of the samples.
            dtype: dtype of the prior sample (default: torch's default dtype).
            progress: show a progress bar.
            data_moments: the data's mean and covariance, for a grid that teleports.

        Raises:
            ValueError: the grid teleports and ``data_moments`` is None.
        """
        self.check(path)
        x = path.prior_sample(shape, generator=generator, device=device, dtype=dtype)
        ts = self.time_grid(path, x.device)
        x = self.carry_prior(x, path, ts, data_moments)
        x = self.solver(
            denoiser, path, x, ts, generator=generator, progress=progress, **self.settings()
        )
        if self.denoises_at_end(path):
            x = denoiser(x, path.t_min).x0
        return x

    def carry_prior(
        self, x: Tensor, path: NoisePath, ts: Tensor, data_moments: DataMoments | None
    ) -> Tensor:
        """The prior draw ``x`` (at t_max) carried to ``ts[0]``, where :attr:`solver` starts:
        by the Gaussian teleport where the sampler :meth:`teleports`, else ``x`` as drawn.

        Raises:
            ValueError: the sampler teleports and ``data_moments`` is None.
        """
        if not self.teleports():
            return x
        if data_moments is None:
            raise ValueError(
                f"{self!r} starts with the Gaussian teleport, which needs the data's mean "
                "and covariance: sample with diffusion-pl sample/fid or the callbacks, which "
                "measure them (diffusion_pl.teleport.attach_data_moments)"
            )
        return data_moments.carry(x, path, path.t_max, float(ts[0]))

    def denoises_at_end(self, path: NoisePath) -> bool:
        """Whether a call ends with one more network evaluation, x̂_0 at ``path.t_min``:
        ``denoise_final`` is set and σ(t_min) > 0."""
        return self.denoise_final and float(path.sigma(path.as_time(path.t_min))) > 0

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_show(v)}" for k, v in self.arguments().items())
        return f"{type(self).__name__}({args})"
