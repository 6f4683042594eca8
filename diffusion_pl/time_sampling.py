"""How training draws its times t: one small class per distribution, chosen by ``class_path``.

Every class is a callable ``time_sampling(n, path, *, generator, device) -> t [n]`` (float32
unless ``dtype`` says otherwise). Distributions over the noise level (EDM's log-normal in
σ̃ = σ/α) map it back to t through the path's inverse ``path.time_of_log_snr``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import Generators, low_discrepancy_uniform, rand, randn

__all__ = [
    "DiscreteUniform",
    "LogNormal",
    "LogitNormal",
    "TimeSampling",
    "Uniform",
    "uniform_draws",
]


def uniform_draws(
    n: int,
    *,
    low_discrepancy: bool,
    generator: Generators = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` draws u ~ U[0, 1) in float64, independent or low-discrepancy.

    With ``low_discrepancy`` one u_0 is drawn and u_k = (u_0 + k/n) mod 1: each u_k is still
    uniform, but the batch (a training step's global batch) covers [0, 1) evenly
    (:func:`~diffusion_pl.randomness.low_discrepancy_uniform`).

    Reference: Kingma et al. (2021), "Variational Diffusion Models", App. I.1.
    """
    if not low_discrepancy:
        return rand((n,), generator, device=device, dtype=torch.float64)
    return low_discrepancy_uniform(n, generator, device)


class TimeSampling:
    """The distribution of training times t."""

    def __call__(
        self,
        n: int,
        path: NoisePath,
        *,
        generator: Generators = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw ``n`` times ``[n]`` in ``dtype`` for training on ``path``."""
        raise NotImplementedError


class Uniform(TimeSampling):
    """t ~ U(t_min, t_max), by default the path's own interval.

    Without ``low_discrepancy`` u is one ``torch.rand`` draw in ``dtype``; with it, the float64
    draws of :func:`uniform_draws`.

    Args:
        t_min: smallest time (None: ``path.t_min``; score-SDE's t_ε = 1e-5).
        t_max: largest time (None: ``path.t_max``).
        low_discrepancy: spread the batch's times evenly (VDM, App. I.1).

    Reference: Song et al. (2021), "Score-Based Generative Modeling through SDEs", Eq. 7
    (t ~ U(t_ε, 1)); Kingma et al. (2021), "Variational Diffusion Models", App. I.1.
    """

    def __init__(
        self, t_min: float | None = None, t_max: float | None = None, low_discrepancy: bool = False
    ) -> None:
        if None not in (t_min, t_max) and not t_min < t_max:
            raise ValueError(f"need t_min < t_max, got {t_min}, {t_max}")
        self.t_min, self.t_max, self.low_discrepancy = t_min, t_max, low_discrepancy

    def __call__(self, n, path, *, generator=None, device=None, dtype=torch.float32) -> Tensor:
        t_min = path.t_min if self.t_min is None else self.t_min
        t_max = path.t_max if self.t_max is None else self.t_max
        if not self.low_discrepancy:
            u = rand((n,), generator, device=device, dtype=dtype)
            return t_min + (t_max - t_min) * u
        u = uniform_draws(n, low_discrepancy=True, generator=generator, device=device)
        return (t_min + (t_max - t_min) * u).to(dtype)


class DiscreteUniform(TimeSampling):
    """t uniform on a discrete path's own grid t_i = t_min + i (t_max − t_min) / (L − 1).

    The index runs over i = ``first`` … L − 1, L = ``path.num_steps``: on ``DDPMPath(T)`` the
    steps i/T of DDPM, on ``VEPath(num_levels=L)`` NCSN's L noise levels.

    Args:
        first: the first index drawn; VDM's discrete bound starts at 1, since each of its terms
            needs the step before.
        low_discrepancy: spread the batch's indices evenly (VDM, App. I.1).

    Reference: Ho et al. (2020), "Denoising Diffusion Probabilistic Models", Algorithm 1;
    Song & Ermon (2019), "Generative Modeling by Estimating Gradients", Eq. 6.
    """

    def __init__(self, first: int = 0, low_discrepancy: bool = False) -> None:
        if first < 0:
            raise ValueError(f"first must be >= 0, got {first}")
        self.first, self.low_discrepancy = first, low_discrepancy

    def __call__(self, n, path, *, generator=None, device=None, dtype=torch.float32) -> Tensor:
        if path.num_steps is None or path.num_steps - 1 <= self.first:
            raise ValueError(
                f"DiscreteUniform(first={self.first}) draws from a discrete path's grid, but "
                f"{type(path).__name__} has num_steps={path.num_steps}: use a discrete path "
                "with more steps, or Uniform for a continuous one"
            )
        steps = path.num_steps - 1
        u = uniform_draws(
            n, low_discrepancy=self.low_discrepancy, generator=generator, device=device
        )
        i = self.first + (u * (steps + 1 - self.first)).floor().clamp(max=steps - self.first)
        return (path.t_min + (path.t_max - path.t_min) * i / steps).to(dtype)


class LogitNormal(TimeSampling):
    """t = sigmoid(m + s·n), n ~ N(0, 1): more training at intermediate times, t ∈ (0, 1).

    Args:
        mean: m (Esser et al.: 0).
        std: s (Esser et al.: 1).

    Reference: Esser et al. (2024), "Scaling Rectified Flow Transformers for High-Resolution
    Image Synthesis", Sec. 3.1.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.mean, self.std = mean, std

    def __call__(self, n, path, *, generator=None, device=None, dtype=torch.float32) -> Tensor:
        normal = randn((n,), generator, device=device, dtype=dtype)
        return torch.sigmoid(self.mean + self.std * normal)


class LogNormal(TimeSampling):
    """ln σ̃ ~ N(P_mean, P_std²) in σ̃ = σ/α, mapped to t by ``path.time_of_log_snr(−2 ln σ̃)``.

    Training concentrates on the middle noise levels where the loss can still fall (EDM's
    CIFAR-10 setting). On any path, σ̃ is the noise of the scaled variable x/α (λ = −2 ln σ̃).
    A draw outside the path's range is clamped to [t_min, t_max], i.e. to the path's own σ̃
    at those ends (on ``VEPath(0.002, 80)`` this happens to about 2 draws in 10⁵; on
    ``VPLinearPath()``, whose σ̃(t_min = 1e-3) ≈ 0.01, to about 0.2 % of them).

    Args:
        p_mean: P_mean, the mean of ln σ̃ (−1.2 in the paper).
        p_std: P_std, its standard deviation (1.2 in the paper).

    Reference: Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based
    Generative Models", Table 1 ("Training") and Sec. 5.
    """

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2) -> None:
        if not p_std > 0:
            raise ValueError(f"p_std must be > 0, got {p_std}")
        self.p_mean, self.p_std = p_mean, p_std

    def __call__(self, n, path, *, generator=None, device=None, dtype=torch.float32) -> Tensor:
        normal = randn((n,), generator, device=device, dtype=torch.float64)
        log_sigma = self.p_mean + self.p_std * normal
        t = path.time_of_log_snr(-2.0 * log_sigma)
        return t.clamp(path.t_min, path.t_max).to(dtype)
