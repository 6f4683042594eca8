"""Probability-flow ODE samplers: dx/dt = α'_t x̂_0 + σ'_t ε̂ = f(t) x − ½ g(t)² ∇log p_t(x).

On the linear path this drift is the rectified-flow velocity ε̂ − x̂_0 (docs/math.md, section 4).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators
from diffusion_pl.samplers.base import DenoiserFn, Sampler, progress_bar
from diffusion_pl.samplers.grids import Grid

__all__ = ["EulerSampler", "HeunSampler", "ode_drift", "sample_euler", "sample_heun"]


def ode_drift(denoiser: DenoiserFn, path: NoisePath, x: Tensor, t: Tensor) -> Tensor:
    """PF-ODE drift at scalar time ``t``: α'_t x̂_0 + σ'_t ε̂ (docs/math.md, section 4)."""
    t_batch = t.to(x.dtype).expand(x.shape[0])
    return denoiser(x, t_batch).velocity(path.coefficients(t_batch, x.ndim))


@torch.no_grad()
def sample_euler(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """Euler steps x ← x + (t_{i+1} − t_i) · drift(x, t_i) over the decreasing grid ``ts``.

    Args:
        denoiser: ``(x, t) -> Prediction``.
        path: the noise path.
        x: samples at ``ts[0]``, ``[B, ...]``.
        ts: decreasing times ``[N + 1]``.
        generator: unused (deterministic); accepted for the shared sampler signature.
        progress: show a progress bar.

    Reference: Liu et al. (2023), "Flow Straight and Fast", Sec. 2 (Euler on the flow ODE).
    """
    steps = len(ts) - 1
    for i in progress_bar(range(steps), steps, progress, "euler"):
        x = x + (ts[i + 1] - ts[i]).to(x.dtype) * ode_drift(denoiser, path, x, ts[i])
    return x


@torch.no_grad()
def sample_heun(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """Heun's 2nd-order method on the PF-ODE; 2 evaluations per step, 1 on a step to σ = 0.

    Args: as :func:`sample_euler`.

    Reference: Karras et al. (2022), "Elucidating the Design Space", Algorithm 1.
    """
    steps = len(ts) - 1
    for i in progress_bar(range(steps), steps, progress, "heun"):
        dt = (ts[i + 1] - ts[i]).to(x.dtype)
        d = ode_drift(denoiser, path, x, ts[i])
        x_next = x + dt * d
        if float(path.sigma(ts[i + 1])) > 0:
            x_next = x + dt * 0.5 * (d + ode_drift(denoiser, path, x_next, ts[i + 1]))
        x = x_next
    return x


class EulerSampler(Sampler):
    """Euler PF-ODE sampler, by default on a uniform time grid (``steps`` network evaluations).

    Args:
        steps: number of Euler steps.
        grid: the time grid; None: :class:`~diffusion_pl.samplers.grids.UniformGrid`, the
            uniform t of Liu et al. (2023).
        denoise_final: return x̂_0 at ``path.t_min``.
    """

    solver = staticmethod(sample_euler)

    def __init__(
        self, steps: int = 100, grid: Grid | None = None, denoise_final: bool = True
    ) -> None:
        super().__init__(steps=steps, grid=grid, denoise_final=denoise_final)


class HeunSampler(Sampler):
    """Heun PF-ODE sampler, by default on a uniform time grid (about ``2 * steps`` evaluations).

    Args:
        steps: number of Heun steps (Karras et al.: 18 on CIFAR-10).
        grid: the time grid; None: :class:`~diffusion_pl.samplers.grids.UniformGrid` (today's
            default; ``EDMGrid`` is Karras et al.'s, as :class:`~diffusion_pl.samplers.EDMSampler`
            uses).
        denoise_final: return x̂_0 at ``path.t_min``.
    """

    solver = staticmethod(sample_heun)

    def __init__(
        self, steps: int = 100, grid: Grid | None = None, denoise_final: bool = True
    ) -> None:
        super().__init__(steps=steps, grid=grid, denoise_final=denoise_final)
