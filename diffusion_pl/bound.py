"""The variational bound of VDM and DDPM: −log p(x_0) ≤ prior + diffusion + reconstruction.

The bound (Kingma et al., 2021, Eq. 11–17) takes z_0 at ``path.t_min`` and z_1 at
``path.t_max``. On a continuous path its diffusion loss is ½ ∫ γ'(t) ‖ε − ε̂‖² dt; on a discrete
path (``path.num_steps`` = N + 1 times) it has N steps and is (N/2) E_i[(SNR(s_i) − SNR(t_i))
‖x_0 − x̂_0‖²], which is the same as (N/2) E_i[expm1(λ_s − λ_t) ‖ε − ε̂‖²] (λ = log-SNR).
:mod:`diffusion_pl.likelihood` computes the other number, the exact likelihood of the PF-ODE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_pl.learned_schedule import d_gamma
from diffusion_pl.parameterization import DenoiserFn
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators, randn
from diffusion_pl.time_sampling import DiscreteUniform, Uniform

__all__ = [
    "VariationalBound",
    "bound_steps",
    "bound_times",
    "diffusion_loss",
    "diffusion_loss_sum",
    "discretized_gaussian_log_prob",
    "elbo_weight",
    "prior_kl",
    "reconstruction_nll",
    "variational_bound",
]


def bound_steps(path: NoisePath) -> int | None:
    """N, the number of steps of the bound: a discrete path's grid minus one, None if continuous.

    On ``DDPMPath(T)`` N = T − 1 steps run from z_0 at t = 1/T to z_1 at t = 1.
    """
    return None if path.num_steps is None else path.num_steps - 1


def bound_times(
    path: NoisePath,
    n: int,
    *,
    low_discrepancy: bool = True,
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The bound's times ``[n]``: U(t_min, t_max), or steps 1 … N of a discrete path's grid."""
    draw = (
        Uniform(low_discrepancy=low_discrepancy)
        if path.num_steps is None
        else DiscreteUniform(first=1, low_discrepancy=low_discrepancy)
    )
    return draw(n, path, generator=generator, device=device, dtype=dtype)


def elbo_weight(path: NoisePath, t: Tensor, steps: int | None) -> Tensor:
    """The bound's weight on ‖ε − ε̂‖² (summed over dimensions) at t ``[B]``, in nats.

    Continuous time: ½ (t_max − t_min) γ'(t), the integral ½ ∫ γ'(t) ‖ε − ε̂‖² dt read as an
    expectation over t ~ U(t_min, t_max) (Kingma et al., 2021, Eq. 17). ``steps`` = N:
    (N/2) (SNR(s)/SNR(t) − 1) with s = t − (t_max − t_min)/N (Eq. 13 in ε form).
    """
    span = path.t_max - path.t_min
    if steps is None:
        return 0.5 * span * d_gamma(path, t)
    s = t - span / steps
    return 0.5 * steps * torch.expm1(path.log_snr(s) - path.log_snr(t))


def prior_kl(path: NoisePath, x0: Tensor) -> Tensor:
    """KL(q(z_1 | x_0) ‖ N(0, σ_1² I)) in nats ``[B]``, z_1 at ``path.t_max``: ½ SNR(1) ‖x_0‖².

    The prior is the one samplers draw from (``NoisePath.prior_sample``); on VP paths
    σ_1² = 1 − α_1², and the KL to N(0, I) differs from this by O(α_1⁴) per dimension.
    """
    t1 = torch.full((x0.shape[0],), path.t_max, dtype=x0.dtype, device=x0.device)
    return 0.5 * path.log_snr(t1).exp() * x0.flatten(1).pow(2).sum(1)


