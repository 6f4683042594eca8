"""The checks a consistency model makes on the models it is handed: the teacher's noise range,
and that a student copied from a net reads it as that net's own model does."""

from __future__ import annotations

import math

import torch

from diffusion_pl.compat import class_name as name
from diffusion_pl.consistency_function import ConsistencyPreconditioning
from diffusion_pl.denoiser import Denoiser
from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.lcm import LCMPreconditioning
from diffusion_pl.objectives.consistency import scaled_denoiser
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import randn
from diffusion_pl.tensors import append_dims

__all__ = ["check_same_reading", "check_teacher_range"]


@torch.no_grad()
def check_same_reading(student: DiffusionModule, model: DiffusionModule, who: str) -> None:
    """Fail unless ``student``'s path and base parameterization read ``model``'s net as
    ``model`` does: x̂_0 at five levels σ̃ from σ_min to σ_max, on the same random x̃ (for a
    consistency model, the D under its consistency function).

    A student copied from a net it reads differently (a velocity net read as EDM's F) starts
    from noise-like outputs, not from the model's denoiser (benchmarks/RESULTS.md).

    Args:
        student: the consistency model started from ``model``'s net (its parameterization a
            :class:`ConsistencyPreconditioning`, whose σ_min and σ_max are the model's).
        model: the diffusion model it was copied from.
        who: how the error names ``model`` (e.g. ``"init RUN.ckpt"``).

    Reference: Song et al. (2023), "Consistency Models", App. C (the student starts from the
    teacher's weights).
    """
    precond: ConsistencyPreconditioning = student.parameterization
    levels = torch.logspace(
        math.log10(precond.sigma_min), math.log10(precond.sigma_max), 5, dtype=torch.float64
    )
    net = model.net
    weight = next(net.parameters())
    scale = torch.sqrt(levels**2 + precond.sigma_data**2)
    x = randn((5, *student.data_shape), torch.Generator().manual_seed(0), dtype=torch.float64)
    x = (x * append_dims(scale, x.ndim)).to(weight)
    levels = levels.to(weight.device)
    labels = (
        None
        if model.num_classes is None
        else torch.zeros(5, dtype=torch.long, device=levels.device)
    )
    was_training = net.training
    net.eval()
    try:
        base = Denoiser(net, student.path, precond.base, labels)
        mine = scaled_denoiser(base, student.path)(x, levels).x0
        reading = model.parameterization  # a consistency model's own: the D under its f
        reading = reading.base if isinstance(reading, ConsistencyPreconditioning) else reading
        theirs = scaled_denoiser(Denoiser(net, model.path, reading, labels), model.path)
        theirs = theirs(x, levels).x0
    finally:
        net.train(was_training)
    worst = float((mine - theirs).abs().max())
    if not worst <= 1e-4 * (1 + float(theirs.abs().max())):
        raise ValueError(
            f"{who}: the student reads that {name(model)}'s net differently (x̂_0 differs by "
            f"up to {worst:.3g}): the student's path {name(student.path)} and parameterization "
            f"{name(precond.base)} must be the model's, {name(model.path)} and "
            f"{name(reading)} (set the model's path: and parameterization: to them; for an EDM "
            "model: the defaults, its sigma_data), or start the student from its initialisation"
        )


def check_teacher_range(
    path: NoisePath, sigma_min: float, sigma_max: float, who: str = "the teacher"
) -> None:
    """Fail unless the teacher's path reaches every level in [σ_min, σ_max] (σ̃ = σ/α).

    Args:
        path: the teacher's noise path.
        sigma_min: the student's lowest level.
        sigma_max: the student's highest level.
        who: how the error names the teacher (e.g. ``"the teacher RUN.ckpt"``).
    """
    ends = torch.tensor([path.t_min, path.t_max], dtype=torch.float64)
    with torch.no_grad():
        lo, hi = torch.exp(-0.5 * path.log_snr(ends)).tolist()
    if lo > sigma_min * (1 + 1e-9) or hi < sigma_max * (1 - 1e-9):
        raise ValueError(
            f"{who}'s {type(path).__name__} covers sigma/alpha in [{lo:.4g}, {hi:.4g}], "
            f"but the student's levels span [{sigma_min:g}, {sigma_max:g}]: set the model's "
            f"sigma_min >= {lo:.4g} and sigma_max <= {hi:.4g} (and the sampler's sigma_min)"
        )


def check_teacher_kind(teacher: DiffusionModule, who: str = "the teacher") -> None:
    """Refuse a consistency model as a distillation teacher: its x̂_0 is the end of the ODE, not
    the posterior mean E[x_0 | x_t] that the teacher's ODE step needs (autoguidance refuses
    mixing the two kinds for the same reason: :func:`diffusion_pl.formulations.check_guide`).

    Args:
        teacher: the loaded teacher.
        who: how the error names the teacher (e.g. ``"the teacher RUN.ckpt"``).
    """
    if isinstance(teacher.parameterization, (ConsistencyPreconditioning, LCMPreconditioning)):
        raise ValueError(
            f"{who} is a consistency model ({name(teacher)}), whose x0 is the end of the ODE, "
            "not the posterior mean E[x0 | x_t] that distillation's ODE step needs: distill "
            "from a diffusion model (EDM, VP, rectified flow, ...), or pass it as init"
        )
