"""The ``Denoiser``: the one view of a trained net every sampler consumes.

``denoiser(x, t) -> Prediction(x̂_0, ε̂)`` wraps a network, its noise path and its reading
(:mod:`diffusion_pl.parameterization`); ``AverageVelocityDenoiser`` adds MeanFlow's average
velocity u(x, r, t).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from diffusion_pl.nets.protocol import DenoiserNet
from diffusion_pl.parameterization import (
    AverageVelocityPrediction,
    Parameterization,
    Prediction,
)
from diffusion_pl.paths import NoisePath, PathCoefficients
from diffusion_pl.tensors import as_batch

__all__ = ["AverageVelocityDenoiser", "Denoiser", "batch_times"]


def batch_times(t: Tensor | float, x: Tensor) -> Tensor:
    """Times ``[B]`` on x's device for a batch x; a Python float takes x's dtype (≥ float32).

    A tensor keeps its dtype (float64 grids stay float64), so a float64 model never sees a
    time rounded to float32.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    return as_batch(t if isinstance(t, Tensor) else torch.tensor(t, dtype=dtype), x.shape[0], x)


class Denoiser:
    """The callable every sampler consumes: ``denoiser(x, t) -> Prediction``.

    Wraps a network, the path and the parameterization. The network sees x scaled by the
    parameterization's ``input_scale(c)`` and its ``noise_label(t, c)``, and its output is
    cast to float32 before it meets the path math (float64 inputs stay float64, and so do
    times given as Python floats). Counts network evaluations (``nfe``).

    Args:
        net: ``net(x, noise_labels [B], class_labels [B] | None) -> Tensor`` shaped as x.
        path: the noise path the net was trained on.
        parameterization: how to read the net's output.
        class_labels: optional labels ``[B]`` passed to every call.
    """

    reads: ClassVar[type[Parameterization] | None] = None
    """The parameterization a subclass needs (None: any)."""

    def __init__(
        self,
        net: DenoiserNet,
        path: NoisePath,
        parameterization: Parameterization,
        class_labels: Tensor | None = None,
    ) -> None:
        if self.reads is not None and not isinstance(parameterization, self.reads):
            raise ValueError(
                f"a {type(self).__name__} reads what a {self.reads.__name__} predicts: its "
                f"parameterization must be {self.reads.__name__}, got "
                f"{type(parameterization).__name__}"
            )
        self.net, self.path, self.parameterization = net, path, parameterization
        self.class_labels = class_labels
        self.nfe = 0

    def noise_labels(self, t: Tensor, c: PathCoefficients) -> Tensor:
        """What the net sees of the noise level at times t ``[B]``: the parameterization's label
        (a subclass may add labels of its own, as LCM's guidance scale ω)."""
        return self.parameterization.noise_label(t, c)

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        dtype = torch.promote_types(x.dtype, torch.float32)
        t = batch_times(t, x)
        c = self.path.coefficients(t.to(dtype), x.ndim)
        labels = self.noise_labels(t, c)
        net_in = (x * self.parameterization.input_scale(c)).to(x.dtype)
        out = self.net(net_in, labels.to(x.dtype), self.class_labels).to(dtype)
        self.nfe += 1
        return self.parameterization.predict(out, x.to(dtype), c)


class AverageVelocityDenoiser(Denoiser):
    """A :class:`Denoiser` of a MeanFlow net that also gives the average velocity u(x, r, t).

    ``denoiser(x, t)`` reads u(x, t, t) = v(x, t) as a velocity (every sampler can use it);
    :meth:`average_velocity` is what the mean-flow sampler jumps with,
    z_r = z_t − (t − r) u(z_t, r, t).

    Args:
        net: a net with ``num_noise_labels = 2`` that predicts u from (t, t − r).
        path: the path the net was trained on (the linear path).
        parameterization: an :class:`AverageVelocityPrediction`.
        class_labels: optional labels ``[B]`` passed to every call.

    Reference: Geng et al. (2025), "Mean Flows for One-step Generative Modeling", Sec. 4.1 and
    Algorithm 2 (sampling).
    """

    reads = AverageVelocityPrediction

    def average_velocity(self, x: Tensor, r: Tensor | float, t: Tensor | float) -> Tensor:
        """u(x, r, t) ``[B, ...]`` for times r ≤ t (scalars or ``[B]``), in ≥ float32."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        labels = AverageVelocityPrediction.interval_labels(batch_times(r, x), batch_times(t, x))
        out = self.net(x, labels.to(x.dtype), self.class_labels).to(dtype)
        self.nfe += 1
        return out
