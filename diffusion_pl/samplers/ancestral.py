"""Ancestral samplers: DDPM and DDIM(η), written for any Gaussian path.

Both step t → s < t through the forward process's posterior q(x_s | x_t, x_0), with x_0 replaced
by the denoiser's x̂_0 (Kingma et al., 2021, VDM, Eq. 28–30). With α_{t|s} = α_t / α_s and
σ²_{t|s} = σ_t² − α_{t|s}² σ_s² (computed as σ_t² · r, r = −expm1(λ_t − λ_s), for accuracy):

    mean = (α_{t|s} σ_s² / σ_t²) x_t + (α_s σ²_{t|s} / σ_t²) x̂_0,   var = σ²_{t|s} σ_s² / σ_t²

They use only x̂_0 and ε̂, never the score or f(t), so they also run where α_{t_max} = 0
(rectified flow at t = 1) as long as the denoiser's pair stays finite there (a velocity or
x_0 network's does; an ε network's x̂_0 = (x − σ ε̂)/α does not).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from diffusion_pl.parameterization import Prediction
from diffusion_pl.paths import DDPMPath, NoisePath
from diffusion_pl.randomness import Generators, randn
from diffusion_pl.samplers.base import DenoiserFn, Sampler, denoise, progress_bar
from diffusion_pl.samplers.grids import (
    Grid,
    LeadingGrid,
    LinspaceGrid,
    TrailingGrid,
    UniformGrid,
)

__all__ = ["DDIMSampler", "DDPMSampler", "TrainedStepsGrid", "sample_ddim", "sample_ddpm"]


class TrainedStepsGrid(Grid):
    """On a ``DDPMPath``, a spacing of its trained steps i/T; on any other path, uniform in t.

    A discrete-time model knows only the times i/T it was trained at; a uniform grid of N
    steps hits them only when N divides T − 1, and otherwise evaluates the net at interpolated
    times it never saw. This grid keeps ancestral samplers on trained steps there, and on
    continuous paths (where every t was trained) is :class:`UniformGrid`.

    Args:
        spacing: the grid of a ``DDPMPath``'s steps: ``LeadingGrid``, ``TrailingGrid`` or
            ``LinspaceGrid``.
    """

    def __init__(self, spacing: Grid) -> None:
        if not isinstance(spacing, (LeadingGrid, TrailingGrid, LinspaceGrid)):
            raise ValueError(
                f"spacing must be LeadingGrid, TrailingGrid or LinspaceGrid, got {spacing!r}"
            )
        self.spacing = spacing

    def times(self, path: NoisePath, steps: int) -> Tensor:
        grid = self.spacing if isinstance(path, DDPMPath) else UniformGrid()
        return grid.times(path, steps)


def _predict(
    denoiser: DenoiserFn, path: NoisePath, x: Tensor, t: Tensor, clip_x0: float | None
) -> Prediction:
    """The denoiser's (x̂_0, ε̂) at scalar time t; with ``clip_x0``, x̂_0 is clamped to
    [−c, c] and ε̂ recomputed from it, (x − α_t x̂_0) / σ_t, so the pair still explains x."""
    pred = denoise(denoiser, x, t)
    if clip_x0 is None:
        return pred
    x0 = pred.x0.clamp(-clip_x0, clip_x0)
    eps = (x - path.alpha(t).to(x.dtype) * x0) / path.sigma(t).to(x.dtype)
    return Prediction(x0=x0, eps=eps)


def _check_variance(variance: str) -> None:
    """Refuse a DDPM variance other than "posterior" and "beta"."""
    if variance not in ("posterior", "beta"):
        raise ValueError(f"unknown variance {variance!r}; use 'posterior' or 'beta'")


def _check_eta(eta: float) -> None:
    """Refuse a DDIM η outside [0, 1]."""
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")


def _new_noise_fraction(path: NoisePath, t: Tensor, s: Tensor) -> Tensor:
    """r = σ²_{t|s} / σ_t² = 1 − exp(λ_t − λ_s), the share of x_t's noise added after s."""
    return -torch.expm1(path.log_snr(t) - path.log_snr(s))


