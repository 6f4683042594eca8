"""The weighted denoising regression: E_t w(t) ‖F(x_t, t) − target‖², and VDM's bound."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor

from diffusion_pl.bound import variational_bound
from diffusion_pl.objectives.base import Batch, Model, Objective, mean_flat
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators
from diffusion_pl.time_sampling import TimeSampling
from diffusion_pl.weighting import Weighting

__all__ = ["DenoisingRegression", "VariationalBoundLoss"]


class DenoisingRegression(Objective):
    """Per example w(t) · mean k² (F(α_t x_0 + σ_t ε, t) − target(x_0, ε))².

    t comes from ``time_sampling``, w(t) from ``weighting``, and k² turns the network's own
    error into the one the weighting is on (1 when they are the same). The network output is
    cast to float32 (float64 for float64 data) before it meets the math. Draws: label dropout,
    t, ε, in that order.

    Args:
        weighting: the loss weight w(t) and the error it weighs.
        time_sampling: the distribution of training times t.

    Reference: Ho et al. (2020), Eq. 14 (w = 1 on ε); Kingma et al. (2021), Eq. 17; Karras et
    al. (2022), Eq. 8 (λ(σ) ‖D − x_0‖²); the weightings' own references.
    """

    def __init__(self, weighting: Weighting, time_sampling: TimeSampling) -> None:
        self.weighting, self.time_sampling = weighting, time_sampling

    def times(
        self,
        path: NoisePath,
        n: int,
        generator: Generators,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tensor:
        """``n`` training times on ``path`` from ``time_sampling``."""
        return self.time_sampling(n, path, generator=generator, device=device, dtype=dtype)

    def loss(self, model: Model, batch: Batch) -> Tensor:
        path, param, x0 = model.path, model.parameterization, batch.x0
        d = self.draw(batch, partial(self.times, path))
        c = path.coefficients(d.times, x0.ndim)
        x_t = c.alpha * x0 + c.sigma * d.eps
        net_in = x_t * param.input_scale(c)
        out = model.net(net_in, param.noise_label(d.times, c), batch.labels).to(d.dtype)
        target = param.target(x0, d.eps, c)
        scale = self.weighting.error_scale(param, c)
        return self.weighting(path, d.times) * mean_flat(scale * (out - target) ** 2)


class VariationalBoundLoss(Objective):
    """The whole variational bound per example, in bits per dimension.

    Prior + diffusion + reconstruction of :func:`~diffusion_pl.bound.variational_bound`, with
    the bound's own times and noises; the only objective that is a bound, so the one that
    trains a learned schedule. Draws: label dropout, then the bound's t and noises.

    Args:
        num_levels: quantization levels of the data (discretized decoder), None if continuous.
        low_discrepancy: spread the batch's times evenly (VDM, App. I.1).

    Reference: Kingma et al. (2021), "Variational Diffusion Models", Eq. 11–17.
    """

    def __init__(self, num_levels: int | None, low_discrepancy: bool = True) -> None:
        self.num_levels, self.low_discrepancy = num_levels, low_discrepancy

    def loss(self, model: Model, batch: Batch) -> Tensor:
        return self.bits_per_dim(model, batch.x0, batch.labels, batch.generator, batch.eps)

    def bits_per_dim(
        self,
        model: Model,
        x0: Tensor,
        labels: Tensor | None,
        generator: Generators,
        eps: Tensor | None = None,
    ) -> Tensor:
        """The bound ``[B]`` in bits per dimension, labels as given (no dropout)."""
        bound = variational_bound(
            model.denoiser(model.class_labels(labels)),
            model.path,
            x0,
            num_levels=self.num_levels,
            low_discrepancy=self.low_discrepancy,
            generator=generator,
            eps=eps,
        )
        return bound.bits_per_dim(math.prod(x0.shape[1:]))
