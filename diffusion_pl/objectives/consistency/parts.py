"""The small choices of a consistency objective: the teacher's ODE step, the distance d and the
loss weighting λ, each a class chosen by ``class_path``.

Everything lives in EDM's scaled space x̃ = x/α, σ̃ = σ/α (see :mod:`.loss`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from diffusion_pl.parameterization import Prediction
from diffusion_pl.paths import NoisePath
from diffusion_pl.samplers import DenoiserFn
from diffusion_pl.tensors import append_dims

__all__ = [
    "L2",
    "DPMSolverStep",
    "Distance",
    "EulerStep",
    "HeunStep",
    "InverseGap",
    "LevelWeighting",
    "PseudoHuber",
    "ScaledDenoiser",
    "TeacherStep",
    "Unweighted",
    "pseudo_huber",
    "scaled_denoiser",
]

ScaledDenoiser = Callable[[Tensor, Tensor], Prediction]
"""``denoiser(x̃ [B, ...], σ̃ [B]) -> Prediction`` in EDM's scaled space (x̂_0 and ε̂)."""


def scaled_denoiser(denoiser: DenoiserFn, path: NoisePath) -> ScaledDenoiser:
    """A path's denoiser read at scaled points: x̃ at σ̃ is x = α_t x̃ at t = t(σ̃) on ``path``.

    x = α x_0 + σ ε is x̃ = x_0 + σ̃ ε, so x̂_0 and ε̂ are the same in both spaces.
    """

    def call(x: Tensor, sigma: Tensor) -> Prediction:
        with torch.no_grad():
            t = path.time_of_log_snr(-2.0 * torch.log(sigma.to(torch.float64)))
            alpha = append_dims(path.alpha(t), x.ndim).to(x.dtype)
        return denoiser(alpha * x, t)

    return call


class TeacherStep(ABC):
    """How a frozen teacher moves x̃ from σ̃ = ``sigma_from`` to ``sigma_to`` (levels ``[B]``,
    per example, which the samplers' fixed-grid steps do not allow)."""

    @abstractmethod
    def __call__(
        self, teacher: ScaledDenoiser, x: Tensor, sigma_from: Tensor, sigma_to: Tensor
    ) -> Tensor:
        """x̃ at ``sigma_to``."""


class EulerStep(TeacherStep):
    """x̃' = x̃ + h ε̂(x̃, σ_from), h = σ_to − σ_from, on EDM's PF-ODE dx̃/dσ̃ = ε̂(x̃, σ̃).

    In the scaled space this is the deterministic DDIM step, x̃' = x̂_0 + σ_to ε̂ (Song, Meng &
    Ermon 2021, Eq. 14), LCM's default solver.

    Reference: Song et al. (2023), "Consistency Models", Algorithm 2 (Φ = Euler); Luo et al.
    (2023), "Latent Consistency Models", Sec. 4.3 (Φ = DDIM).
    """

    def __call__(
        self, teacher: ScaledDenoiser, x: Tensor, sigma_from: Tensor, sigma_to: Tensor
    ) -> Tensor:
        h = append_dims(sigma_to - sigma_from, x.ndim).to(x.dtype)
        return x + h * teacher(x, sigma_from).eps.to(x.dtype)


class HeunStep(TeacherStep):
    """Euler plus the trapezoidal correction x̃ + h (ε̂(x̃, σ_from) + ε̂(x̃', σ_to))/2.

    Reference: Karras et al. (2022), Algorithm 1 (the same step in σ̃); Song et al. (2023),
    Algorithm 2 (Φ = Heun).
    """

    def __call__(
        self, teacher: ScaledDenoiser, x: Tensor, sigma_from: Tensor, sigma_to: Tensor
    ) -> Tensor:
        h = append_dims(sigma_to - sigma_from, x.ndim).to(x.dtype)
        d = teacher(x, sigma_from).eps.to(x.dtype)
        x_euler = x + h * d
        return x + 0.5 * h * (d + teacher(x_euler, sigma_to).eps.to(x.dtype))


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """√(‖a − b‖² + c²) − c per example ``[B]`` (Song & Dhariwal 2023, Sec. 3.3, Eq. 6)."""
    return torch.sqrt((a - b).flatten(1).pow(2).sum(1) + c**2) - c


