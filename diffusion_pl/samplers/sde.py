"""Reverse-SDE samplers: Euler–Maruyama and predictor–corrector (Song et al., 2021).

The reverse SDE of any path (docs/math.md, section 4), integrated from t = t_max down to t_min:

    dx = [f(t) x − g(t)² ∇log p_t(x)] dt + g(t) dw̄,    f = d log α_t / dt,  g² = dσ²/dt − 2 f σ²

Its drift needs a finite f at t_max, i.e. α_{t_max} > 0: true for VP, sub-VP, VE and DDPM, false
for the linear (rectified-flow) path at t = 1, where the configs' ``check`` refuses to run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators, randn
from diffusion_pl.samplers.base import DenoiserFn, Sampler, progress_bar
from diffusion_pl.samplers.langevin import langevin_corrector, score_at

__all__ = [
    "EulerMaruyamaSampler",
    "PCSampler",
    "StepFn",
    "euler_maruyama_step",
    "reverse_diffusion_step",
    "sample_euler_maruyama",
    "sample_pc",
]

StepFn = Callable[[NoisePath, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""A predictor ``step(path, x, score, t, s) -> (mean, std)`` of one step t → s < t."""


def euler_maruyama_step(
    path: NoisePath, x: Tensor, score: Tensor, t: Tensor, s: Tensor
) -> tuple[Tensor, Tensor]:
    """Mean and std of one Euler–Maruyama step t → s < t of the reverse SDE (Δ = t − s)."""
    dt = t - s
    f, g2 = path.f(t), path.g2(t)
    mean = x + ((g2 * dt).to(x.dtype) * score - (f * dt).to(x.dtype) * x)
    return mean, torch.sqrt(g2 * dt).to(x.dtype)


def reverse_diffusion_step(
    path: NoisePath, x: Tensor, score: Tensor, t: Tensor, s: Tensor
) -> tuple[Tensor, Tensor]:
    """Mean and std of the reverse-diffusion predictor for t → s < t (Song et al., Eq. 46).

    The forward step s → t of the path is exact: x_t = α_{t|s} x_s + G z with α_{t|s} = α_t/α_s
    and G² = σ_t² − α_{t|s}² σ_s², i.e. f_i(x) = (α_{t|s} − 1) x in Eq. 45. Reversing it as
    Eq. 46 gives x_s = (2 − α_{t|s}) x_t + G² s(x_t, t) + G z. On VE (α = 1) this is Eq. 47's
    x + (σ_t² − σ_s²) s + √(σ_t² − σ_s²) z; on DDPM's grid α_{t|s} = √(1 − β_i), G² = β_i, the
    paper's VP predictor (2 − √(1 − β_i)) x + β_i s + √β_i z.
    """
    a_ts = path.alpha(t) / path.alpha(s)
    g2 = path.sigma(t) ** 2 - a_ts**2 * path.sigma(s) ** 2
    mean = (2 - a_ts).to(x.dtype) * x + g2.to(x.dtype) * score
    return mean, torch.sqrt(g2.clamp_min(0)).to(x.dtype)


def _check_pc(predictor: StepFn, corrector_steps: int, snr: float) -> None:
    """Refuse a predictor that is not a function (a name, say), naming the two there are, and
    a negative ``corrector_steps`` or a ``snr`` <= 0."""
    if not callable(predictor):
        raise ValueError(
            f"predictor must be a step function (path, x, score, t, s) -> (mean, std), got "
            f"{predictor!r}; use diffusion_pl.samplers.sde.reverse_diffusion_step or "
            "diffusion_pl.samplers.sde.euler_maruyama_step"
        )
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr}")


def _reverse_sde(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    predictor: StepFn,
    corrector_steps: int,
    snr: float,
    generator: Generators,
    progress: bool,
    desc: str,
) -> Tensor:
    """Shared loop: corrector at t (if any), predictor t → s, noise on all but the last step."""
    steps = len(ts) - 1
    for i in progress_bar(range(steps), steps, progress, desc):
        t, s = ts[i], ts[i + 1]
        if corrector_steps > 0:
            alpha = float((path.alpha(t) / path.alpha(s)) ** 2)
            score_fn = score_at(denoiser, path, t)
            x = langevin_corrector(
                score_fn, x, snr, corrector_steps, alpha=alpha, generator=generator
            )
        mean, std = predictor(path, x, score_at(denoiser, path, t)(x), t, s)
        if i < steps - 1:
            mean = mean + std * randn(mean.shape, generator, device=mean.device, dtype=mean.dtype)
        x = mean
    return x


