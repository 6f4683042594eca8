"""The consistency objective: λ d(f_θ(x̃_{n+1}, σ_{n+1}), f_θ⁻(x̃_n, σ_n)) per example.

A consistency model learns f_θ(x̃, σ̃) = x̃ at σ_min and f_θ(x̃_σ, σ) = f_θ(x̃_σ', σ') along every
trajectory of the probability-flow ODE, so one evaluation maps noise to data. Training compares
the model at two levels σ_lo < σ_hi (:mod:`.levels`), x̃_hi = x_0 + σ_hi z, where x̃_lo is one
ODE step of a frozen teacher from x̃_hi (distillation, CD; :class:`~.parts.TeacherStep`) or
x_0 + σ_lo z with the same z (training, CT), and θ⁻ is an EMA of θ or θ itself without
gradient. All of it lives in EDM's scaled space x̃ = x/α, σ̃ = σ/α, so the student and the
teacher may each sit on any path.

Reference: Song et al. (2023), "Consistency Models", Eq. 7 (CD), Eq. 10 (CT), Algorithms 2–3;
Song & Dhariwal (2023), "Improved Techniques for Training Consistency Models", Sec. 3.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from diffusion_pl.denoiser import Denoiser
from diffusion_pl.objectives.base import Batch, Model, Objective
from diffusion_pl.objectives.consistency.levels import LevelSampling, Progress, Span
from diffusion_pl.objectives.consistency.parts import (
    Distance,
    LevelWeighting,
    ScaledDenoiser,
    TeacherStep,
    scaled_denoiser,
)
from diffusion_pl.randomness import Generators
from diffusion_pl.tensors import append_dims

__all__ = ["ConsistencyFn", "ConsistencyObjective", "consistency_loss", "rewind_point"]

ConsistencyFn = Callable[[Tensor, Tensor], Tensor]
"""``f(x̃ [B, ...], σ̃ [B]) -> x̂`` in EDM's scaled space."""


def rewind_point(device: torch.device) -> Callable[[], None]:
    """Snapshot torch's global generator of ``device``; calling the result rewinds it there.

    Dropout draws its masks from that generator, so a net called after a rewind draws the
    masks of the call made after the snapshot: the student and its target see the same
    dropout (Song et al.'s reference code saves and restores the RNG state around the two
    calls; Geng et al.'s ECT calls it the shared dropout mask). Independent masks would add
    dropout noise to f_θ − f_θ⁻ that no weights can remove, and which λ = 1/(σ_{n+1} − σ_n)
    magnifies as the levels close in.
    """
    if device.type == "cuda":
        cuda_state = torch.cuda.get_rng_state(device)
        return lambda: torch.cuda.set_rng_state(cuda_state, device)
    state = torch.get_rng_state()
    return lambda: torch.set_rng_state(state)


