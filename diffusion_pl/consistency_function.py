"""The readings of consistency models: a consistency function over any denoiser, any path.

``ConsistencyFunction`` is the base of every consistency reading (it keeps its base reading's
input scale and noise label and has no regression target); ``ConsistencyPreconditioning`` is
Song et al.'s boundary-exact f(x̃, σ̃) (docs/math.md, section 9). LCM's reading on the
teacher's timesteps, ``LCMPreconditioning``, is in :mod:`diffusion_pl.lcm`.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from diffusion_pl.parameterization import EDMPreconditioning, Parameterization, Prediction
from diffusion_pl.paths import PathCoefficients

__all__ = ["ConsistencyFunction", "ConsistencyPreconditioning"]


class ConsistencyFunction(Parameterization):
    """A consistency function over the reading ``self.base`` of the net: the net sees the base's
    input scale and noise label, a subclass's ``predict`` turns the base's x̂_0 into f, and it
    has no regression target (the formulation ``trained_by`` trains it)."""

    base: Parameterization
    trained_by: ClassVar[str]
    """The formulation (in diffusion_pl.formulations) that trains it."""
    trained_how: ClassVar[str] = ""
    """How, for the message that refuses a regression."""

    def noise_label(self, t: Tensor, c: PathCoefficients) -> Tensor:
        return self.base.noise_label(t, c)

    def input_scale(self, c: PathCoefficients) -> Tensor | float:
        return self.base.input_scale(c)

    def target(self, x0: Tensor, eps: Tensor, c: PathCoefficients) -> Tensor:
        raise ValueError(
            f"{type(self).__name__} has no regression target: train it with "
            f"diffusion_pl.formulations.{self.trained_by}{self.trained_how}"
        )

    def eps_scale(self, c: PathCoefficients) -> Tensor:
        raise ValueError(
            f"{type(self).__name__} is not trained by a weighted regression; use "
            f"diffusion_pl.formulations.{self.trained_by}"
        )


class ConsistencyPreconditioning(ConsistencyFunction):
    """The consistency function f(x̃, σ̃) of Song et al. over any denoiser D, any path.

    On EDM's scaled variable x̃ = x/α at σ̃ = σ/α, Song et al.'s parameterization is

        f = c_skip x̃ + c_out F,   c_skip = σ_d² / ((σ̃ − σ_min)² + σ_d²),
                                   c_out = σ_d (σ̃ − σ_min) / √(σ̃² + σ_d²),

    with F the net of EDM's preconditioning (c_in = 1/√(σ̃² + σ_d²), c_noise = ¼ ln σ̃). Any
    parameterization's denoiser D = x̂_0 implies such an F, the one EDM's preconditioning
    reads as D: F = (D − c_skip^E x̃)/c_out^E with c_skip^E = σ_d²/(σ̃² + σ_d²) and
    c_out^E = σ̃ σ_d/√(σ̃² + σ_d²). Substituting, c_out/c_out^E = (σ̃ − σ_min)/σ̃ = r and

        f = r D + (c_skip − r c_skip^E) x̃.

    That is how f is read here, with D the ``base`` parameterization's x̂_0 (EDM's by default,
    which gives Song et al.'s formula exactly; ε-, v- or velocity prediction give the same
    consistency function over the net a diffusion model of that parameterization trained, so a
    student copied from such a teacher starts as its denoiser: f → D as σ̃ grows). The net
    sees the base's input scale and noise label. Written on x itself, with gap = σ − σ_min α,
    m² = gap² + σ_d² α² and n² = σ² + σ_d² α²:

        x̂_0 = (gap/σ) D + (σ_d² α / m² − σ_d² α gap / (σ n²)) x,    ε̂ = (x − α x̂_0) / σ,

    finite at α = 0 (σ̃ = ∞: x̂_0 = D). At σ̃ = σ_min, gap = 0 and f = x̃ whatever the weights:
    the boundary condition holds by construction, on the VE path (α = 1) bit for bit. The
    reading is the denoiser x̂_0 every sampler consumes: a consistency model is sampled by any
    sampler, and multistep consistency sampling
    (:class:`~diffusion_pl.samplers.ConsistencySampler`) reads x̂_0 only.

    It has no regression target: it is trained by the consistency losses of
    :class:`~diffusion_pl.formulations.ConsistencyModel`.

    Args:
        sigma_data: σ_d, the data's standard deviation (0.5 for images in [−1, 1]).
        sigma_min: σ_min, where f is the identity (0.002 in both papers); also the lowest σ̃
            the default base's noise label distinguishes.
        sigma_max: highest σ̃ the default base's noise label distinguishes (80).
        base: the parameterization of D; None: :class:`EDMPreconditioning` (σ_d, σ_min, σ_max).

    Reference: Song et al. (2023), "Consistency Models", Eq. 5–6 and App. C; Song & Dhariwal
    (2023), "Improved Techniques for Training Consistency Models", Sec. 3 (σ_min = 0.002);
    Karras et al. (2022), Table 1 (c_skip^E, c_out^E).
    """

    trained_by = "ConsistencyModel"
    trained_how = " (consistency distillation or training)"

    def __init__(
        self,
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        base: Parameterization | None = None,
    ) -> None:
        edm = EDMPreconditioning(sigma_data, sigma_min, sigma_max)  # (checks the three)
        self.sigma_data, self.sigma_min, self.sigma_max = sigma_data, sigma_min, sigma_max
        self.base = edm if base is None else base

    def predict(self, out: Tensor, x: Tensor, c: PathCoefficients) -> Prediction:
        d = self.base.predict(out, x, c).x0
        gap, sd2_alpha = c.sigma - self.sigma_min * c.alpha, self.sigma_data**2 * c.alpha
        keep = sd2_alpha / (gap**2 + sd2_alpha * c.alpha) - sd2_alpha * gap / (
            c.sigma * (c.sigma**2 + sd2_alpha * c.alpha)
        )
        x0 = gap / c.sigma * d + keep * x
        return Prediction(x0=x0, eps=(x - c.alpha * x0) / c.sigma)
