"""Latent consistency models (LCM): guided consistency distillation in the teacher's own
reading, on the teacher's own discrete timesteps, with the guidance scale ω as an input.

The preset of :class:`~diffusion_pl.objectives.consistency.LatentConsistencyObjective` on
:class:`~diffusion_pl.lcm.LCMPreconditioning`; teacher, target network and the student's start
work as for :class:`~diffusion_pl.formulations.ConsistencyModel` (:class:`ConsistencyBase`).
"""

from __future__ import annotations

import math

import torch
from jsonargparse import lazy_instance
from torch import Tensor, nn

from diffusion_pl.compat import class_name, lazy_class
from diffusion_pl.denoiser import Denoiser
from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.formulations.consistency_base import ConsistencyBase
from diffusion_pl.guidance import check_same_path
from diffusion_pl.hparams import save_config
from diffusion_pl.lcm import GuidanceInputDenoiser, LCMPreconditioning, LCMReading, Timesteps
from diffusion_pl.lora import Adapters
from diffusion_pl.nets.embeddings import NoiseEmbedding
from diffusion_pl.nets.protocol import MultiLabelDenoiserNet
from diffusion_pl.objectives import Teacher
from diffusion_pl.objectives.consistency import (
    Distance,
    EulerStep,
    LatentConsistencyObjective,
    LevelSampling,
    LevelWeighting,
    PseudoHuber,
    SkippingSteps,
    Span,
    TeacherStep,
    Unweighted,
)
from diffusion_pl.parameterization import EpsilonPrediction, Parameterization
from diffusion_pl.paths import DDPMPath, NoisePath
from diffusion_pl.samplers import LCMSampler, Sampler

__all__ = ["LatentConsistencyModel"]