def consistency_loss(
    student: ConsistencyFn,
    target: ConsistencyFn,
    x0: Tensor,
    z: Tensor,
    sigma_lo: Tensor,
    sigma_hi: Tensor,
    *,
    teacher: ScaledDenoiser | None = None,
    teacher_step: TeacherStep | None = None,
    distance: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """d(f_θ(x̃_{n+1}, σ_{n+1}), f_θ⁻(x̃_n, σ_n)) per example ``[B]``, unweighted.

    Args:
        student: f_θ(x̃, σ̃ [B]) with gradients.
        target: f_θ⁻(x̃, σ̃ [B]), evaluated without gradients.
        x0: data ``[B, ...]``.
        z: the noise ``[B, ...]`` shared by both levels.
        sigma_lo: σ_n ``[B]``.
        sigma_hi: σ_{n+1} ``[B]``.
        teacher: the frozen model of distillation; None: consistency training, x̃_n = x_0 + σ_n z.
        teacher_step: the teacher's ODE step from σ_{n+1} to σ_n (needed with a teacher).
        distance: d(a, b) per example.

    The student and the target draw the same dropout masks (:func:`rewind_point`).

    Reference: Song et al. (2023), Eq. 7 (CD) and Eq. 10 (CT).
    """
    if teacher is not None and teacher_step is None:
        raise ValueError("distillation needs the teacher's step: pass teacher_step (HeunStep())")
    x_hi = x0 + append_dims(sigma_hi, x0.ndim).to(x0.dtype) * z
    with torch.no_grad():
        if teacher is None:
            x_lo = x0 + append_dims(sigma_lo, x0.ndim).to(x0.dtype) * z
        else:
            x_lo = teacher_step(teacher, x_hi, sigma_hi, sigma_lo)  # frozen: no dropout
        rewind = rewind_point(x0.device)
        aim = target(x_lo, sigma_lo)
    rewind()
    return distance(student(x_hi, sigma_hi), aim)


class ConsistencyObjective(Objective):
    """Per example λ(σ_lo, σ_hi) d(f_θ(x̃_hi, σ_hi), f_θ⁻(x̃_lo, σ_lo)) (:func:`consistency_loss`).

    The module's denoiser is the consistency function; the levels come from ``levels`` at the
    step given, z is the noise. Draws: label dropout, the levels, z, in that order. The frozen
    teacher (a loaded diffusion model, set in :attr:`teacher` before the first loss of a
    distillation) and the EMA target net θ⁻ (:attr:`target_net`; None: θ without gradient) are
    handed in by the module that owns them. LCM's objective
    (:class:`~.lcm.LatentConsistencyObjective`) is this loss with another
    :class:`LevelSampling` (the teacher's own timesteps) and other functions compared
    (:meth:`functions`: ω drawn per example, the teacher guided by it, the student fed it).

    Args:
        span: the levels' range (σ_min, σ_max, ρ).
        levels: which pair of levels each example compares.
        distance: d.
        weighting: λ.
        teacher_step: the teacher's ODE step (used when distilling).
        distills: whether a teacher is handed in (False: consistency training).

    Reference: Song et al. (2023), Algorithms 2–3; Song & Dhariwal (2023), Sec. 3; Geng et al.
    (2024), "Consistency Models Made Easy".
    """

    noise_in_compute_dtype = True

    def __init__(
        self,
        span: Span,
        levels: LevelSampling,
        distance: Distance,
        weighting: LevelWeighting,
        teacher_step: TeacherStep,
        distills: bool,
    ) -> None:
        self.span, self.levels, self.distance = span, levels, distance
        self.weighting, self.teacher_step, self.distills = weighting, teacher_step, distills
        self.teacher: Model | None = None
        self.target_net: nn.Module | None = None
        self.max_steps: int | None = None

    def set_training_length(self, max_steps: int | None) -> None:
        self.max_steps = max_steps

    def progress(self, step: int) -> Progress:
        """Step k and K: the level sampling's ``total_steps``, else the trainer's."""
        return Progress(step, self.levels.length(self.max_steps))

    def metrics(self, step: int) -> dict[str, float]:
        return self.levels.metrics(self.progress(step))

    def teacher_denoiser(self, y: Tensor | None, device: torch.device) -> ScaledDenoiser:
        """The teacher's denoiser in scaled space, on ``device`` (labels if it is conditional)."""
        teacher = self.teacher
        if teacher.device != device:
            teacher.to(device)
        labels = y if teacher.num_classes is not None else None
        return scaled_denoiser(teacher.denoiser(labels), teacher.path)

    @staticmethod
    def consistency_fn(model: Model, net: nn.Module, y: Tensor | None) -> ConsistencyFn:
        """f(x̃, σ̃ [B]) of ``net`` on ``model``'s path: the denoiser's x̂_0 (float32+)."""
        denoiser = Denoiser(net, model.path, model.parameterization, y)
        scaled = scaled_denoiser(denoiser, model.path)
        return lambda x, sigma: scaled(x, sigma).x0

    def draw_levels(
        self, step: int, n: int, generator: Generators, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """``n`` level pairs (float64) at ``step`` (``dtype`` unused: levels are float64)."""
        return self.levels(n, generator, device, self.span, self.progress(step))

    def functions(
        self, model: Model, batch: Batch
    ) -> tuple[ConsistencyFn, ConsistencyFn, ScaledDenoiser | None]:
        """f_θ, f_θ⁻ and the teacher's denoiser (None in consistency training) of ``batch``,
        drawn after the levels and z (LCM's objective draws ω here)."""
        labels, device = batch.labels, batch.x0.device
        if self.distills and self.teacher is None:
            raise ValueError("the teacher is loaded by setup(): call it before the loss")
        teacher = self.teacher_denoiser(labels, device) if self.distills else None
        target = model.net if self.target_net is None else self.target_net
        return (
            self.consistency_fn(model, model.net, labels),
            self.consistency_fn(model, target, labels),
            teacher,
        )

    def loss(self, model: Model, batch: Batch) -> Tensor:
        d = self.draw(batch, partial(self.draw_levels, batch.step))
        sigma_lo, sigma_hi = d.times
        student, target, teacher = self.functions(model, batch)
        loss = consistency_loss(
            student,
            target,
            batch.x0.to(d.dtype),
            d.eps,
            sigma_lo,
            sigma_hi,
            teacher=teacher,
            teacher_step=self.teacher_step,
            distance=self.distance,
        )
        return self.weighting(loss, sigma_lo, sigma_hi)
