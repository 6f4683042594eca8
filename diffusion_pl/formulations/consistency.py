"""Consistency models: distillation from any trained model (CD), and training (CT, iCT, ECT).

The preset of :class:`~diffusion_pl.objectives.ConsistencyObjective` on the consistency
preconditioning; the teacher and the student's start are handed in as
:class:`~diffusion_pl.objectives.Teacher` objects and loaded when fitting starts.
"""

from __future__ import annotations

import copy

import torch
from jsonargparse import lazy_instance
from torch import nn

from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.formulations.consistency_checks import (
    check_same_reading,
    check_teacher_kind,
    check_teacher_range,
)
from diffusion_pl.formulations.optim import optimizer_config
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
from diffusion_pl.parameterization import ConsistencyPreconditioning, Parameterization
from diffusion_pl.paths import NoisePath, VEPath
from diffusion_pl.samplers import ConsistencySampler, Sampler

__all__ = ["ConsistencyModel"]


class ConsistencyModel(DiffusionModule):
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
        if not 0 <= target_ema < 1:
            raise ValueError(f"target_ema must be in [0, 1), got {target_ema}")
        if init_from_teacher and teacher is None:
            raise ValueError("init_from_teacher needs a teacher to copy the weights from")
        if init_from_teacher and init is not None:
            raise ValueError(
                f"init_from_teacher and init ({init}) both name the student's start: keep one"
            )
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
        super().__init__(net, data_shape, path, precond, objective, sampler, **kwargs)
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.teacher, self.init, self.init_from_teacher = teacher, init, init_from_teacher
        self.target_ema = target_ema
        self.target_net: nn.Module | None = copy_frozen(net) if target_ema > 0 else None
        objective.target_net = self.target_net
        self._target_step = 0
        save_config(self)

    # --- the models handed in -------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Load the teacher (distillation) before fitting or validating; check that it fits.

        When fitting starts, copy ``init``'s net into the student (a resumed run then restores
        its own weights over it)."""
        super().setup(stage)
        if self.init is not None and stage == "fit":
            self.start_from(self.load_diffusion_model(self.init, "init"), f"init {self.init}")
        if self.teacher is None or self.objective.teacher is not None:
            return
        teacher = self.load_diffusion_model(self.teacher, "teacher")
        who = f"the teacher {self.teacher}"
        check_teacher_kind(teacher, who)
        check_teacher_range(teacher.path, self.sigma_min, self.sigma_max, who)
        if self.init_from_teacher:
            self.start_from(teacher, f"init_from_teacher {self.teacher}")
        self.objective.teacher = teacher

    def load_diffusion_model(self, source: Teacher, key: str) -> DiffusionModule:
        """The diffusion model ``source`` holds (the argument ``key``), frozen, on this model's
        data shape; a missing checkpoint names the argument."""
        try:
            model = source.load()
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{key} (model.init_args.{key}): {err}: set {key}'s path to a checkpoint that "
                "`diffusion-pl fit` wrote"
            ) from err
        if not isinstance(model, DiffusionModule):
            raise ValueError(
                f"{key} {source} holds a {type(model).__name__}, not a diffusion model: pass a "
                "checkpoint that `diffusion-pl fit` wrote for one"
            )
        if tuple(model.data_shape) != self.data_shape:
            raise ValueError(
                f"{key} {source} was trained on data of shape {tuple(model.data_shape)} but "
                f"this model's data have shape {self.data_shape}: use a model of the same data"
            )
        return model

    def start_from(self, model: DiffusionModule, who: str) -> None:
        """Start the student (and its target network) from ``model``'s net, after checking
        that the student reads that net as ``model`` does (:func:`check_same_reading`)."""
        self.copy_net_from(model.net)
        check_same_reading(self, model, who)

    def copy_net_from(self, other: nn.Module) -> None:
        """Load another net's weights (the teacher's, or ``init``'s) into the student and its
        target network."""
        mine, theirs = self.net.state_dict(), other.state_dict()
        shapes = {k: tuple(v.shape) for k, v in mine.items()}
        if shapes != {k: tuple(v.shape) for k, v in theirs.items()}:
            raise ValueError(
                f"init_from_teacher / init: that net ({type(other).__name__}) differs from the "
                f"student's ({type(self.net).__name__}) in its layers or their shapes: give the "
                "student the same net config, or start it from its initialisation"
            )
        self.net.load_state_dict(theirs)
        if self.target_net is not None:
            self.target_net.load_state_dict(theirs)

    # --- the target network ---------------------------------------------------------------
    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        """θ⁻ ← μ θ⁻ + (1 − μ) θ once per optimizer step (Song et al. 2023, Alg. 2)."""
        if self.target_net is None or self.global_step == self._target_step:
            return
        self._target_step = self.global_step
        with torch.no_grad():
            for target, p in zip(self.target_net.parameters(), self.net.parameters(), strict=True):
                target.lerp_(p.detach(), 1.0 - self.target_ema)

    def configure_optimizers(self):
        """The optimizer over the student's net only (not the target network)."""
        return optimizer_config(
            self.net.parameters(), self.optimizer_factory, self.lr_scheduler_factory
        )


def copy_frozen(net: nn.Module) -> nn.Module:
    """A copy of ``net`` without gradients (the EMA target network θ⁻)."""
    return copy.deepcopy(net).requires_grad_(False)