@torch.no_grad()
def sample_ddpm(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    variance: Literal["posterior", "beta"] = "posterior",
    clip_x0: float | None = None,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """DDPM ancestral sampling: x_s ~ q(x_s | x_t, x̂_0) for each step t → s of ``ts``.

    The variance is the posterior's σ²_{t|s} σ_s² / σ_t² (Ho et al.'s β̃) or the forward step's
    σ²_{t|s} (β). No noise is added on a step to σ_s = 0 (Ho et al. set z = 0 at t = 1). On the
    DDPM path with the grid t_i = i/T, i = T … 1, plus the config's final denoising step at
    t_min = 1/T, this is Ho et al.'s Algorithm 2 exactly: α_{t|s}² = 1 − β_t, σ²_{t|s} = β_t and
    the mean (1/√α_t)(x_t − β_t/√(1 − ᾱ_t) ε̂).

    Shared arguments: as in :mod:`diffusion_pl.samplers.base`.

    Args:
        ts: decreasing times ``[N + 1]``; a coarser grid than the training one is allowed.
        variance: "posterior" (β̃, Ho et al.'s choice for data that are not N(0, I)) or "beta".
        clip_x0: clamp x̂_0 to [−c, c] before it enters the mean (images in [−1, 1]: c = 1).

    Reference: Ho et al. (2020), "Denoising Diffusion Probabilistic Models", Algorithm 2 and
    Eq. 7; Kingma et al. (2021), "Variational Diffusion Models", Eq. 28–30.
    """
    _check_variance(variance)
    steps = len(ts) - 1
    for i in progress_bar(range(steps), steps, progress, "ddpm"):
        t, s = ts[i], ts[i + 1]
        x0 = _predict(denoiser, path, x, t, clip_x0).x0
        a_t, a_s, sigma_t, sigma_s = path.alpha(t), path.alpha(s), path.sigma(t), path.sigma(s)
        r = _new_noise_fraction(path, t, s)
        coef_x = (a_t / a_s) * sigma_s**2 / sigma_t**2
        coef_x0 = a_s * r
        x_next = coef_x.to(x.dtype) * x + coef_x0.to(x.dtype) * x0
        if float(sigma_s) > 0:
            var = sigma_s**2 * r if variance == "posterior" else sigma_t**2 * r
            z = randn(x_next.shape, generator, device=x.device, dtype=x_next.dtype)
            x_next = x_next + torch.sqrt(var).to(x_next.dtype) * z
        x = x_next
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    eta: float = 0.0,
    clip_x0: float | None = None,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """DDIM: x_s = α_s x̂_0 + √(σ_s² − c²) ε̂ + c z, c = η · √(σ²_{t|s} σ_s² / σ_t²).

    Any path: σ_s replaces DDIM's √(1 − ᾱ_s), so x_s has the marginal std σ_s for every η.
    η = 0 is deterministic: x_s/σ_s − x_t/σ_t = x̂_0 (α_s/σ_s − α_t/σ_t), an exact Euler step
    of the PF-ODE in (x/σ, α/σ) (equivalently in (x/α, σ/α), DDIM Eq. 14); on the linear path it
    is the Euler step of rectified flow. η = 1 is DDPM with the posterior variance.

    Shared arguments: as in :mod:`diffusion_pl.samplers.base`.

    Args:
        eta: η ∈ [0, 1], the share of the posterior std injected as fresh noise.
        clip_x0: clamp x̂_0 to [−c, c] (ε̂ then recomputed from it).
        generator: source of all noise (unused when η = 0).

    Reference: Song, Meng & Ermon (2021), "Denoising Diffusion Implicit Models", Eq. 12 and 16.
    """
    _check_eta(eta)
    steps = len(ts) - 1
    for i in progress_bar(range(steps), steps, progress, f"ddim (eta={eta:g})"):
        t, s = ts[i], ts[i + 1]
        pred = _predict(denoiser, path, x, t, clip_x0)
        a_s, sigma_s = path.alpha(s), path.sigma(s)
        r = _new_noise_fraction(path, t, s)  # c² = η² σ_s² r
        x_next = a_s.to(x.dtype) * pred.x0
        x_next = x_next + (sigma_s * torch.sqrt(1 - eta**2 * r)).to(x.dtype) * pred.eps
        if eta > 0 and float(sigma_s) > 0:
            z = randn(x_next.shape, generator, device=x.device, dtype=x_next.dtype)
            x_next = x_next + (eta * sigma_s * torch.sqrt(r)).to(x_next.dtype) * z
        x = x_next
    return x


class DDPMSampler(Sampler, steps=1000):
    """DDPM ancestral sampling through the posterior q(x_s | x_t, x̂_0).

    The default grid is uniform in t on continuous paths and, on ``DDPMPath(T)``, Nichol &
    Dhariwal's respacing: ``steps + 1`` evenly spaced real numbers from T down to 1, each
    rounded to a trained step (Lin et al.'s "linspace"; ``TrainedStepsGrid(LinspaceGrid())``).
    ``steps`` = T − 1 is Ho et al.'s Algorithm 2 over every step (the final denoising step is
    its last, t = 1 → 0); fewer steps stay on trained steps (``steps`` must be at most T − 1
    there).

    Reference: Ho et al. (2020), Algorithm 2; Nichol & Dhariwal (2021), "Improved Denoising
    Diffusion Probabilistic Models", Sec. 4; Lin et al. (2024), Table 2.
    """

    name = "ddpm"
    solver = staticmethod(sample_ddpm)
    default_grid = TrainedStepsGrid(LinspaceGrid())
    randomness = "stochastic"

    def validate(self) -> None:
        _check_variance(self.variance)


class DDIMSampler(Sampler, steps=50):
    """DDIM(η): deterministic at η = 0, DDPM with the posterior variance at η = 1.

    The default grid is uniform in t on continuous paths and, on ``DDPMPath(T)``, DDIM's own
    sub-sequence of trained steps: the "linear" τ_i = ⌊c i⌋ of Song et al.'s App. D.2, which
    their code takes as every k-th step, k = ⌊T / S⌋ for S timesteps (Lin et al.'s "leading",
    ``TrainedStepsGrid(LeadingGrid())``; its top point is moved to T, where the prior is
    drawn). ``steps + 1`` timesteps here (the last is the final denoising step at t = 1/T), at
    most T of them; the paper takes 10–100.

    Reference: Song, Meng & Ermon (2021), "Denoising Diffusion Implicit Models", App. D.2;
    Lin et al. (2024), "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2.
    """

    name = "ddim"
    solver = staticmethod(sample_ddim)
    default_grid = TrainedStepsGrid(LeadingGrid())
    randomness = "stochastic if eta > 0"

    def validate(self) -> None:
        _check_eta(self.eta)

    def is_deterministic(self) -> bool:
        return self.eta == 0
