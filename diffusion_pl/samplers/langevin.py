"""Langevin dynamics: the plain sampler, the predictor–corrector's corrector, and NCSN's annealing.

Unadjusted Langevin x ← x + (ε/2) ∇log p(x) + √ε z samples p as ε → 0 and the number of steps
→ ∞, but only if it can travel between modes. With the exact score of a two-mode mixture with
unequal weights and a small noise level it cannot: each chain settles in the mode whose basin it
starts in, so the mode weights come from the initial distribution, not from p (docs/math.md,
section 7). Annealing over decreasing noise levels fixes this: at large σ the modes merge and the
chains mix with the right weights, which later levels then keep.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators, randn
from diffusion_pl.samplers.base import DenoiserFn, Sampler, progress_bar

__all__ = [
    "AnnealedLangevinSampler",
    "langevin_corrector",
    "langevin_dynamics",
    "sample_annealed_langevin",
    "score_at",
]

ScoreFn = Callable[[Tensor], Tensor]
"""``score_fn(x [B, ...]) -> ∇ log p(x) [B, ...]`` at one fixed noise level."""


def score_at(denoiser: DenoiserFn, path: NoisePath, t: Tensor | float) -> ScoreFn:
    """The score x ↦ ∇ log p_t(x) ≈ −ε̂(x, t) / σ_t of ``denoiser`` at one fixed time ``t``."""
    t = torch.as_tensor(t, dtype=torch.float64)

    def score_fn(x: Tensor) -> Tensor:
        t_batch = t.to(device=x.device, dtype=x.dtype).expand(x.shape[0])
        return denoiser(x, t_batch).score(path.coefficients(t_batch, x.ndim))

    return score_fn


def _noise(x: Tensor, generator: Generators) -> Tensor:
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def langevin_dynamics(
    score_fn: ScoreFn,
    x: Tensor,
    step_size: float,
    n_steps: int,
    *,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """Unadjusted Langevin dynamics x ← x + (ε/2) s(x) + √ε z at one fixed noise level.

    Args:
        score_fn: ``x -> ∇ log p(x)``, e.g. :func:`score_at` of a denoiser.
        x: starting points ``[B, ...]``.
        step_size: ε > 0.
        n_steps: number of updates.
        generator: source of the Gaussian noise z.
        progress: show a progress bar.

    Reference: Song & Ermon (2019), "Generative Modeling by Estimating Gradients of the Data
    Distribution", Eq. 2.
    """
    for _ in progress_bar(range(n_steps), n_steps, progress, "langevin"):
        x = x + 0.5 * step_size * score_fn(x)
        x = x + step_size**0.5 * _noise(x, generator)
    return x


@torch.no_grad()
def langevin_corrector(
    score_fn: ScoreFn,
    x: Tensor,
    snr: float,
    n_steps: int,
    *,
    alpha: float | Tensor = 1.0,
    generator: Generators = None,
) -> Tensor:
    """Langevin corrector with a step size set by the signal-to-noise ratio ``snr`` = r.

    Each step draws z, sets ε = 2 α (r ‖z‖ / ‖s(x)‖)² and moves x ← x + ε s(x) + √(2ε) z, so
    that ‖ε s‖ / ‖√(2ε) z‖ = √α · r: r is the ratio of the drift's norm to the noise's.

    The norms are per-sample norms averaged over the batch, as in the reference code, so ε is
    one number per step. Per-sample step sizes are not a valid Langevin kernel: ε would depend
    on x (through ‖s(x)‖, which vanishes at every mode) and on z itself, so the increment
    √(2ε) z ∝ ‖z‖ z / ‖s(x)‖ is heavy-tailed and p_t is no longer invariant. In high dimension
    both norms concentrate and the two choices agree; on the 2-D test mixture per-sample norms
    give mode weights 0.67 / 0.33 and per-mode stds 2–3× too large at r = 0.16.

    Args:
        score_fn: ``x -> ∇ log p_t(x)`` at the current time.
        x: samples ``[B, ...]``.
        snr: r; the paper uses 0.16 on VE (CIFAR-10) and 0.01 on VP.
        n_steps: corrector steps M.
        alpha: α_i, 1 on VE and 1 − β_i on VP (Algorithm 5).
        generator: source of the Gaussian noise z.

    Reference: Song et al. (2021), "Score-Based Generative Modeling through SDEs",
    Algorithms 4 and 5.
    """
    for _ in range(n_steps):
        grad = score_fn(x)
        z = _noise(x, generator)
        noise_norm = z.flatten(1).norm(dim=1).mean()
        grad_norm = grad.flatten(1).norm(dim=1).mean().clamp_min(torch.finfo(grad.dtype).tiny)
        step = 2 * alpha * (snr * noise_norm / grad_norm) ** 2
        x = x + step * grad + torch.sqrt(2 * step) * z
    return x


def _check_langevin(steps_per_level: int, step_lr: float) -> None:
    """Refuse fewer than one step per level or a step size ε <= 0."""
    if steps_per_level < 1:
        raise ValueError(f"steps_per_level must be >= 1, got {steps_per_level}")
    if step_lr <= 0:
        raise ValueError(f"step_lr must be > 0, got {step_lr}")


@torch.no_grad()
def sample_annealed_langevin(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    steps_per_level: int = 100,
    step_lr: float = 2e-5,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """Annealed Langevin dynamics over the noise levels σ_i = σ(ts[i]) (NCSN, Algorithm 1).

    At each level i, run ``steps_per_level`` Langevin steps with the score at ``ts[i]`` and step
    size α_i = ε σ_i² / σ_L², σ_L = σ(ts[-1]) the smallest level, so the drift-to-noise ratio is
    the same at every level. Returns the last chain state at ``ts[-1]`` without denoising; the
    config's ``denoise_final`` adds NCSNv2's final step x̂_0 = x + σ_L² s(x) (VE).

    On the VE path the levels are NCSN's geometric σ's. On other paths the score of p_t at each
    t is still a valid annealing from the prior to the data (x is then on the scale of
    α_t x_0 + σ_t ε); the step size keeps the σ_i² scaling.

    Shared arguments: as in :mod:`diffusion_pl.samplers.base`.

    Args:
        x: initial samples ``[B, ...]`` (NCSN: uniform noise; the config: the path's prior).
        ts: times of the L levels ``[L]``, σ decreasing; σ(ts[-1]) must be > 0.
        steps_per_level: Langevin steps T per level.
        step_lr: ε, the step size at the smallest level.
        progress: show a progress bar over levels.

    Reference: Song & Ermon (2019), "Generative Modeling by Estimating Gradients of the Data
    Distribution", Algorithm 1; Song & Ermon (2020), "Improved Techniques", Sec. 4 (denoising).
    """
    _check_langevin(steps_per_level, step_lr)
    sigmas = path.sigma(ts.to(torch.float64))
    if not float(sigmas[-1]) > 0:
        raise ValueError("annealed Langevin needs σ > 0 at the last level")
    levels = len(ts)
    for i in progress_bar(range(levels), levels, progress, "annealed langevin"):
        step_size = step_lr * float(sigmas[i] / sigmas[-1]) ** 2
        score_fn = score_at(denoiser, path, ts[i])
        x = langevin_dynamics(score_fn, x, step_size, steps_per_level, generator=generator)
    return x


class AnnealedLangevinSampler(Sampler, steps=None, grid=False):
    """Annealed Langevin dynamics (NCSN) over L noise levels evenly spaced in t.

    L · ``steps_per_level`` network evaluations (plus one for ``denoise_final``, NCSNv2's final
    denoising step). Defaults are the paper's: T = 100, ε = 2e-5, and L the path's own levels
    (NCSN: 10).

    Args:
        steps: number of levels L; None takes a discrete path's own levels (``num_steps``, the
            levels its net was trained at) and is required on a continuous path. On a discrete
            path any other L is refused: the net would be sampled at levels it never saw.
    """

    name = "annealed_langevin"
    solver = staticmethod(sample_annealed_langevin)
    randomness = "stochastic"
    nfe_per_step = "steps_per_level (a step is a level)"

    def validate(self) -> None:
        _check_langevin(self.steps_per_level, self.step_lr)

    @torch.no_grad()
    def check(self, path: NoisePath) -> None:
        if not float(path.sigma(path.as_time(path.t_min))) > 0:
            raise ValueError(
                f"{type(self).__name__}: the score is undefined at σ = 0, and "
                f"{type(path).__name__} has σ(t_min = {path.t_min}) = 0; use a path with "
                "σ(t_min) > 0 (NCSN's is VE) or an ODE sampler (euler, heun, rk45) or DDIM"
            )
        if self.steps is None and path.num_steps is None:
            raise ValueError(
                f"{type(self).__name__}: steps=None takes the path's levels, but "
                f"{type(path).__name__} is continuous: set steps to the number of levels L"
            )
        if None not in (self.steps, path.num_steps) and self.steps != path.num_steps:
            raise ValueError(
                f"{type(self).__name__}: steps={self.steps} levels, but the net was trained at "
                f"the path's {path.num_steps} levels ({type(path).__name__}): drop the sampler's "
                f"steps (it defaults to the path's levels) or set it to {path.num_steps}"
            )

    def time_grid(self, path: NoisePath, device: torch.device | str | None) -> Tensor:
        """The L level times (``steps``, else the path's levels), evenly spaced from ``t_max`` to
        ``t_min`` (float64)."""
        levels = path.num_steps if self.steps is None else self.steps
        return torch.linspace(path.t_max, path.t_min, levels, dtype=torch.float64, device=device)
