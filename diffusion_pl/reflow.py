"""Reflow: couple noise and samples through a trained flow; measure how straight a flow is."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffusion_pl.parameterization import Prediction
from diffusion_pl.paths import NoisePath
from diffusion_pl.samplers import DenoiserFn, sample_euler, uniform_time_grid

__all__ = ["flow_pairs", "straightness"]


def straightness(noise: Tensor, data: Tensor, velocities: Sequence[Tensor], span: float) -> float:
    """S = ∫ E‖(x_1 − x_0) − v(x_t, t)‖² dt on a uniform grid, as a mean over dimensions.

    Time runs from noise to data (t_max → t_min), so the straight line's dx/dt is
    (x_noise − x_data) / span; the integral over the grid is the mean over its steps of the
    velocities there. 0 for a perfectly straight flow, whose one-step Euler sample is exact.

    Args:
        noise: the starting points ``[N, ...]`` at t_max.
        data: the end points ``[N, ...]`` at t_min.
        velocities: dx/dt at each grid time, ``[N, ...]`` each.
        span: t_max − t_min.

    Reference: Liu, Gong & Liu (2023), "Flow Straight and Fast", Eq. 6 (straightness).
    """
    line = (noise - data) / span
    return float(torch.stack([(v - line).pow(2).flatten(1).mean(1) for v in velocities]).mean())


@torch.no_grad()
def flow_pairs(
    denoiser: DenoiserFn, path: NoisePath, noise: Tensor, steps: int, progress: bool = False
) -> tuple[Tensor, float]:
    """Integrate the flow ODE from ``noise`` with Euler; return samples and their straightness.

    Args:
        denoiser: ``(x, t) -> Prediction`` of the trained flow.
        path: its noise path.
        noise: starting points at ``path.t_max``, ``[N, ...]``.
        steps: Euler steps (:func:`sample_euler`).
        progress: show a progress bar.

    Returns:
        The samples ``[N, ...]`` at ``path.t_min`` and the :func:`straightness` of the
        Euler trajectory.
    """
    velocities = []

    def recorded(x: Tensor, t: Tensor) -> Prediction:
        """The denoiser, keeping the velocity α'_t x̂_0 + σ'_t ε̂ Euler steps along."""
        pred = denoiser(x, t)
        velocities.append(pred.velocity(path.coefficients(t, x.ndim)))
        return pred

    ts = uniform_time_grid(path, steps, noise.device)
    x = sample_euler(recorded, path, noise, ts, progress=progress)
    return x, straightness(noise, x, velocities, float(ts[0] - ts[-1]))