def _log_normal_interval(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) − Φ(a)) for a < b, stable in both tails (a may be −∞, b may be +∞)."""
    flip = a > 0  # use Φ(b) − Φ(a) = Φ(−a) − Φ(−b) so both CDFs are small, not near 1
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    u = log_lo - log_hi  # <= 0
    log1mexp = torch.where(u > -math.log(2), torch.log(-torch.expm1(u)), torch.log1p(-u.exp()))
    return log_hi + log1mexp


def discretized_gaussian_log_prob(
    x: Tensor, mean: Tensor, scale: Tensor, num_levels: int
) -> Tensor:
    """Elementwise log P(x) of N(mean, scale²) discretized to ``num_levels`` levels on [−1, 1].

    Level k sits at x_k = 2k/(L − 1) − 1 and owns the bin x_k ± 1/(L − 1); the end bins reach
    to ∓∞, so the probabilities of the L levels sum to 1. Computed in float64.

    Reference: Ho et al. (2020), "Denoising Diffusion Probabilistic Models", Eq. 13.
    """
    x, mean, scale = x.double(), mean.double(), scale.double()
    half = 1.0 / (num_levels - 1)
    a = torch.where(x < -1 + half, -math.inf, (x - half - mean) / scale)
    b = torch.where(x > 1 - half, math.inf, (x + half - mean) / scale)
    return _log_normal_interval(a, b)


def reconstruction_nll(
    denoiser: DenoiserFn,
    path: NoisePath,
    x0: Tensor,
    eps: Tensor,
    num_levels: int | None,
) -> Tensor:
    """−log p(x_0 | z_0) in nats ``[B]``, z_0 = α_0 x_0 + σ_0 ε at ``path.t_min``.

    The decoder is N(x̂_0(z_0), (σ_0/α_0)²) per dimension, discretized to ``num_levels`` levels
    (a probability, Ho et al.'s L_0), or, for continuous data (``num_levels`` None), its
    density. VDM's decoder uses z_0/α_0 as the mean; x̂_0(z_0) is the same at high SNR and
    much better at DDPM's σ_0 = √β_1 = 0.01, which is wider than an 8-bit bin.
    """
    t0 = torch.full((x0.shape[0],), path.t_min, dtype=x0.dtype, device=x0.device)
    c = path.coefficients(t0, x0.ndim)
    mean = denoiser(c.alpha * x0 + c.sigma * eps, t0).x0
    scale = c.sigma / c.alpha
    if num_levels is None:
        z = (x0 - mean) / scale
        nll = 0.5 * z**2 + torch.log(scale) + 0.5 * math.log(2 * math.pi)
    else:
        nll = -discretized_gaussian_log_prob(x0, mean, scale, num_levels)
    return nll.flatten(1).sum(1).to(x0.dtype)


def diffusion_loss(
    denoiser: DenoiserFn,
    path: NoisePath,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    steps: int | None,
) -> Tensor:
    """One-sample estimate of the bound's diffusion loss in nats ``[B]``: w(t) ‖ε − ε̂(z_t)‖².

    For discrete ``steps``, ``t`` must be a grid time after the first (:func:`bound_times`).
    """
    z_t = path.marginal(x0, t, eps)
    eps_hat = denoiser(z_t, t).eps
    return elbo_weight(path, t, steps) * (eps_hat - eps).flatten(1).pow(2).sum(1)


def diffusion_loss_sum(
    denoiser: DenoiserFn,
    path: NoisePath,
    x0: Tensor,
    *,
    generator: torch.Generator | None = None,
    max_batch: int = 512,
) -> Tensor:
    """A discrete path's diffusion loss summed over all its N steps, nats ``[B]``.

    Σ_{i=1}^{N} ½ (SNR(t_{i−1})/SNR(t_i) − 1) ‖ε_i − ε̂(z_{t_i})‖², one ε_i per step and example:
    the terms L_{i−1} of Ho et al. (2020, Eq. 5) summed as they compute them, i.e. Kingma et al.
    (2021, Eq. 13) without the draw of i, so its only randomness is ε. Costs N network calls
    per example, batched over steps (``max_batch`` examples per call).

    Raises:
        ValueError: the path is continuous (its diffusion loss is an integral: estimate it
            with :func:`diffusion_loss`).
    """
    steps = bound_steps(path)
    if steps is None:
        raise ValueError(
            f"{type(path).__name__} is continuous: its diffusion loss is an integral over t, "
            "not a sum over steps; use the one-sample estimate (all_steps=False)"
        )
    b = x0.shape[0]
    per_call = max(1, max_batch // b)
    total = torch.zeros(b, dtype=x0.dtype, device=x0.device)
    for first in range(1, steps + 1, per_call):
        i = torch.arange(first, min(first + per_call, steps + 1), device=x0.device)
        t = (path.t_min + (path.t_max - path.t_min) * i / steps).to(x0.dtype)
        x = x0.repeat(len(i), *([1] * (x0.ndim - 1)))
        eps = randn(x.shape, generator, device=x0.device, dtype=x0.dtype)
        terms = diffusion_loss(denoiser, path, x, t.repeat_interleave(b), eps, steps) / steps
        total += terms.view(len(i), b).sum(0)
    return total


@dataclass(frozen=True)
class VariationalBound:
    """The three terms of −log p(x_0) ≤ prior + diffusion + reconstruction, nats ``[B]``."""

    prior: Tensor
    diffusion: Tensor
    reconstruction: Tensor

    @property
    def nats(self) -> Tensor:
        """The whole bound in nats ``[B]``."""
        return self.prior + self.diffusion + self.reconstruction

    def bits_per_dim(self, dim: int) -> Tensor:
        """The bound in bits per dimension ``[B]``: nats / (D ln 2).

        With a discretized decoder this bounds the discrete NLL of the L-level data: its bits
        are those of the levels themselves (at most log₂ L), so the rescaling of levels to
        [−1, 1] needs no correction. With the continuous decoder it bounds −log p(x) of the
        density in the data's own coordinates (it may be negative).
        """
        return self.nats / (dim * math.log(2.0))


def variational_bound(
    denoiser: DenoiserFn,
    path: NoisePath,
    x0: Tensor,
    *,
    num_levels: int | None,
    low_discrepancy: bool = True,
    generator: Generators = None,
    eps: Tensor | None = None,
    all_steps: bool = False,
) -> VariationalBound:
    """Unbiased one-sample estimate of VDM's bound for each example of ``x0`` ``[B, ...]``.

    One t (:func:`bound_times`) and two independent noises per example (one for z_t, one for
    z_0), all drawn from ``generator``; the prior term is exact. Discrete on a discrete path
    (:func:`bound_steps`), continuous otherwise. With ``all_steps`` (discrete paths) the
    diffusion loss is summed over every step (:func:`diffusion_loss_sum`) instead of read at
    one drawn step: no variance over t, at N network calls per example.

    Args:
        denoiser: ``(x, t) -> Prediction``.
        path: the noise path.
        x0: data ``[B, ...]``.
        num_levels: quantization levels of the data (discretized decoder), None if continuous.
        low_discrepancy: spread the batch's times evenly (VDM, App. I.1).
        generator: source of t and both noises, drawn in that order.
        eps: the noise of z_t ``[B, ...]`` (coupled to ``x0``); drawn when None.
        all_steps: sum over all the steps of a discrete path (``generator``: one
            ``torch.Generator`` or None).

    Reference: Kingma et al. (2021), "Variational Diffusion Models", Eq. 11–17.
    """
    if all_steps:
        diffusion = diffusion_loss_sum(denoiser, path, x0, generator=generator)
    else:
        t = bound_times(
            path,
            x0.shape[0],
            low_discrepancy=low_discrepancy,
            generator=generator,
            device=x0.device,
            dtype=x0.dtype,
        )
        if eps is None:
            eps = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
        diffusion = diffusion_loss(denoiser, path, x0, t, eps, bound_steps(path))
    eps0 = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
    return VariationalBound(
        prior=prior_kl(path, x0),
        diffusion=diffusion,
        reconstruction=reconstruction_nll(denoiser, path, x0, eps0, num_levels),
    )
