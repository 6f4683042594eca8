"""LCM's multistep sampling on the skipping grid (Luo et al. 2023, Algorithm 3).

Each step maps the current point to the data estimate x̂_0 = f(x_τ, ω, c, τ) of the latent
consistency model's denoiser, then re-noises it to the next timestep, x_τ' = α_τ' x̂_0 + σ_τ' z:
Song et al.'s multistep consistency sampling with σ_min = 0 (:func:`sample_consistency`), on
timesteps taken from the T/k-level grid the model was distilled on. One network call per step;
the guidance scale ω is the model's input (``--guidance_scale``), so there is no doubled batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_pl.lcm import Timesteps
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators
from diffusion_pl.samplers.base import DenoiserFn, Sampler
from diffusion_pl.samplers.consistency import sample_consistency

__all__ = ["LCMSampler", "lcm_timesteps", "sample_lcm"]


@torch.no_grad()
def sample_lcm(
    denoiser: DenoiserFn,
    path: NoisePath,
    x: Tensor,
    ts: Tensor,
    *,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """LCM's multistep sampler: x̂_0 = f(x, t_0), then for each later time t_i,
    x = α_i x̂_0 + σ_i z and x̂_0 = f(x, t_i); returns the last x̂_0.

    Shared arguments: as in :mod:`diffusion_pl.samplers.base`.

    Args:
        denoiser: ``(x, t) -> Prediction``; its ``x0`` is the consistency function.
        x: the prior draw N(0, σ_{t_max}² I), ``[B, ...]`` (rescaled to σ_{t_0} where
            t_0 < t_max).
        ts: the evaluation times ``[K]``, decreasing (K network evaluations).
        generator: source of the re-noising draws: one generator or one per sample.

    Reference: Luo et al. (2023), "Latent Consistency Models", Algorithm 3; diffusers'
    ``LCMScheduler.step`` (the paper's code).
    """
    return sample_consistency(
        denoiser, path, x, ts, sigma_min=0.0, generator=generator, progress=progress
    )


def lcm_timesteps(
    steps: int, *, original_steps: int = 50, num_timesteps: int | None = None
) -> Tensor:
    """The ``steps`` timesteps τ (int64, decreasing) of LCM's sampler: of the skipping grid
    τ = k j − 1, j = ``original_steps`` … 1 (k = T // ``original_steps``), the entries at the
    indices ⌊i · original_steps / steps⌋, i = 0 … steps − 1.

    T = 1000, 50 levels: 1 step [999], 2 steps [999, 499], 4 steps [999, 759, 499, 259].

    Args:
        steps: number of network evaluations K (1 to ``original_steps``; 1–8 in the paper).
        original_steps: the levels of the skipping grid the model was distilled on (T/k: 50
            for k = 20 of T = 1000).
        num_timesteps: T, the teacher's timesteps (None: 1000; on a discrete path, its own).

    Reference: Luo et al. (2023), "Latent Consistency Models", Sec. 4.3; diffusers'
    ``LCMScheduler.set_timesteps`` (the paper's code).
    """
    total = 1000 if num_timesteps is None else num_timesteps
    if not 1 <= original_steps <= total:
        raise ValueError(
            f"original_steps must be in [1, {total}] (the timesteps), got {original_steps}"
        )
    if not 1 <= steps <= original_steps:
        raise ValueError(
            f"LCMSampler takes 1 to original_steps={original_steps} steps (1-8 in the paper), "
            f"got {steps}"
        )
    skip = total // original_steps
    grid = torch.arange(original_steps, 0, -1, dtype=torch.int64) * skip - 1
    picks = torch.floor(torch.arange(steps, dtype=torch.float64) * original_steps / steps)
    return grid[picks.long()]


class LCMSampler(Sampler, steps=4, grid=False, denoise_final=False):
    """LCM's multistep sampling on its skipping grid (Luo et al. 2023, Algorithm 3).

    The timesteps are the paper code's (:func:`lcm_timesteps`) on the model's discrete
    timesteps (a ``DDPMPath``'s own steps; T = 1000 evenly spaced on a continuous path). It
    reads the denoiser's x̂_0 as the consistency function: on a
    :class:`~diffusion_pl.formulations.LatentConsistencyModel` one call per step, with ω given
    by ``--guidance_scale``. No final denoising step.

    Args:
        steps: number of network evaluations K (1 to ``original_steps``; 1–8 in the paper).

    Reference: Luo et al. (2023), "Latent Consistency Models", Algorithm 3 and Sec. 4.3.
    """

    name = "lcm"
    solver = staticmethod(sample_lcm)
    schedule = staticmethod(lcm_timesteps)
    randomness = "stochastic if steps > 1"

    def validate(self) -> None:
        lcm_timesteps(self.steps, original_steps=self.original_steps, num_timesteps=None)

    def denoises_at_end(self, path: NoisePath) -> bool:
        """Never: the consistency function's output is the sample."""
        return False

    def check(self, path: NoisePath) -> None:
        """The skipping grid must fit the path's timesteps."""
        self.timesteps(path)

    def timesteps(self, path: NoisePath) -> Tensor:
        """The evaluation timesteps τ on ``path``'s discrete timesteps (int64, decreasing)."""
        grid = Timesteps.of(path, self.num_timesteps)
        return lcm_timesteps(self.steps, original_steps=self.original_steps, num_timesteps=grid.num)

    def time_grid(self, path: NoisePath, device: torch.device | str | None) -> Tensor:
        """t of each evaluation timestep, float64 ``[K]``."""
        grid = Timesteps.of(path, self.num_timesteps)
        return grid.times()[self.timesteps(path)].to(device)
