"""Latent consistency distillation (LCM): the consistency objective on the teacher's own
discrete timesteps, with a skipping step k and a classifier-free-guided teacher whose scale ω
is drawn per example and handed to the student as an input.

Per example: a timestep pair τ_{n+k} > τ_n of the teacher's T timesteps (:class:`SkippingSteps`),
ω ~ U[ω_min, ω_max], x_{n+k} = α x_0 + σ z, x̂_n = one step of the teacher's solver on the
guided prediction x̂ = x̂_∅ + ω (x̂_c − x̂_∅) (DDIM = :class:`~.parts.EulerStep` by default,
:class:`~.parts.DPMSolverStep`), and the loss d(f_θ(x_{n+k}, ω, c, t_{n+k}),
f_θ⁻(x̂_n, ω, c, t_n)). It is :class:`~.loss.ConsistencyObjective` with these parts: the
levels, the teacher step and the distance are the same classes, only the functions it compares
(ω added) and the teacher (guided) differ.

Convention: ω = 1 is the conditional teacher (unguided), ω = 0 the unconditional one, ω > 1
guided; LCM's paper writes w = ω − 1 (x̂ = (1 + w) x̂_c − w x̂_∅).

Reference: Luo et al. (2023), "Latent Consistency Models", Algorithm 1 (LCD), Sec. 4.2
(guided distillation), Sec. 4.3 (skipping step), and the paper's code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffusion_pl.denoiser import Denoiser
from diffusion_pl.guidance import ClassifierFreeGuidance
from diffusion_pl.lcm import GuidanceInputDenoiser
from diffusion_pl.objectives.base import Batch, Model
from diffusion_pl.objectives.consistency.levels import LevelSampling, Progress, Span
from diffusion_pl.objectives.consistency.loss import ConsistencyFn, ConsistencyObjective
from diffusion_pl.objectives.consistency.parts import (
    Distance,
    LevelWeighting,
    ScaledDenoiser,
    TeacherStep,
    scaled_denoiser,
)
from diffusion_pl.randomness import Generators, rand
from diffusion_pl.tensors import append_dims

__all__ = ["LatentConsistencyObjective", "SkippingSteps"]


class SkippingSteps(LevelSampling):
    """LCM's skipping step: τ_{n+k} uniform on the T/k timesteps τ = k − 1, 2k − 1, …, T − 1
    and τ_n = max(τ_{n+k} − k, 0), from the teacher's discrete levels (``span.levels``).

    With T = 1000 and k = 20 these are the 50 timesteps of DDIM's 50-step schedule, and the
    lowest pair ends at τ = 0, where the boundary condition makes the target the point itself.

    Args:
        skip: k (20 in the paper, of T = 1000).

    Reference: Luo et al. (2023), "Latent Consistency Models", Sec. 4.3 and the paper's code
    (``DDIMSolver``: timesteps (1 … T/k)·k − 1, the lower one clamped at 0).
    """

    def __init__(self, skip: int = 20) -> None:
        if skip < 1:
            raise ValueError(f"the skipping step must be >= 1, got {skip}")
        super().__init__(None)
        self.skip = skip

    def __call__(
        self, n: int, generator: Generators, device: torch.device, span: Span, progress: Progress
    ) -> tuple[Tensor, Tensor]:
        levels = span.levels
        if levels is None:
            raise ValueError(
                "SkippingSteps draws the teacher's discrete timesteps: use it with "
                "diffusion_pl.formulations.LatentConsistencyModel"
            )
        count = len(levels) // self.skip
        if count < 1:
            raise ValueError(
                f"a skipping step of {self.skip} exceeds the {len(levels)} timesteps: lower skip"
            )
        u = rand((n,), generator, device=device, dtype=torch.float64).cpu()
        hi = (torch.floor(u * count).long().clamp(max=count - 1) + 1) * self.skip - 1
        lo = (hi - self.skip).clamp_min(0)
        return levels[lo].to(device), levels[hi].to(device)

    def metrics(self, progress: Progress) -> dict[str, float]:
        return {}


class LatentConsistencyObjective(ConsistencyObjective):
    """:class:`ConsistencyObjective` with a guided teacher and ω as an input of the student.

    Draws: label dropout, the levels, z, then ω ~ U[ω_min, ω_max] per example (none when
    ω_min = ω_max). The teacher (handed in, as for CD) is read with the same labels as the
    student; rows whose label was dropped to ∅ get the unconditional teacher, whatever ω.

    Args:
        span: the levels' range, with the teacher's discrete levels (``span.levels``).
        levels: the level pairs (:class:`SkippingSteps`).
        distance: d.
        weighting: λ.
        teacher_step: the teacher's solver step (``EulerStep`` = DDIM, ``DPMSolverStep``).
        omega_min: ω_min.
        omega_max: ω_max.
        omega_input: whether the student's net sees ω (its second noise label); without it ω
            must be fixed (ω_min = ω_max).

    Reference: Luo et al. (2023), "Latent Consistency Models", Algorithm 1 and Sec. 4.2–4.3.
    """

    def __init__(
        self,
        span: Span,
        levels: LevelSampling,
        distance: Distance,
        weighting: LevelWeighting,
        teacher_step: TeacherStep,
        omega_min: float = 1.0,
        omega_max: float = 1.0,
        omega_input: bool = True,
    ) -> None:
        if not (math.isfinite(omega_min) and math.isfinite(omega_max)) or omega_min > omega_max:
            raise ValueError(f"need finite omega_min <= omega_max, got {omega_min}, {omega_max}")
        if not omega_input and omega_min != omega_max:
            raise ValueError(
                f"omega in [{omega_min}, {omega_max}] varies, but the student's net does not "
                "see it: set the net's num_noise_labels: 2 (omega's input), or omega_min = "
                "omega_max (a fixed guidance scale)"
            )
        super().__init__(span, levels, distance, weighting, teacher_step, distills=True)
        self.omega_min, self.omega_max, self.omega_input = omega_min, omega_max, omega_input

    def draw_omega(self, n: int, generator: Generators, device: torch.device) -> Tensor:
        """ω ``[B]`` (float64), uniform on [ω_min, ω_max]; no draw when the range is a point."""
        if self.omega_min == self.omega_max:
            return torch.full((n,), self.omega_min, dtype=torch.float64, device=device)
        u = rand((n,), generator, device=device, dtype=torch.float64)
        return self.omega_min + (self.omega_max - self.omega_min) * u

    def guided_teacher(self, y: Tensor | None, omega: Tensor, ndim: int) -> ScaledDenoiser:
        """The teacher's x̂_∅ + ω (x̂_c − x̂_∅) (and ε̂ alike) in scaled space, ω per example;
        the conditional teacher alone where every ω is 1, the unconditional one without labels."""
        teacher = self.teacher
        if teacher.device != omega.device:
            teacher.to(omega.device)
        labels = y if teacher.num_classes is not None else None
        if labels is None or bool((omega == 1).all()):
            return scaled_denoiser(teacher.denoiser(labels), teacher.path)
        guided = ClassifierFreeGuidance(
            teacher.net, teacher.path, teacher.parameterization, labels, append_dims(omega, ndim)
        )
        return scaled_denoiser(guided, teacher.path)

    def guided_consistency_fn(
        self, model: Model, net: nn.Module, y: Tensor | None, omega: Tensor
    ) -> ConsistencyFn:
        """f(x̃, σ̃ [B]) of ``net`` with ω ``[B]`` as its second noise label (when it takes one)."""
        parts = (net, model.path, model.parameterization, y)
        denoiser = GuidanceInputDenoiser(*parts, omega) if self.omega_input else Denoiser(*parts)
        scaled = scaled_denoiser(denoiser, model.path)
        return lambda x, sigma: scaled(x, sigma).x0

    def functions(
        self, model: Model, batch: Batch
    ) -> tuple[ConsistencyFn, ConsistencyFn, ScaledDenoiser | None]:
        if self.teacher is None:
            raise ValueError("the teacher is loaded by setup(): call it before the loss")
        x0, labels = batch.x0, batch.labels
        omega = self.draw_omega(x0.shape[0], batch.generator, x0.device)
        target = model.net if self.target_net is None else self.target_net
        return (
            self.guided_consistency_fn(model, model.net, labels, omega),
            self.guided_consistency_fn(model, target, labels, omega),
            self.guided_teacher(labels, omega, x0.ndim),
        )