@torch.no_grad()
def sample_euler_maruyama(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """Euler–Maruyama on the reverse SDE over the decreasing grid ``ts``.

    Each step t → s, Δ = t − s: x ← x + [g²(t) s(x, t) − f(t) x] Δ + g(t) √Δ z, with the score
    s = −ε̂ / σ_t. The last step adds no noise (it returns its mean), as the reference code's
    ``noise_removal``; one network evaluation per step.

    Shared arguments: as in :mod:`diffusion_pl.samplers.base`.

    Args:
        path: the noise path; needs finite f and g² on ``ts[:-1]``.

    Reference: Song et al. (2021), "Score-Based Generative Modeling through SDEs", Eq. 6 and
    App. D (Euler–Maruyama predictor).
    """
    return _reverse_sde(
        denoiser,
        path,
        x,
        ts,
        predictor=euler_maruyama_step,
        corrector_steps=0,
        snr=0.0,
        generator=generator,
        progress=progress,
        desc="euler-maruyama",
    )


@torch.no_grad()
def sample_pc(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    predictor: StepFn = reverse_diffusion_step,
    corrector_steps: int = 1,
    snr: float = 0.16,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """Predictor–corrector sampling: Langevin corrector at t, then a predictor step t → s.

    At each grid time t = ts[i]: ``corrector_steps`` Langevin steps with the score at t and
    signal-to-noise ratio ``snr`` (Algorithms 4/5, α_i = (α_t / α_s)², which is 1 on VE and
    1 − β_i on DDPM's grid, as Algorithm 5), then one predictor step to s = ts[i + 1]. As the
    reference code, the corrector runs before each predictor step, so the chain ends on a
    predictor step, whose noise is dropped (the sample is its mean). Algorithm 2 of the paper
    corrects after each predictor step instead; the two differ only in whether t_max or t_min
    is corrected, and correcting the prior sample at t_max repairs its mismatch with p_{t_max}.
    1 + ``corrector_steps`` network evaluations per step.

    Shared arguments: as in :mod:`diffusion_pl.samplers.base`.

    Args:
        path: the noise path; needs α > 0 on ``ts``.
        predictor: the predictor step: :func:`reverse_diffusion_step` (Eq. 46, the path's
            exact forward step reversed) or :func:`euler_maruyama_step`.
        corrector_steps: Langevin corrector steps M per time (0: predictor only).
        snr: corrector signal-to-noise ratio r (paper: 0.16 on VE, 0.01 on VP).

    Reference: Song et al. (2021), "Score-Based Generative Modeling through SDEs",
    Algorithms 1–5 and Eq. 46–47.
    """
    _check_pc(predictor, corrector_steps, snr)
    return _reverse_sde(
        denoiser,
        path,
        x,
        ts,
        predictor=predictor,
        corrector_steps=corrector_steps,
        snr=snr,
        generator=generator,
        progress=progress,
        desc="pc",
    )


@torch.no_grad()
def _check_reverse_sde(sampler: Sampler, path: NoisePath) -> None:
    """Refuse paths whose reverse-SDE coefficients are not finite at t_max (α_{t_max} = 0)."""
    t_max = path.as_time(path.t_max)
    if not (torch.isfinite(path.f(t_max)) and torch.isfinite(path.g2(t_max))):
        raise ValueError(
            f"{type(sampler).__name__} integrates the reverse SDE, whose drift "
            f"f(t) = d log α_t / dt is infinite at t_max = {path.t_max} on "
            f"{type(path).__name__} (α = {float(path.alpha(t_max)):g} there). For rectified flow "
            "use an ODE sampler (euler, heun, rk45) or DDIM/DDPM, which need only x̂_0 and ε̂; "
            "or use a path with α_{t_max} > 0."
        )


class EulerMaruyamaSampler(Sampler, steps=1000):
    """Euler–Maruyama on the reverse SDE.

    By default on the paper's N equal steps in t (N = 1000).
    """

    name = "euler_maruyama"
    solver = staticmethod(sample_euler_maruyama)
    randomness = "stochastic"

    def check(self, path: NoisePath) -> None:
        _check_reverse_sde(self, path)


class PCSampler(Sampler, steps=1000):
    """Predictor–corrector on the reverse SDE: Langevin corrector, then a predictor step.

    By default on the paper's N equal steps in t (N = 1000). In YAML the predictor is an
    import path, e.g. ``predictor: diffusion_pl.samplers.sde.euler_maruyama_step``.
    """

    name = "pc"
    solver = staticmethod(sample_pc)
    randomness = "stochastic"
    nfe_per_step = "1 + corrector_steps"

    def validate(self) -> None:
        _check_pc(self.predictor, self.corrector_steps, self.snr)

    def check(self, path: NoisePath) -> None:
        _check_reverse_sde(self, path)
