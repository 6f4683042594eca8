"""Consistency models: distillation from any trained model (CD), and training (CT, iCT, ECT).

The preset of :class:`~diffusion_pl.objectives.ConsistencyObjective` on the consistency
preconditioning; the teacher and the student's start are handed in as
:class:`~diffusion_pl.objectives.Teacher` objects and loaded when fitting starts.
"""

from __future__ import annotations

from jsonargparse import lazy_instance
from torch import nn

from diffusion_pl.consistency_function import ConsistencyPreconditioning
from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.formulations.consistency_base import ConsistencyBase
from diffusion_pl.formulations.consistency_checks import check_teacher_range
from diffusion_pl.hparams import save_config
from diffusion_pl.objectives import ConsistencyObjective, Teacher
from diffusion_pl.objectives.consistency import (
    Distance,
    HeunStep,
    InverseGap,
    LevelSampling,
    LevelWeighting,
    LognormalIntervals,
    PseudoHuber,
    Span,
    TeacherStep,
)
from diffusion_pl.parameterization import Parameterization
from diffusion_pl.paths import NoisePath, VEPath
from diffusion_pl.samplers import ConsistencySampler, Sampler

__all__ = ["ConsistencyModel"]


class ConsistencyModel(ConsistencyBase):
    """Consistency distillation (``teacher`` given) or consistency training (iCT, ECT).

    The net's denoiser is the consistency function (:class:`ConsistencyPreconditioning`), so
    every sampler and command treats the model like any other; its own sampler is multistep
    consistency sampling, 1 step by default.

    Each training example draws two levels σ_lo < σ_hi (``levels``), z ~ N(0, I), and pays
    λ d(f_θ(x̃_hi, σ_hi), f_θ⁻(x̃_lo, σ_lo)) (:class:`~diffusion_pl.objectives.ConsistencyObjective`).
    The defaults are iCT's recipe (Song & Dhariwal 2023): the curriculum of
    ``LognormalIntervals``, λ = 1/(σ_{n+1} − σ_n) (``InverseGap``), the pseudo-Huber distance
    with c = 0.00054 √d, and θ⁻ = θ without gradient. Song et al. (2023)'s distillation uses
    ``UniformIntervals(num_scales=18)``, ``Unweighted``, ``HeunStep`` and an EMA target
    (``target_ema`` μ = 0.95). ECT (``ECTLevels``; Geng et al. 2024) draws continuous levels;
    with ``init`` a diffusion model on EDM's preconditioning (configs/*/edm.yaml) training is a
    tuning run.

    Distillation reads the teacher, any model ``diffusion-pl fit`` wrote (e.g.
    ``{class_path: diffusion_pl.checkpoints.Checkpoint, init_args: {path: RUN.ckpt}}``),
    through its own denoiser on its own path, frozen and in eval mode. It is loaded when
    fitting (or validating) starts, is not part of this module's weights, optimizer or
    checkpoint, and its noise range σ̃ ∈ [σ̃(t_min), σ̃(t_max)] must cover [sigma_min, sigma_max].

    Args:
        net: the network F (sees c_in x̃ and c_noise = ¼ ln σ̃).
        data_shape: one example's shape (linked from the data module).
        path: the student's noise path (default EDM's ``VEPath(0.002, 80)``).
        parameterization: what the net predicts inside the consistency function
            (:class:`ConsistencyPreconditioning`'s ``base``); None: EDM's F (Song et al.). A
            student started from a diffusion model (``init_from_teacher``, ``init``) takes that
            model's path and parameterization, e.g. ``LinearPath`` and ``VelocityPrediction``
            for a rectified flow, so it starts as its denoiser.
        sigma_data: σ_d of the preconditioning (0.5 for images in [−1, 1]).
        sigma_min: σ_min, where f_θ is the identity, and the lowest level.
        sigma_max: the highest level.
        rho: ρ of the Karras levels (7).
        teacher: the frozen model of distillation; None: consistency training.
        teacher_step: the teacher's ODE step between the two levels (``HeunStep``, ``EulerStep``).
        init_from_teacher: start the student's net from the teacher's (Song et al. do; needs the
            same net, path and parameterization), instead of from the initialisation.
        init: a diffusion model whose net starts the student's, with no distillation (ECT
            tunes one); it needs the same net, path and parameterization.
        levels: the level pairs (``LognormalIntervals``, ``UniformIntervals``, ``ECTLevels``).
        loss_weighting: λ (``InverseGap``, ``Unweighted``).
        distance: d (``PseudoHuber``, ``L2``).
        target_ema: μ of the target network θ⁻ ← μ θ⁻ + (1 − μ) θ after each optimizer step;
            0 uses θ itself without gradient (iCT).
        sampler: default sampler (:class:`ConsistencySampler`, 1 step); a consistency
            sampler's ``sigma_min`` and ``sigma_max`` must equal this model's.
        **kwargs: ``optimizer``, ``lr_scheduler``, ``p_uncond``, ``guidance_scale``,
            ``clip_samples`` (:class:`DiffusionModule`).

    Reference: Song et al. (2023), "Consistency Models", Algorithms 2–3, App. C; Song &
    Dhariwal (2023), "Improved Techniques for Training Consistency Models", Sec. 3.
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        path: NoisePath = lazy_instance(VEPath, sigma_min=0.002, sigma_max=80.0),
        parameterization: Parameterization | None = None,
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        teacher: Teacher | None = None,
        teacher_step: TeacherStep = lazy_instance(HeunStep),
        init_from_teacher: bool = False,
        init: Teacher | None = None,
        levels: LevelSampling = lazy_instance(LognormalIntervals),
        loss_weighting: LevelWeighting = lazy_instance(InverseGap),
        distance: Distance = lazy_instance(PseudoHuber),
        target_ema: float = 0.0,
        sampler: Sampler = lazy_instance(ConsistencySampler, steps=1),
        **kwargs,
    ) -> None:
        for key, mine in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            theirs = sampler.arguments().get(key, mine)  # (a lazy default too)
            if isinstance(sampler, ConsistencySampler) and theirs != mine:
                raise ValueError(
                    f"the consistency sampler's {key}={theirs} differs from the model's "
                    f"{key}={mine}: set the sampler's {key}: {mine}"
                )
        precond = ConsistencyPreconditioning(sigma_data, sigma_min, sigma_max, parameterization)
        span = Span(sigma_min, sigma_max, rho)
        objective = ConsistencyObjective(
            span, levels, distance, loss_weighting, teacher_step, distills=teacher is not None
        )
        super().__init__(
            net,
            data_shape,
            path,
            precond,
            objective,
            sampler,
            teacher=teacher,
            init=init,
            init_from_teacher=init_from_teacher,
            target_ema=target_ema,
            **kwargs,
        )
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        save_config(self)

    def check_teacher(self, teacher: DiffusionModule, who: str) -> None:
        """Refuse a consistency model, and a teacher whose noise range misses the levels'."""
        super().check_teacher(teacher, who)
        check_teacher_range(teacher.path, self.sigma_min, self.sigma_max, who)
