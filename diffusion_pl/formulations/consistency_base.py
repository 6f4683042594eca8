"""What every consistency formulation shares (CD / CT / ECT and LCM): the models handed in (a
frozen teacher, a start), the EMA target network θ⁻, and the optimizer over the student alone."""

from __future__ import annotations

import copy

import torch
from torch import nn

from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.formulations.consistency_checks import check_same_reading, check_teacher_kind
from diffusion_pl.formulations.optim import optimizer_config
from diffusion_pl.objectives import ConsistencyObjective, Teacher
from diffusion_pl.parameterization import Parameterization
from diffusion_pl.paths import NoisePath
from diffusion_pl.samplers import Sampler

__all__ = ["ConsistencyBase", "copy_frozen"]


class ConsistencyBase(DiffusionModule):
    """A :class:`DiffusionModule` trained by a :class:`ConsistencyObjective`, with the models it
    is handed and its target network; :class:`~diffusion_pl.formulations.ConsistencyModel` and
    :class:`~diffusion_pl.formulations.LatentConsistencyModel` are its presets.

    Args:
        net, data_shape, path, parameterization, objective, sampler: as
            :class:`DiffusionModule`.
        teacher: the frozen model of distillation; None: consistency training.
        init: a diffusion model whose net starts the student's, with no distillation.
        init_from_teacher: start the student's net from the teacher's. With ``lora`` (in
            ``kwargs``) the student is the teacher's net plus the adapters: the teacher is the
            base (``base_ckpt``, which must then be left unset), loaded by the LoRA part.
        target_ema: μ of θ⁻ ← μ θ⁻ + (1 − μ) θ after each optimizer step; 0: θ without gradient.
        **kwargs: as :class:`DiffusionModule`.

    Reference: Song et al. (2023), "Consistency Models", Algorithm 2 (θ⁻ an EMA of θ).
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        path: NoisePath,
        parameterization: Parameterization,
        objective: ConsistencyObjective,
        sampler: Sampler,
        *,
        teacher: Teacher | None,
        init: Teacher | None,
        init_from_teacher: bool,
        target_ema: float,
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
        if kwargs.get("lora") is not None and init is not None:
            raise ValueError(
                f"init ({init}) and lora: the LoRA adapters start from their base: drop init and "
                "set base_ckpt to that checkpoint"
            )
        if kwargs.get("lora") is not None and init_from_teacher:
            if kwargs.get("base_ckpt") is not None:
                raise ValueError(
                    f"init_from_teacher and base_ckpt ({kwargs['base_ckpt']}) both name the base "
                    "of the LoRA adapters: keep one (init_from_teacher: the teacher is the base, "
                    "as LCM-LoRA's; or init_from_teacher: false and base_ckpt)"
                )
            kwargs["base_ckpt"], init_from_teacher = teacher, False
        super().__init__(net, data_shape, path, parameterization, objective, sampler, **kwargs)
        self.teacher, self.init, self.init_from_teacher = teacher, init, init_from_teacher
        self.target_ema = target_ema
        self.target_net: nn.Module | None = copy_frozen(net) if target_ema > 0 else None
        objective.target_net = self.target_net
        self._target_step = 0

    # --- the models handed in -------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Load the teacher (distillation) before fitting or validating; check that it fits.

        When fitting starts, copy ``init``'s net into the student (a resumed run then restores
        its own weights over it); with ``lora``, the base just loaded into the student's net
        (adapters zero) is copied into the target network too, which was copied from the net
        before the base was loaded."""
        super().setup(stage)
        if self.lora is not None and self.target_net is not None and stage == "fit":
            self.target_net.load_state_dict(self.net.state_dict())
        if self.init is not None and stage == "fit":
            self.start_from(self.load_diffusion_model(self.init, "init"), f"init {self.init}")
        if self.teacher is None or self.objective.teacher is not None:
            return
        teacher = self.load_diffusion_model(self.teacher, "teacher")
        self.check_teacher(teacher, f"the teacher {self.teacher}")
        if self.init_from_teacher:
            self.start_from(teacher, f"init_from_teacher {self.teacher}")
        self.objective.teacher = teacher

    def check_teacher(self, teacher: DiffusionModule, who: str) -> None:
        """Refuse a teacher this model cannot distil (a consistency model; a preset adds its
        own checks)."""
        check_teacher_kind(teacher, who)

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
        """The optimizer over the student's net only (not the target network); with ``lora``,
        over its adapters only."""
        params = (p for p in self.net.parameters() if self.lora is None or p.requires_grad)
        return optimizer_config(params, self.optimizer_factory, self.lr_scheduler_factory)


def copy_frozen(net: nn.Module) -> nn.Module:
    """A copy of ``net`` without gradients (the EMA target network θ⁻)."""
    return copy.deepcopy(net).requires_grad_(False)
