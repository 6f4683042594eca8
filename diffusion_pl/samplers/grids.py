"""Time grids: where a sampler evaluates the model, from ``path.t_max`` down to ``path.t_min``.

A grid is a small config object, ``grid(path, steps, device) -> ts [steps + 1]`` (float64,
decreasing, ``ts[0] = t_max``, ``ts[-1] = t_min``), chosen in YAML by ``class_path`` and on the
command line by its short name in :data:`GRIDS`. Classes rather than functions because some
hold settings (EDM's ρ) that YAML must be able to set, exactly as samplers do.

Grids in the noise level work on σ̃ = σ/α (EDM's σ of the scaled variable x/α, λ = −2 log σ̃)
and come back to t through the path's inverse ``path.time_of_log_snr``. Where the path's σ̃ is
infinite at t_max (α = 0: the linear path at t = 1) or zero at t_min (σ = 0: the linear path at
t = 0), that end is kept as its own grid point and the spacing runs between the finite
``sigma_max`` / ``sigma_min`` (EDM's 80 and 0.002) over the remaining steps, as EDM appends
σ_N = 0 after its σ_min.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import torch
from torch import Tensor

from diffusion_pl.paths import DDPMPath, NoisePath

__all__ = [
    "GRIDS",
    "CustomGrid",
    "EDMGrid",
    "Grid",
    "LeadingGrid",
    "LinspaceGrid",
    "LogSNRGrid",
    "TrailingGrid",
    "UniformGrid",
    "karras_sigmas",
    "parse_grid",
    "uniform_time_grid",
]


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


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> Tensor:
    """Noise levels of Karras et al. (2022), Eq. 5, from σ_max down to σ_min, ``[n + 1]`` float64.

    σ_i = (σ_max^{1/ρ} + i/n (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0 … n.

    Reference: Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based
    Generative Models", Eq. 5.
    """
    ramp = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


class Grid:
    """A time grid: ``grid(path, steps, device) -> ts [steps + 1]``, float64, decreasing."""

    teleport: bool = False
    """Whether the solver starts below t_max, where the sampler carries the prior draw by the
    Gaussian teleport (:mod:`diffusion_pl.teleport`); only a :class:`CustomGrid` sets it."""

    def __call__(
        self, path: NoisePath, steps: int, device: torch.device | str | None = None
    ) -> Tensor:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        ts = self.times(path, steps).to(device)
        ts[-1] = path.t_min
        if not self.teleport:
            ts[0] = path.t_max
        return ts

    def times(self, path: NoisePath, steps: int) -> Tensor:
        """The ``steps + 1`` times on the CPU (the call pins the two ends exactly)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class UniformGrid(Grid):
    """Evenly spaced in t (today's :func:`uniform_time_grid`; geometric in σ on the VE path)."""

    def times(self, path: NoisePath, steps: int) -> Tensor:
        return uniform_time_grid(path, steps)


class _SigmaGrid(Grid):
    """A grid spaced in σ̃ = σ/α between the path's ends, mapped to t by ``time_of_log_snr``.

    Args:
        sigma_min: σ̃ of the last spaced point where the path's σ̃(t_min) is 0.
        sigma_max: σ̃ of the first spaced point where the path's σ̃(t_max) is infinite.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def spacing(self, sigma_min: float, sigma_max: float, n: int) -> Tensor:
        """``n + 1`` values of σ̃ from ``sigma_max`` down to ``sigma_min``."""
        raise NotImplementedError

    def times(self, path: NoisePath, steps: int) -> Tensor:
        ends = torch.tensor([path.t_max, path.t_min], dtype=torch.float64)
        with torch.no_grad():
            hi, lo = torch.exp(-0.5 * path.log_snr(ends)).tolist()
        head, tail = math.isinf(hi), lo == 0
        hi, lo = (self.sigma_max if head else hi), (self.sigma_min if tail else lo)
        n = steps - head - tail
        if n < 1 or not lo < hi:
            raise ValueError(
                f"{type(self).__name__} on {type(path).__name__} with {steps} steps: spacing "
                f"σ/α from {hi:g} to {lo:g} over {n} steps is empty; use steps >= {head + tail + 1}"
                " and sigma_min < sigma_max inside the path's range"
            )
        with torch.no_grad():
            ts = path.time_of_log_snr(-2.0 * torch.log(self.spacing(lo, hi, n)))
        parts = [ends[:1]] * head + [ts] + [ends[1:]] * tail
        return torch.cat(parts)


class EDMGrid(_SigmaGrid):
    """Karras et al.'s ρ-spaced noise levels (Eq. 5) in σ̃ = σ/α, mapped to t.

    Args:
        rho: ρ (7 in the paper: denser at low noise).
        sigma_min: σ̃ of the last spaced point where σ̃(t_min) = 0 (EDM's 0.002).
        sigma_max: σ̃ of the first spaced point where σ̃(t_max) = ∞ (EDM's 80).

    Reference: Karras et al. (2022), "Elucidating the Design Space", Eq. 5 and Table 1.
    """

    def __init__(self, rho: float = 7.0, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        super().__init__(sigma_min, sigma_max)
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        self.rho = rho

    def spacing(self, sigma_min: float, sigma_max: float, n: int) -> Tensor:
        return karras_sigmas(sigma_min, sigma_max, n, self.rho)


class LogSNRGrid(_SigmaGrid):
    """Uniform in the log-SNR λ (equivalently geometric in σ̃ = σ/α), mapped to t.

    Args: as :class:`EDMGrid` without ρ.

    Reference: Lu et al. (2022), "DPM-Solver", Sec. 3.3 and App. D.1 ("logSNR" steps).
    """

    def spacing(self, sigma_min: float, sigma_max: float, n: int) -> Tensor:
        return torch.logspace(
            math.log10(sigma_max), math.log10(sigma_min), n + 1, dtype=torch.float64
        )


class _DDPMSpacing(Grid):
    """Trained steps i/T of a ``DDPMPath(T)``: Lin et al.'s spacing of N = ``steps + 1``
    timesteps, with the one end a spacing misses moved onto t_max = T/T or t_min = 1/T, where
    the sampler draws the prior and takes its final denoising step.

    Lin et al. count timesteps τ = 0 … T − 1; τ is step i = τ + 1 here (t = i/T).

    Reference: Lin et al. (2024), "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", Sec. 3.3 and Table 2.
    """

    def steps_of(self, num_steps: int, n: int) -> Tensor:
        """Lin et al.'s ``n`` timesteps τ (float64, decreasing) for ``num_steps`` = T."""
        raise NotImplementedError

    def times(self, path: NoisePath, steps: int) -> Tensor:
        if not isinstance(path, DDPMPath):
            raise ValueError(
                f"{type(self).__name__} spaces the discrete steps of a DDPMPath, got "
                f"{type(path).__name__}: use UniformGrid, EDMGrid or LogSNRGrid"
            )
        if steps > path.num_steps - 1:
            raise ValueError(
                f"{steps} steps need {steps + 1} distinct trained steps; DDPMPath has "
                f"{path.num_steps}: use steps <= {path.num_steps - 1}"
            )
        return (self.steps_of(path.num_steps, steps + 1) + 1) / path.num_steps


class LeadingGrid(_DDPMSpacing):
    """τ = 0, k, 2k, … with stride k = ⌊T/N⌋ (Lin et al.'s "leading"); never reaches τ = T − 1,
    so its top point is moved there."""

    def steps_of(self, num_steps: int, n: int) -> Tensor:
        return torch.arange(n, dtype=torch.float64).flip(0) * (num_steps // n)


class TrailingGrid(_DDPMSpacing):
    """τ = round(T − k T/N) − 1, k = 0 … N − 1 (Lin et al.'s "trailing", their recommended
    spacing); ends at τ ≈ T/N − 1, so its last point is moved to τ = 0."""

    def steps_of(self, num_steps: int, n: int) -> Tensor:
        k = torch.arange(n, dtype=torch.float64)
        return torch.round(num_steps - k * num_steps / n) - 1


class LinspaceGrid(_DDPMSpacing):
    """τ = round(linspace(T − 1, 0, N)) (Lin et al.'s "linspace"); both ends included."""

    def steps_of(self, num_steps: int, n: int) -> Tensor:
        return torch.round(torch.linspace(num_steps - 1, 0, n, dtype=torch.float64))


GRIDS: dict[str, type[Grid]] = {
    "uniform": UniformGrid,
    "edm": EDMGrid,
    "logsnr": LogSNRGrid,
    "leading": LeadingGrid,
    "trailing": TrailingGrid,
    "linspace": LinspaceGrid,
}
"""Short names for ``--grid NAME``; YAML uses ``class_path`` instead."""


class CustomGrid(Grid):
    """Explicit times, e.g. a grid tuned to a model by ``diffusion-pl tune-grid``.

    Args:
        times: the N + 1 times of an N-step grid, strictly decreasing from the path's t_max to
            its t_min (both ends within 1e-9); N must be the sampler's ``steps``.
        teleport: the first time may lie below t_max: the sampler carries the prior draw from
            t_max to it by the Gaussian teleport (:mod:`diffusion_pl.teleport`, no network
            call), and the solver's N steps start there.
    """

    def __init__(self, times: list[float], teleport: bool = False) -> None:
        times = [float(t) for t in times]
        if len(times) < 2:
            raise ValueError(
                f"CustomGrid needs at least 2 times (t_max and t_min), got {times}; list the "
                "N + 1 times of an N-step grid"
            )
        for i, (t, after) in enumerate(itertools.pairwise(times)):
            if not (math.isfinite(t) and math.isfinite(after) and after < t):
                raise ValueError(
                    f"CustomGrid times must be finite and strictly decreasing: times[{i + 1}] = "
                    f"{after!r} follows times[{i}] = {t!r}; list them from t_max down to t_min"
                )
        self.points = times
        self.teleport = teleport

    @property
    def steps(self) -> int:
        """N, the number of steps the grid takes (``len(times) − 1``)."""
        return len(self.points) - 1

    @classmethod
    def from_file(cls, file: str | Path) -> CustomGrid:
        """The grid of a JSON file with a ``times`` list and an optional ``teleport`` flag
        (what ``tune-grid`` writes)."""
        try:
            record = json.loads(Path(file).read_text())
        except FileNotFoundError:
            raise ValueError(f"grid file {file} does not exist; write one with tune-grid") from None
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"grid file {file} is not readable JSON ({err})") from None
        if not isinstance(record, dict) or not isinstance(record.get("times"), list):
            raise ValueError(
                f"grid file {file} has no list 'times'; it needs {{\"times\": [t_max, …, t_min]}}"
                " as tune-grid writes"
            )
        teleport = record.get("teleport", False)
        if not isinstance(teleport, bool):
            raise ValueError(
                f"grid file {file}: 'teleport' must be true or false, got {teleport!r}"
            )
        return cls(record["times"], teleport)

    def times(self, path: NoisePath, steps: int) -> Tensor:
        if steps != self.steps:
            raise ValueError(
                f"CustomGrid has {self.steps} steps ({len(self.points)} times) but the sampler "
                f"takes {steps}: set the sampler's steps to {self.steps} (--steps {self.steps})"
            )
        if self.teleport and not path.t_min < self.points[0] <= path.t_max:
            raise ValueError(
                f"CustomGrid's first time {self.points[0]!r}, where the teleport ends, is not in "
                f"({path.t_min!r}, {path.t_max!r}], the times of {type(path).__name__}"
            )
        ends = [("last", self.points[-1], path.t_min)]
        if not self.teleport:
            ends.insert(0, ("first", self.points[0], path.t_max))
        for name, given, end in ends:
            if not math.isclose(given, end, rel_tol=1e-9, abs_tol=1e-9):
                raise ValueError(
                    f"CustomGrid's {name} time {given!r} is not {type(path).__name__}'s "
                    f"{'t_max' if name == 'first' else 't_min'} = {end!r}: a grid runs from "
                    "t_max to t_min of the model's path (tune it on this model), or from the end "
                    "of a teleport (teleport: true)"
                )
        return torch.tensor(self.points, dtype=torch.float64)

    def __repr__(self) -> str:
        shown = ", ".join(f"{t:.4g}" for t in self.points)
        return f"CustomGrid(times=[{shown}]{', teleport=True' if self.teleport else ''})"


def parse_grid(name: str) -> Grid:
    """The grid of ``--grid NAME``: a key of :data:`GRIDS`, or ``file:PATH`` for the
    :class:`CustomGrid` of a JSON file with ``times`` (``tune-grid``'s output)."""
    if name.startswith("file:"):
        return CustomGrid.from_file(name.removeprefix("file:"))
    if name not in GRIDS:
        raise ValueError(
            f"unknown grid {name!r}; choose one of {sorted(GRIDS)}, or file:PATH for a JSON "
            "file of times (tune-grid writes one)"
        )
    return GRIDS[name]()
