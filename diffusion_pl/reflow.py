"""Reflow: couple noise and samples through a trained flow; measure how straight a flow is."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_pl.paths import NoisePath
from diffusion_pl.samplers import DenoiserFn, uniform_time_grid
from diffusion_pl.samplers.base import progress_bar
from diffusion_pl.samplers.ode import ode_drift

__all__ = ["flow_pairs"]


@torch.no_grad()
def flow_pairs(
    denoiser: DenoiserFn, path: NoisePath, noise: Tensor, steps: int, progress: bool = False
) -> tuple[Tensor, float]:
    """Integrate the flow ODE from ``noise`` with Euler; return samples and straightness.

    Straightness S = ∫ E‖(Z_1 − Z_0) − Ż_t‖² dt along the Euler trajectory, as a mean over
    dimensions (0 for a perfectly straight flow, whose one-step Euler sample is exact).

    Args:
        denoiser: ``(x, t) -> Prediction`` of the trained flow.
        path: its noise path.
        noise: starting points at ``path.t_max``, ``[N, ...]``.
        steps: Euler steps.
        progress: show a progress bar.

    Reference: Liu, Gong & Liu (2023), "Flow Straight and Fast", Eq. 6 (straightness).
    """
    ts = uniform_time_grid(path, steps, noise.device)
    x, drifts = noise, []
    for i in progress_bar(range(steps), steps, progress, "reflow pairs"):
        drift = ode_drift(denoiser, path, x, ts[i])
        drifts.append(drift)
        x = x + (ts[i + 1] - ts[i]).to(x.dtype) * drift
    # Time runs 1 → 0, so the straight-line velocity dx/dt is (z − x_0) / (t_max − t_min).
    line = (noise - x) / float(ts[0] - ts[-1])
    straightness = torch.stack([(d - line).pow(2).flatten(1).mean(1) for d in drifts]).mean()
    return x, float(straightness)
