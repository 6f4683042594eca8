"""The latent consistency model's core: the teacher's discrete timesteps, LCM's boundary
preconditioning on them, and the denoiser that hands the guidance scale ω to the student.

LCM (Luo et al. 2023) writes the consistency function on the teacher's own discrete timesteps
τ = 0 … T − 1 and in the teacher's own reading of the net (an ε-net stays an ε-net):

    f(x_t, ω, c, t) = c_skip(τ) x_t + c_out(τ) x̂_0(x_t, ω, c, t),
    c_skip = σ_d² / ((s τ)² + σ_d²),   c_out = s τ / √((s τ)² + σ_d²),

with σ_d = 0.5 and the timestep scaling s = 10 of the paper's code (diffusers'
``LCMScheduler.get_scalings_for_boundary_condition_discrete``), so f(x, τ = 0) = x whatever the
weights. The student sees ω, the teacher's classifier-free guidance scale, as a second noise
label, embedded and added to the time embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_pl.consistency_function import ConsistencyFunction
from diffusion_pl.denoiser import Denoiser
from diffusion_pl.nets.protocol import DenoiserNet
from diffusion_pl.parameterization import Parameterization, Prediction
from diffusion_pl.paths import NoisePath, PathCoefficients
from diffusion_pl.tensors import as_batch

__all__ = [
    "GuidanceInputDenoiser",
    "LCMPreconditioning",
    "LCMReading",
    "Timesteps",
    "lcm_scalings",
]


@dataclass(frozen=True)
class Timesteps:
    """The teacher's discrete timesteps τ = 0 … T − 1 at t_τ = t_min + τ (t_max − t_min)/(T − 1).

    On ``DDPMPath(T)`` (t_min = 1/T, t_max = 1) these are its trained steps i/T, τ = i − 1 (the
    timesteps of DDPM's code and of LCM's); on a continuous path, T evenly spaced times
    between the path's ends.

    Attributes:
        t_min: t of τ = 0, where the boundary condition holds.
        t_max: t of τ = T − 1.
        num: T.
    """

    t_min: float
    t_max: float
    num: int

    @classmethod
    def of(cls, path: NoisePath, num: int | None = None) -> Timesteps:
        """The timesteps of ``path``: its own ``num_steps`` where it is discrete, else ``num``
        (default 1000) evenly spaced on [t_min, t_max]; an end where the path has σ = 0 or
        α = 0 (the linear path's t = 0 and 1, where σ/α is 0 or ∞) moves inwards by
        (t_max − t_min)/T."""
        path.prior_std()  # (a jsonargparse lazy path initialises at its first call)
        own = path.num_steps
        if own is not None and num not in (None, own):
            raise ValueError(
                f"the path {type(path).__name__} is discrete with {own} steps, but num_timesteps="
                f"{num}: drop num_timesteps (it is the path's own) or set it to {own}"
            )
        count = own or num or 1000
        if count < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {count}")
        lo, hi = float(path.t_min), float(path.t_max)
        gap = (hi - lo) / count
        with torch.no_grad():  # probed where the path computes (a learned one's dtype)
            sigma_lo, alpha_hi = (
                float(path.sigma(path.as_time(lo))),
                float(path.alpha(path.as_time(hi))),
            )
        return cls(lo + gap * (sigma_lo <= 0), hi - gap * (alpha_hi <= 0), int(count))

    def times(self) -> Tensor:
        """t_τ for τ = 0 … T − 1, float64 ``[T]``."""
        return torch.linspace(self.t_min, self.t_max, self.num, dtype=torch.float64)

    def index(self, t: Tensor) -> Tensor:
        """The nearest timestep τ of each time t (any shape, t's dtype)."""
        scale = (self.num - 1) / (self.t_max - self.t_min)
        return torch.round((t - self.t_min) * scale).clamp(0, self.num - 1)


@dataclass(frozen=True)
class LCMReading:
    """How a net adapted by LCM-LoRA adapters is read: LCM's consistency function at a fixed ω.

    An LCM-LoRA run's adapters file carries it, so that the base checkpoint (a plain diffusion
    model, e.g. the VDM teacher) with the adapters added samples as the LCM-LoRA student does
    (``sample --ckpt_path TEACHER --lora adapters.pt --sampler lcm``).

    Attributes:
        sigma_data: σ_d of :func:`lcm_scalings`.
        timestep_scaling: s of :func:`lcm_scalings`.
        num_timesteps: T on a continuous path (None: the path's own steps, or 1000).
        guidance_scale: the fixed ω the adapters were distilled at (the net does not see it).
    """

    sigma_data: float
    timestep_scaling: float
    num_timesteps: int | None
    guidance_scale: float

    def as_dict(self) -> dict[str, float | int | None]:
        """The fields, as an adapters file stores them."""
        return dict(vars(self))


def lcm_scalings(
    tau: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[Tensor, Tensor]:
    """LCM's c_skip = σ_d²/((s τ)² + σ_d²) and c_out = s τ/√((s τ)² + σ_d²) at timesteps τ.

    At τ = 0: c_skip = 1 and c_out = 0 exactly.

    Reference: Luo et al. (2023), "Latent Consistency Models", Eq. 7 and the paper's code
    (diffusers' ``LCMScheduler.get_scalings_for_boundary_condition_discrete``: σ_d = 0.5,
    timestep_scaling = 10).
    """
    scaled = timestep_scaling * tau
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / torch.sqrt(scaled**2 + sigma_data**2)
    return c_skip, c_out


class LCMPreconditioning(ConsistencyFunction):
    """LCM's consistency function over the teacher's reading ``base`` of the net:
    x̂_0 = c_skip(τ) x + c_out(τ) D(x, t), D the base's x̂_0, τ the nearest timestep of t.

    ε̂ = (x − α x̂_0)/σ, so every sampler reads it; the net sees the base's input scale and
    noise label, so a student copied from its teacher reads the teacher's net as the teacher
    does, and f = D but for c_skip, c_out (c_skip ≤ 2.5·10⁻³ from τ = 1 on). At τ = 0,
    x̂_0 = x bit for bit: the boundary condition, whatever the weights.

    Args:
        base: the teacher's parameterization (ε, x₀, v or velocity prediction).
        timesteps: the teacher's discrete timesteps.
        sigma_data: σ_d (0.5).
        timestep_scaling: s (10).

    Reference: Luo et al. (2023), "Latent Consistency Models", Eq. 7–9 and the paper's code.
    """

    trained_by = "LatentConsistencyModel"

    def __init__(
        self,
        base: Parameterization,
        timesteps: Timesteps,
        sigma_data: float = 0.5,
        timestep_scaling: float = 10.0,
    ) -> None:
        if not sigma_data > 0 or not timestep_scaling > 0:
            raise ValueError(
                f"sigma_data and timestep_scaling must be > 0, got {sigma_data}, {timestep_scaling}"
            )
        self.base, self.timesteps = base, timesteps
        self.sigma_data, self.timestep_scaling = sigma_data, timestep_scaling

    def predict(self, out: Tensor, x: Tensor, c: PathCoefficients) -> Prediction:
        if c.t is None:
            raise ValueError("LCMPreconditioning reads the time t from the path coefficients")
        d = self.base.predict(out, x, c).x0
        tau = self.timesteps.index(c.t.to(torch.float64)).to(x.dtype)
        c_skip, c_out = lcm_scalings(tau, self.sigma_data, self.timestep_scaling)
        x0 = c_skip * x + c_out * d
        return Prediction(x0=x0, eps=(x - c.alpha * x0) / c.sigma)


class GuidanceInputDenoiser(Denoiser):
    """A :class:`Denoiser` whose net also sees the guidance scale ω, as its second noise label
    ``[B, 2]`` = (the parameterization's label, ω): one net call, no doubled batch.

    Args:
        net: a net with ``num_noise_labels = 2``.
        path: the noise path.
        parameterization: how to read the net's output.
        class_labels: optional labels ``[B]``.
        guidance_scale: ω, one number or one per example ``[B]``.

    Reference: Luo et al. (2023), "Latent Consistency Models", Sec. 4.2 (the augmented
    consistency function f_θ(z_t, ω, c, t)).
    """

    def __init__(
        self,
        net: DenoiserNet,
        path: NoisePath,
        parameterization: Parameterization,
        class_labels: Tensor | None,
        guidance_scale: float | Tensor,
    ) -> None:
        super().__init__(net, path, parameterization, class_labels)
        self.guidance_scale = guidance_scale

    def noise_labels(self, t: Tensor, c: PathCoefficients) -> Tensor:
        label = self.parameterization.noise_label(t, c)
        omega = torch.as_tensor(self.guidance_scale, dtype=label.dtype, device=label.device)
        return torch.stack([label, as_batch(omega, label.shape[0], label)], dim=-1)