class Distance(ABC):
    """d(a, b) per example ``[B]`` between the student's and the target's outputs."""

    @abstractmethod
    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """d(a [B, ...], b [B, ...]) ``[B]``."""


class L2(Distance):
    """The squared Euclidean distance ‖a − b‖² (Song et al. 2023, Sec. 3)."""

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        return (a - b).flatten(1).pow(2).sum(1)


class PseudoHuber(Distance):
    """√(‖a − b‖² + c²) − c (:func:`pseudo_huber`), iCT's distance.

    Args:
        c: the constant; None: 0.00054 √d, d the number of entries of an example (0.03 on
            CIFAR-10).

    Reference: Song & Dhariwal (2023), Sec. 3.3.
    """

    def __init__(self, c: float | None = None) -> None:
        if c is not None and c <= 0:
            raise ValueError(f"the pseudo-Huber c must be > 0 or null (0.00054 sqrt(d)), got {c}")
        self.c = c

    def constant(self, shape: tuple[int, ...]) -> float:
        """c for examples of ``shape``."""
        return 0.00054 * math.sqrt(math.prod(shape)) if self.c is None else self.c

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        return pseudo_huber(a, b, self.constant(tuple(a.shape[1:])))


class LevelWeighting(ABC):
    """λ(σ_n, σ_{n+1}) applied to each example's distance."""

    @abstractmethod
    def __call__(self, distance: Tensor, sigma_lo: Tensor, sigma_hi: Tensor) -> Tensor:
        """λ · ``distance`` ``[B]`` (levels float64 ``[B]``)."""


class InverseGap(LevelWeighting):
    """λ = 1/(σ_{n+1} − σ_n), iCT's weighting (Song & Dhariwal 2023, Sec. 3.2)."""

    def __call__(self, distance: Tensor, sigma_lo: Tensor, sigma_hi: Tensor) -> Tensor:
        return distance / (sigma_hi - sigma_lo).to(distance.dtype)


class Unweighted(LevelWeighting):
    """λ = 1 (Song et al. 2023's distillation, Algorithm 2)."""

    def __call__(self, distance: Tensor, sigma_lo: Tensor, sigma_hi: Tensor) -> Tensor:
        return distance


class DPMSolverStep(TeacherStep):
    """DPM-Solver++(2S) from σ̃_t to σ̃_s through the log-SNR midpoint σ̃_m = √(σ̃_t σ̃_s):
    u = Φ₁(x̃; σ̃_t → σ̃_m, x̂_0(x̃, σ̃_t)), x̃_s = Φ₁(x̃; σ̃_t → σ̃_s, x̂_0(u, σ̃_m)), with the
    first-order (DDIM) step Φ₁(x̃; a → b, D) = D + (b/a)(x̃ − D). Second order, two teacher calls.

    Reference: Lu et al. (2022), "DPM-Solver++", Algorithm 1 (r = ½); Luo et al. (2023),
    "Latent Consistency Models", Sec. 4.3 (DPM-Solver as LCM's augmented-ODE solver).
    """

    def __call__(
        self, teacher: ScaledDenoiser, x: Tensor, sigma_from: Tensor, sigma_to: Tensor
    ) -> Tensor:
        mid = torch.sqrt(sigma_from * sigma_to)

        def first_order(x0: Tensor, to: Tensor) -> Tensor:
            ratio = append_dims(to / sigma_from, x.ndim).to(x.dtype)
            return x0 + ratio * (x - x0)

        u = first_order(teacher(x, sigma_from).x0.to(x.dtype), mid)
        return first_order(teacher(u, mid).x0.to(x.dtype), sigma_to)
