"""Mean-flow sampling: jumps z_r = z_t − (t − r) u(z_t, r, t) with a learned average velocity.

A MeanFlow model predicts the average velocity u(z_t, r, t) = (z_t − z_r) / (t − r) of the
probability-flow trajectory through z_t, so one network call crosses any interval exactly when
u is exact: one step from t = 1 to 0 is z_0 = z_1 − u(z_1, 0, 1). More steps over a grid
t_0 = 1 > t_1 > … > t_K = 0 chain the same jump.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from diffusion_pl.parameterization import Prediction
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators
from diffusion_pl.samplers.base import DenoiserFn, Sampler, progress_bar

__all__ = ["AverageVelocityFn", "MeanFlowSampler", "sample_meanflow"]


@runtime_checkable
class AverageVelocityFn(Protocol):
    """A denoiser that also predicts the average velocity u(x, r, t) over [r, t]."""

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        """The pair (x̂_0, ε̂) at time t (from u(x, t, t), the instantaneous velocity)."""
        ...

    def average_velocity(self, x: Tensor, r: Tensor | float, t: Tensor | float) -> Tensor:
        """u(x, r, t) ``[B, ...]`` for r ≤ t."""
        ...


@torch.no_grad()
def sample_meanflow(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """Mean-flow jumps x ← x − (t_i − t_{i+1}) u(x, t_{i+1}, t_i) over the decreasing grid ``ts``.

    Shared arguments: as in :mod:`diffusion_pl.samplers.base`.

    Args:
        denoiser: an :class:`AverageVelocityFn` (a MeanFlow model's denoiser).
        path: the noise path (unused: u is a displacement, whatever the path).
        ts: decreasing times ``[K + 1]``; K network calls.

    Reference: Geng et al. (2025), "Mean Flows for One-step Generative Modeling", Algorithm 2
    (1-step) and Sec. 4.1 (z_r = z_t − (t − r) u(z_t, r, t) for few steps).
    """
    if not isinstance(denoiser, AverageVelocityFn):
        raise ValueError(
            f"the meanflow sampler jumps with a learned average velocity u(z, r, t), which "
            f"{type(denoiser).__name__} does not give: it needs a MeanFlow model without "
            "guidance (classifier-free guidance at w not in {0, 1}, classifier guidance and "
            "autoguidance mix instantaneous velocities only); use an ODE sampler such as euler "
            "instead"
        )
    steps = len(ts) - 1
    for i in progress_bar(range(steps), steps, progress, "meanflow"):
        t, r = ts[i].to(x.dtype), ts[i + 1].to(x.dtype)
        x = x - (t - r) * denoiser.average_velocity(x, r, t)
    return x


class MeanFlowSampler(Sampler, steps=1):
    """Mean-flow jumps with a learned average velocity (MeanFlow models only).

    ``steps`` jumps on the evenly spaced t of the paper's few-step results (1 by default).

    Runs on MeanFlow models only (their denoiser gives u(z, r, t)); on any other model it fails
    before its first network call, naming the samplers that apply. ``denoise_final`` makes no
    call on the linear path, where σ(0) = 0.
    """

    name = "meanflow"
    solver = staticmethod(sample_meanflow)
