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
        x: samples at ``ts[0]``, ``[B, ...]`` (the prior draw, or where the teleport took it).
        ts: the evaluation times ``[K]``, decreasing (K network evaluations).
        generator: source of the re-noising draws: one generator or one per sample.

    Reference: Luo et al. (2023), "Latent Consistency Models", Algorithm 3; diffusers'
    ``LCMScheduler.step`` (the paper's code).
    """
    return sample_consistency(
        denoiser, path, x, ts, sigma_min=0.0, generator=generator, progress=progress
    )


def lcm_timesteps(
    steps: int,
    *,
    original_steps: int = 50,
    num_timesteps: int | None = None,
    teleport_to: int | None = None,
) -> Tensor:
    """The ``steps`` timesteps τ (int64, decreasing) of LCM's sampler: of the skipping grid
    τ = k j − 1, j = ``original_steps`` … 1 (k = T // ``original_steps``), the entries at the
    indices ⌊i · M / steps⌋, i = 0 … steps − 1, where M is the number of grid entries kept: all
    of them (M = ``original_steps``), or those ≤ ``teleport_to``.

    T = 1000, 50 levels: 1 step [999], 2 steps [999, 499], 4 steps [999, 759, 499, 259];
    from ``teleport_to`` = 659 (M = 33): 2 steps [659, 339].

    Args:
        steps: number of network evaluations K (1 to M; 1–8 in the paper).
        original_steps: the levels of the skipping grid the model was distilled on (T/k: 50
            for k = 20 of T = 1000).
        num_timesteps: T, the teacher's timesteps (None: 1000; on a discrete path, its own).
        teleport_to: the first timestep, a level of the skipping grid below T − 1 that the
            prior draw reaches by the Gaussian teleport (:mod:`diffusion_pl.teleport`); None:
            T − 1, the paper's start, no teleport.

    Reference: Luo et al. (2023), "Latent Consistency Models", Sec. 4.3; diffusers'
    ``LCMScheduler.set_timesteps`` (the paper's code). The teleported start: Wang & Vastola
    (2023), "The Hidden Linear Structure in Score-Based Models", Sec. 5.
    """
    total = 1000 if num_timesteps is None else num_timesteps
    if not 1 <= original_steps <= total:
        raise ValueError(
            f"original_steps must be in [1, {total}] (the timesteps), got {original_steps}"
        )
    skip = total // original_steps
    grid = torch.arange(original_steps, 0, -1, dtype=torch.int64) * skip - 1
    if teleport_to is not None:
        if teleport_to not in grid.tolist():
            raise ValueError(
                f"teleport_to must be a timestep of the {original_steps}-level skipping grid "
                f"(k j - 1 = {skip - 1}, {2 * skip - 1}, ..., {total - 1}), got {teleport_to}"
            )
        grid = grid[grid <= teleport_to]
    if not 1 <= steps <= len(grid):
        raise ValueError(
            f"LCMSampler takes 1 to {len(grid)} steps (the skipping grid's levels from its "
            f"first timestep; 1-8 in the paper), got {steps}"
        )
    picks = torch.floor(torch.arange(steps, dtype=torch.float64) * len(grid) / steps)
    return grid[picks.long()]


class LCMSampler(Sampler, steps=4, grid=False, denoise_final=False):
    """LCM's multistep sampling on its skipping grid (Luo et al. 2023, Algorithm 3).

    The timesteps are the paper code's (:func:`lcm_timesteps`) on the model's discrete
    timesteps (a ``DDPMPath``'s own steps; T = 1000 evenly spaced on a continuous path). It
    reads the denoiser's x̂_0 as the consistency function: on a
    :class:`~diffusion_pl.formulations.LatentConsistencyModel` one call per step, with ω given
    by ``--guidance_scale``. No final denoising step. With ``teleport_to`` it starts below
    T − 1: the prior draw is carried there by the exact flow of Gaussian data with the data's
    mean and covariance (:mod:`diffusion_pl.teleport`), which skips the top of the path where
    x̂_0 = (x − σ ε̂)/α multiplies the error of an ε-prediction student by up to σ/α ≈ 160.

    Args:
        steps: number of network evaluations K (1 to ``original_steps``; 1–8 in the paper).

    Reference: Luo et al. (2023), "Latent Consistency Models", Algorithm 3 and Sec. 4.3.
    """

    name = "lcm"
    solver = staticmethod(sample_lcm)
    schedule = staticmethod(lcm_timesteps)
    randomness = "stochastic if steps > 1"

    def validate(self) -> None:
        # Without num_timesteps, T is the path's: teleport_to is checked against it (check).
        known = self.num_timesteps is not None
        lcm_timesteps(
            self.steps,
            original_steps=self.original_steps,
            num_timesteps=self.num_timesteps,
            teleport_to=self.teleport_to if known else None,
        )

    def teleports(self) -> bool:
        """Whether the first timestep is ``teleport_to``, reached by the Gaussian teleport."""
        return self.teleport_to is not None

    def denoises_at_end(self, path: NoisePath) -> bool:
        """Never: the consistency function's output is the sample."""
        return False

    def check(self, path: NoisePath) -> None:
        """The skipping grid (and ``teleport_to`` on it) must fit the path's timesteps."""
        self.timesteps(path)

    def timesteps(self, path: NoisePath) -> Tensor:
        """The evaluation timesteps τ on ``path``'s discrete timesteps (int64, decreasing)."""
        grid = Timesteps.of(path, self.num_timesteps)
        return lcm_timesteps(
            self.steps,
            original_steps=self.original_steps,
            num_timesteps=grid.num,
            teleport_to=self.teleport_to,
        )

    def time_grid(self, path: NoisePath, device: torch.device | str | None) -> Tensor:
        """t of each evaluation timestep, float64 ``[K]``."""
        grid = Timesteps.of(path, self.num_timesteps)
        return grid.times()[self.timesteps(path)].to(device)