class LatentConsistencyModel(ConsistencyBase):
    """Latent consistency distillation (LCM) of a classifier-free-guided diffusion model.

    Each example draws a timestep pair t_n < t_{n+k} of the teacher's T timesteps
    (``levels``: ``SkippingSteps(k)``), ω ~ U[``omega_min``, ``omega_max``] and z, and pays
    d(f_θ(x_{n+k}, ω, c, t_{n+k}), f_θ⁻(x̂_n, ω, c, t_n)), x̂_n one step of the teacher's solver
    (DDIM = ``EulerStep``, or ``DPMSolverStep``) on its guided x̂_∅ + ω (x̂_c − x̂_∅). Convention:
    ω = 1 is the conditional teacher (unguided), ω = 0 the unconditional one; LCM's paper writes
    w = ω − 1. An unconditional teacher is distilled with ω fixed at 1 (plain LCD).

    The consistency function is LCM's, on the teacher's reading of the net and its discrete
    timesteps τ: f = c_skip(τ) x_t + c_out(τ) x̂_0(x_t), σ_d = 0.5, timestep scaling 10
    (:class:`~diffusion_pl.lcm.LCMPreconditioning`), so an ε-student stays ε and is sampled by
    LCM's multistep sampler (``LCMSampler``, ``--sampler lcm``) or any other.

    The student sees ω as its net's second noise label (``num_noise_labels: 2`` on the teacher's
    net config): embedded like the time label and added to the time embedding, its last layer
    zero-initialised here, so a student copied from the teacher (``init_from_teacher``) starts
    as the teacher, bit for bit, for every ω. ``--guidance_scale`` then sets ω at sampling, one
    net call per step. A net without that label is distilled at a fixed ω (ω_min = ω_max).

    A preset of its own rather than a :class:`~diffusion_pl.formulations.ConsistencyModel`
    configuration: its boundary lives on the teacher's discrete timesteps, not on EDM's σ̃
    levels with a σ_min, its teacher is guided per example and its student takes ω, so the
    settings that choose those (σ_min, σ_max, ρ of the Karras levels) do not apply and others
    (the ω range, the timestep scaling) do; the objective, teacher steps, distances, EMA target
    and shared dropout masks are the consistency models' own.

    Args:
        net: the student's network: the teacher's net config, with ``num_noise_labels: 2`` for
            ω's input.
        data_shape: one example's shape (linked from the data module).
        path: the teacher's noise path (``DDPMPath`` by default).
        parameterization: the teacher's reading of its net (``EpsilonPrediction``), which the
            student keeps under LCM's c_skip, c_out.
        num_timesteps: T on a continuous path (None: the path's own steps, else 1000).
        omega_min: ω_min of the training guidance scales.
        omega_max: ω_max.
        sigma_data: σ_d of LCM's boundary scalings (0.5).
        timestep_scaling: s of LCM's boundary scalings (10).
        teacher: the frozen class-conditional (or unconditional) model to distil.
        teacher_step: the teacher's solver step (``EulerStep`` = DDIM, ``DPMSolverStep``).
        init_from_teacher: start the student's net from the teacher's (as LCM does; without a
            teacher, a model built only to sample, it has no effect).
        init: another diffusion model to start the student from instead.
        levels: the timestep pairs (``SkippingSteps``, k = 20 of T = 1000).
        loss_weighting: λ (``Unweighted``).
        distance: d (``PseudoHuber``, ``L2``).
        target_ema: μ of the target network (0.95; 0: θ without gradient).
        sampler: default sampler (``LCMSampler``, 4 steps).
        guidance_scale: ω of sampling when none is given; None: the middle of [ω_min, ω_max].
        **kwargs: ``optimizer``, ``lr_scheduler``, ``p_uncond``, ``clip_samples``
            (:class:`DiffusionModule`).

    Reference: Luo et al. (2023), "Latent Consistency Models", Algorithm 1, Sec. 4.2–4.3 and
    the paper's code (boundary scalings, skipping step, guidance-scale embedding).
    """

    net_noise_labels = 2  # (t, ω); a net of one label is distilled at a fixed ω

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        path: NoisePath = lazy_instance(DDPMPath),
        parameterization: Parameterization = lazy_instance(EpsilonPrediction),
        num_timesteps: int | None = None,
        omega_min: float = 1.0,
        omega_max: float = 1.0,
        sigma_data: float = 0.5,
        timestep_scaling: float = 10.0,
        teacher: Teacher | None = None,
        teacher_step: TeacherStep = lazy_instance(EulerStep),
        init_from_teacher: bool = True,
        init: Teacher | None = None,
        levels: LevelSampling = lazy_instance(SkippingSteps, skip=20),
        loss_weighting: LevelWeighting = lazy_instance(Unweighted),
        distance: Distance = lazy_instance(PseudoHuber),
        target_ema: float = 0.95,
        sampler: Sampler = lazy_instance(LCMSampler, steps=4),
        guidance_scale: float | None = None,
        **kwargs,
    ) -> None:
        labels = net.num_noise_labels if isinstance(net, MultiLabelDenoiserNet) else 1
        if labels > 2:
            raise ValueError(
                f"the student's net takes {labels} noise labels; LCM's takes 1 (t), or 2 (t and "
                "omega): set model.init_args.net.init_args.num_noise_labels: 2"
            )
        if getattr(net, "num_classes", None) is None and (omega_min, omega_max) != (1.0, 1.0):
            raise ValueError(
                f"omega in [{omega_min}, {omega_max}] guides towards class labels, but the "
                "student's net is unconditional: set its num_classes to the teacher's, or "
                "omega_min and omega_max to 1 (plain latent consistency distillation)"
            )
        takes_omega = labels == 2
        if takes_omega and kwargs.get("lora") is not None:
            raise ValueError(
                "lora: the net is frozen but for its adapters, so omega's embedding would stay "
                "zero: LCM-LoRA distils at a fixed omega; set the net's num_noise_labels: 1 and "
                "omega_min = omega_max"
            )
        if takes_omega:
            zero_omega_route(net)
        timesteps = Timesteps.of(path, num_timesteps)
        span = teacher_levels(path, timesteps)
        objective = LatentConsistencyObjective(
            span, levels, distance, loss_weighting, teacher_step, omega_min, omega_max,
            omega_input=takes_omega,
        )  # fmt: skip
        precond = LCMPreconditioning(parameterization, timesteps, sigma_data, timestep_scaling)
        omega = (omega_min + omega_max) / 2 if guidance_scale is None else guidance_scale
        super().__init__(
            net,
            data_shape,
            path,
            precond,
            objective,
            sampler,
            teacher=teacher,
            init=init,
            init_from_teacher=init_from_teacher and teacher is not None,
            target_ema=target_ema,
            guidance_scale=omega,
            **kwargs,
        )
        self.omega_min, self.omega_max, self.takes_omega = omega_min, omega_max, takes_omega
        self.reading = LCMReading(sigma_data, timestep_scaling, num_timesteps, omega_min)
        save_config(self)

    @classmethod
    def reading_of(
        cls, model: DiffusionModule, reading: LCMReading, sampler: Sampler
    ) -> LatentConsistencyModel:
        """``model``'s net (with LCM-LoRA adapters added) read as the LCM-LoRA student that
        trained them: LCM's consistency function over ``model``'s path and reading at the fixed
        ω of ``reading``, sampled by ``sampler``; the net is shared, not copied.

        So ``sample --ckpt_path TEACHER --lora lcm_lora.pt --sampler lcm`` samples the student.
        """
        if isinstance(model, cls):
            raise ValueError("the model is a latent consistency model already")
        omega = reading.guidance_scale
        view = cls(model.net, model.data_shape, model.path, model.parameterization,
                   num_timesteps=reading.num_timesteps, omega_min=omega, omega_max=omega,
                   sigma_data=reading.sigma_data, timestep_scaling=reading.timestep_scaling,
                   target_ema=0.0, sampler=sampler, clip_samples=model.clip_samples)  # fmt: skip
        return view.to(next(model.net.parameters()).device).train(model.training)

    def adapters(self, step: int, **about: object) -> Adapters:
        """The adapters file of an LCM-LoRA run: with how to read the adapted net
        (:class:`~diffusion_pl.lcm.LCMReading`), so its base samples as this student."""
        return super().adapters(step, lcm=self.reading, **about)

    def setup(self, stage: str) -> None:
        """Load the teacher before fitting or validating (there is no LCM without one)."""
        if self.teacher is None and stage in ("fit", "validate"):
            raise ValueError(
                "LatentConsistencyModel distils a teacher: set teacher (model.init_args.teacher: "
                "a checkpoint that `diffusion-pl fit` wrote, e.g. of configs/digits/vdm_cond.yaml)"
            )
        super().setup(stage)

    def denoiser(
        self, class_labels: Tensor | None = None, guidance_scale: float | None = None
    ) -> Denoiser:
        """The consistency function as a denoiser, with ω = ``guidance_scale`` (default: the
        model's) as the net's input: one call per evaluation, never a doubled batch."""
        omega = self.guidance_scale if guidance_scale is None else guidance_scale
        parts = (self.net, self.path, self.parameterization, class_labels)
        if self.takes_omega:
            return GuidanceInputDenoiser(*parts, omega)
        if omega != self.omega_min:
            raise ValueError(
                f"this LCM was distilled at the fixed guidance scale {self.omega_min} (its net "
                f"does not take omega), so it samples at no other: drop guidance_scale {omega}"
            )
        return Denoiser(*parts)

    def check_teacher(self, teacher: DiffusionModule, who: str) -> None:
        """Refuse a consistency model, a teacher on another path or with another reading of its
        net, and guidance (ω ≠ 1) from an unconditional teacher."""
        super().check_teacher(teacher, who)
        check_same_path(self.path, teacher.path, model="the student", other=who)
        theirs, mine = teacher.parameterization, self.parameterization.base
        if lazy_class(theirs) is not lazy_class(mine):
            raise ValueError(
                f"{who} reads its net as {class_name(theirs)} but the student as "
                f"{class_name(mine)}: set the model's parameterization to the teacher's"
            )
        if teacher.num_classes is None and (self.omega_min, self.omega_max) != (1.0, 1.0):
            raise ValueError(
                f"{who} is unconditional, so there is no guidance to distil: set omega_min and "
                "omega_max to 1 (plain latent consistency distillation)"
            )

    def start_from(self, model: DiffusionModule, who: str) -> None:
        """Start the student (and its target) from ``model``'s net; ω's route, which that net
        lacks, keeps its zeros (the teacher's reading is checked by :meth:`check_teacher`)."""
        self.copy_net_from(model.net)

    def copy_net_from(self, other: nn.Module) -> None:
        mine, theirs = self.net.state_dict(), other.state_dict()
        omega_keys = {k for k in mine if k not in theirs and ".more_labels." in k}
        same = {k: tuple(v.shape) for k, v in mine.items() if k not in omega_keys}
        if same != {k: tuple(v.shape) for k, v in theirs.items()}:
            raise ValueError(
                f"init_from_teacher / init: that net ({type(other).__name__}) differs from the "
                f"student's ({type(self.net).__name__}) in its layers or their shapes (beyond "
                "omega's embedding): give the student the teacher's net config, with "
                "num_noise_labels: 2"
            )
        for net in (self.net, self.target_net):
            if net is not None:
                net.load_state_dict(theirs, strict=False)


