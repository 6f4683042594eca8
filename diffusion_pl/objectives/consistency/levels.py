"""Which pair of noise levels σ_lo < σ_hi each consistency-training example compares.

Song et al. (2023) and iCT compare adjacent levels of an N-level Karras discretization, N fixed
or growing with the step (iCT's curriculum), the interval drawn uniformly (CD) or by log-normal
mass (iCT); ECT draws a continuous log-normal upper level and maps it to a lower one that closes
in stage by stage. Each is a :class:`LevelSampling` chosen by ``class_path``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_pl.randomness import Generators, rand, randn
from diffusion_pl.samplers import karras_sigmas

__all__ = [
    "ECTLevels",
    "KarrasIntervals",
    "LevelSampling",
    "LognormalIntervals",
    "Progress",
    "Span",
    "UniformIntervals",
    "ect_lower_level",
    "ict_num_scales",
    "karras_levels",
    "lognormal_level_probs",
]


@dataclass(frozen=True)
class Span:
    """The levels' range: σ_min (where f is the identity, the lowest level), σ_max, and ρ;
    ``levels``: the teacher's discrete levels σ̃ (increasing, float64) where training sits on
    them (LCM), else None."""

    sigma_min: float
    sigma_max: float
    rho: float = 7.0
    levels: Tensor | None = None


@dataclass(frozen=True)
class Progress:
    """Where training stands: the optimizer step k, and the run's length K (None: unknown)."""

    step: int
    total_steps: int | None

    def total(self) -> int:
        """K, or a ValueError naming the settings that give it."""
        if self.total_steps is None:
            raise ValueError(
                "the iCT curriculum and ECT's stages need the training length K: set the level "
                "sampling's total_steps, or trainer.max_steps (or a fixed num_scales, or ECT's "
                "stage_steps)"
            )
        return self.total_steps


