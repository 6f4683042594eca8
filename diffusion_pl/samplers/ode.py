"""Probability-flow ODE samplers: dx/dt = α'_t x̂_0 + σ'_t ε̂ = f(t) x − ½ g(t)² ∇log p_t(x).

On the linear path this drift is the rectified-flow velocity ε̂ − x̂_0 (docs/math.md, section 4).
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators
from diffusion_pl.samplers.base import DenoiserFn, Sampler, batch_times, progress_bar

__all__ = ["EulerSampler", "HeunSampler", "ode_drift", "sample_euler", "sample_heun"]


def ode_drift(denoiser: DenoiserFn, path: NoisePath, x: Tensor, t: Tensor) -> Tensor:
    """PF-ODE drift at scalar time ``t``: α'_t x̂_0 + σ'_t ε̂ (docs/math.md, section 4)."""
    t_batch = batch_times(x, t)
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

    Shared arguments: as in :mod:`diffusion_pl.samplers.base`.

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

    Shared arguments: as in :mod:`diffusion_pl.samplers.base`.

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


class EulerSampler(Sampler, steps=100):
    """Euler steps on the probability-flow ODE.

    By default on the uniform t grid of Liu et al. (2023).
    """

    name = "euler"
    solver = staticmethod(sample_euler)


class HeunSampler(Sampler, steps=100):
    """Heun's 2nd-order method on the probability-flow ODE.

    By default on a uniform t grid (Karras et al.'s is ``EDMGrid``, as
    :class:`~diffusion_pl.samplers.EDMSampler` uses; they take 18 steps on CIFAR-10).
    """

    name = "heun"
    solver = staticmethod(sample_heun)
    nfe_per_step = "2 (1 on a step to σ = 0)"