def zero_omega_route(net: nn.Module) -> None:
    """Zero the last layer of the second noise label's embedding in every
    :class:`NoiseEmbedding` of ``net``, so that ω adds exactly 0 until training moves it."""
    embeddings = [
        m for m in net.modules() if isinstance(m, NoiseEmbedding) and m.num_noise_labels > 1
    ]
    if not embeddings:
        raise ValueError(
            f"the student's {type(net).__name__} has no NoiseEmbedding to carry omega: use "
            "diffusion_pl.nets.UNet or MLP with num_noise_labels: 2"
        )
    for embedding in embeddings:
        embedding.zero_extra_labels()


def teacher_levels(path: NoisePath, timesteps: Timesteps) -> Span:
    """The levels σ̃ = σ/α of the teacher's timesteps (float64, increasing) as a :class:`Span`;
    a path whose σ̃ is infinite at a timestep (α = 0: the linear path at t = 1) is refused."""
    with torch.no_grad():
        levels = torch.exp(-0.5 * path.log_snr(timesteps.times())).to(torch.float64)
    top, bottom = float(levels[-1]), float(levels[0])
    if not (math.isfinite(top) and bottom > 0):
        raise ValueError(
            f"{type(path).__name__} has sigma/alpha in [{bottom:g}, {top:g}] on the timesteps "
            f"t in [{timesteps.t_min:g}, {timesteps.t_max:g}]: LCM needs alpha > 0 and sigma > 0 "
            "at every timestep"
        )
    return Span(bottom, top, levels=levels.cpu())