def karras_levels(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> Tensor:
    """The N = ``n`` levels σ_1 < … < σ_N of Song et al.'s discretization, float64.

    σ_i = (σ_min^{1/ρ} + (i − 1)/(N − 1) (σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ (Karras et al.'s Eq. 5
    in increasing order; Song et al. 2023, Sec. 3).
    """
    if n < 2:
        raise ValueError(f"a discretization needs N >= 2 levels, got {n}")
    return karras_sigmas(sigma_min, sigma_max, n - 1, rho).flip(0)


def ict_num_scales(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's exponential curriculum N(k) = min(s0 · 2^⌊k/K'⌋, s1) + 1, K' = ⌊K/(log₂⌊s1/s0⌋ + 1)⌋.

    Args:
        step: the training iteration k.
        total_steps: the total number of iterations K.
        s0: initial number of intervals (10).
        s1: final number of intervals (1280).

    Reference: Song & Dhariwal (2023), "Improved Techniques for Training Consistency Models",
    Sec. 3.4, Eq. 7 (s0 = 10, s1 = 1280).
    """
    if not 1 <= s0 <= s1 or total_steps < 1:
        raise ValueError(f"need 1 <= s0 <= s1 and total_steps >= 1, got {s0}, {s1}, {total_steps}")
    stage = max(total_steps // (int(math.log2(s1 // s0)) + 1), 1)
    return min(s0 * 2 ** (step // stage), s1) + 1


def lognormal_level_probs(sigmas: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """iCT's probabilities of the N − 1 intervals [σ_i, σ_{i+1}] of increasing levels ``sigmas``.

    p(σ_i) ∝ erf((ln σ_{i+1} − P_mean)/(√2 P_std)) − erf((ln σ_i − P_mean)/(√2 P_std)): the
    log-normal mass of each interval.

    Reference: Song & Dhariwal (2023), Sec. 3.5 (P_mean = −1.1, P_std = 2.0).
    """
    cdf = torch.erf((torch.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
    mass = cdf[1:] - cdf[:-1]
    return mass / mass.sum()


def ect_lower_level(
    sigma: Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0
) -> Tensor:
    """ECT's lower level r for the level t = ``sigma`` at curriculum stage s (≥ 0):

        r = max(t (1 − q^{−(s+1)} (1 + k · sigmoid(−b t))), 0).

    Early stages put r at 0 for most t, which is denoising (diffusion training); each stage
    divides t − r by q, so training moves towards the consistency condition between ever closer
    levels. The factor 1 + k sigmoid(−b t) widens the gap at small t.

    Reference: Geng et al. (2024), "Consistency Models Made Easy" (ECT), Sec. 3, the mapping
    function with q = 2, k = 8, b = 1.
    """
    if stage < 0:
        raise ValueError(f"the ECT stage must be >= 0, got {stage}")
    shrink = q ** -(stage + 1) * (1 + k * torch.sigmoid(-b * sigma))
    return (sigma * (1 - shrink)).clamp_min(0.0)


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1 or null, got {value}")


class LevelSampling(ABC):
    """Draws per-example level pairs σ_lo < σ_hi (float64) for the step training stands at.

    Args:
        total_steps: K, the length its schedule is laid over; None: the trainer's
            ``max_steps`` (the module sets it at setup).
    """

    def __init__(self, total_steps: int | None = None) -> None:
        _check_positive("total_steps", total_steps)
        self.total_steps = total_steps

    def length(self, fallback: int | None) -> int | None:
        """K: ``total_steps``, else ``fallback`` (the trainer's ``max_steps``).

        A method, not an attribute read, so a jsonargparse lazy default builds itself first.
        """
        return fallback if self.total_steps is None else self.total_steps

    @abstractmethod
    def __call__(
        self, n: int, generator: Generators, device: torch.device, span: Span, progress: Progress
    ) -> tuple[Tensor, Tensor]:
        """``n`` pairs ``(σ_lo, σ_hi)`` on ``device``; each depends on its own draws alone."""

    @abstractmethod
    def metrics(self, progress: Progress) -> dict[str, float]:
        """The schedule's position at ``progress``, to log (N, or ECT's stage)."""


class KarrasIntervals(LevelSampling):
    """An interval [σ_i, σ_{i+1}] of the N Karras levels (:func:`karras_levels`) per example.

    Args:
        num_scales: a fixed number of levels N (CD: 18); None: iCT's curriculum
            (:func:`ict_num_scales`).
        s0: s0 of the curriculum (10).
        s1: s1 of the curriculum (1280).
        total_steps: K of the curriculum; None: the trainer's ``max_steps``.

    Reference: Song et al. (2023), Sec. 3; Song & Dhariwal (2023), Sec. 3.4.
    """

    def __init__(
        self,
        num_scales: int | None = None,
        s0: int = 10,
        s1: int = 1280,
        total_steps: int | None = None,
    ) -> None:
        if num_scales is not None and num_scales < 2:
            raise ValueError(f"num_scales must be >= 2 or null (the curriculum), got {num_scales}")
        if not 1 <= s0 <= s1:
            raise ValueError(f"need 1 <= s0 <= s1 for the curriculum, got s0={s0}, s1={s1}")
        super().__init__(total_steps)
        self.num_scales, self.s0, self.s1 = num_scales, s0, s1

    @abstractmethod
    def probs(self, sigmas: Tensor) -> Tensor:
        """The probabilities ``[N − 1]`` (float64) of the intervals of levels ``sigmas``."""

    def current_num_scales(self, progress: Progress) -> int:
        """N: ``num_scales``, or the curriculum's N(k)."""
        if self.num_scales is not None:
            return self.num_scales
        return ict_num_scales(progress.step, progress.total(), self.s0, self.s1)

    def __call__(
        self, n: int, generator: Generators, device: torch.device, span: Span, progress: Progress
    ) -> tuple[Tensor, Tensor]:
        """Inverse-CDF sampling: index i for u ~ U[0, 1) in [F_{i−1}, F_i), F the cumulative
        probabilities, so each example's interval depends on its own uniform draw alone."""
        levels = self.current_num_scales(progress)
        sigmas = karras_levels(span.sigma_min, span.sigma_max, levels, span.rho)
        probs = self.probs(sigmas)
        u = rand((n,), generator, device=device, dtype=torch.float64).cpu()
        i = torch.searchsorted(probs.cumsum(0), u, right=True).clamp(max=len(probs) - 1)
        return sigmas[i].to(device), sigmas[i + 1].to(device)

    def metrics(self, progress: Progress) -> dict[str, float]:
        return {"train/num_scales": float(self.current_num_scales(progress))}


class UniformIntervals(KarrasIntervals):
    """Every interval equally likely (Song et al. 2023, Algorithm 2: n ~ U[1, N − 1])."""

    def probs(self, sigmas: Tensor) -> Tensor:
        return torch.full((len(sigmas) - 1,), 1.0 / (len(sigmas) - 1), dtype=torch.float64)


class LognormalIntervals(KarrasIntervals):
    """Intervals by their log-normal mass (:func:`lognormal_level_probs`), iCT's choice.

    Args:
        num_scales: as :class:`KarrasIntervals`.
        s0: as :class:`KarrasIntervals`.
        s1: as :class:`KarrasIntervals`.
        total_steps: as :class:`KarrasIntervals`.
        p_mean: P_mean of the log-normal (−1.1).
        p_std: P_std of the log-normal (2.0).

    Reference: Song & Dhariwal (2023), Sec. 3.5.
    """

    def __init__(
        self,
        num_scales: int | None = None,
        s0: int = 10,
        s1: int = 1280,
        total_steps: int | None = None,
        p_mean: float = -1.1,
        p_std: float = 2.0,
    ) -> None:
        if p_std <= 0:
            raise ValueError(f"p_std must be > 0, got {p_std}")
        super().__init__(num_scales, s0, s1, total_steps)
        self.p_mean, self.p_std = p_mean, p_std

    def probs(self, sigmas: Tensor) -> Tensor:
        return lognormal_level_probs(sigmas, self.p_mean, self.p_std)


class ECTLevels(LevelSampling):
    """ECT: log-normal t (at least 2 σ_min, so the pair is apart) and r = ECT's mapping of t.

    Args:
        p_mean: P_mean of the log-normal (−1.1).
        p_std: P_std of the log-normal (2.0).
        q: the factor t − r shrinks by per stage (2).
        k: ECT's k (8).
        b: ECT's b (1).
        stage_steps: training steps per stage; None: an eighth of K (``total_steps``).
        total_steps: K; None: the trainer's ``max_steps``.

    Reference: Geng et al. (2024), "Consistency Models Made Easy", Sec. 3.
    """

    def __init__(
        self,
        p_mean: float = -1.1,
        p_std: float = 2.0,
        q: float = 2.0,
        k: float = 8.0,
        b: float = 1.0,
        stage_steps: int | None = None,
        total_steps: int | None = None,
    ) -> None:
        if p_std <= 0:
            raise ValueError(f"p_std must be > 0, got {p_std}")
        if q <= 1:
            raise ValueError(f"ECT's q must be > 1 (t - r shrinks by it each stage), got {q}")
        _check_positive("stage_steps", stage_steps)
        super().__init__(total_steps)
        self.p_mean, self.p_std, self.q, self.k, self.b = p_mean, p_std, q, k, b
        self.stage_steps = stage_steps

    def stage(self, progress: Progress) -> int:
        """The stage ⌊k / stage_steps⌋ (default K/8 steps each)."""
        per_stage = self.stage_steps or max(progress.total() // 8, 1)
        return progress.step // per_stage

    def __call__(
        self, n: int, generator: Generators, device: torch.device, span: Span, progress: Progress
    ) -> tuple[Tensor, Tensor]:
        z = randn((n,), generator, device=device, dtype=torch.float64)
        hi = (self.p_mean + self.p_std * z).exp().clamp(2 * span.sigma_min, span.sigma_max)
        lo = ect_lower_level(hi, self.stage(progress), self.q, self.k, self.b)
        return lo.clamp_min(span.sigma_min).to(device), hi.to(device)

    def metrics(self, progress: Progress) -> dict[str, float]:
        return {"train/ect_stage": float(self.stage(progress))}
