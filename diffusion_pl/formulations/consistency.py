"""Consistency models: distillation from any trained model, and training from scratch (iCT).

A consistency model learns f_θ(x̃, σ̃) = x̃ at σ_min and f_θ(x̃_σ, σ) = f_θ(x̃_σ', σ') along
every trajectory of the probability-flow ODE, so one evaluation maps noise to data. Training
compares the model at adjacent levels σ_{n+1} > σ_n of an N-level Karras discretization:

    L = λ(σ_n) d(f_θ(x̃_{n+1}, σ_{n+1}), f_θ⁻(x̃_n, σ_n)),   x̃_{n+1} = x_0 + σ_{n+1} z,

where x̃_n is one ODE step of a frozen teacher from x̃_{n+1} (distillation, CD) or x_0 + σ_n z
with the same z (training, CT), and θ⁻ is an EMA of θ or θ itself without gradient. All of it
lives in EDM's scaled space x̃ = x/α, σ̃ = σ/α, so the student and the teacher may each sit on
any path: a level σ̃ maps to a path's time by ``path.time_of_log_snr(−2 ln σ̃)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Literal

import torch
from jsonargparse import lazy_instance
from torch import Tensor, nn

from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.formulations.optim import optimizer_config
from diffusion_pl.hparams import save_config
from diffusion_pl.parameterization import (
    ConsistencyPreconditioning,
    Denoiser,
    Parameterization,
    Prediction,
)
from diffusion_pl.paths import NoisePath, VEPath
from diffusion_pl.randomness import Generators, rand, randn
from diffusion_pl.samplers import ConsistencySampler, DenoiserFn, Sampler, karras_sigmas
from diffusion_pl.tensors import append_dims

__all__ = [
    "ConsistencyFn",
    "ConsistencyModel",
    "ScaledDenoiser",
    "consistency_loss",
    "ect_lower_level",
    "ict_num_scales",
    "karras_levels",
    "lognormal_level_probs",
    "ode_step",
    "pseudo_huber",
    "rewind_point",
]

ConsistencyFn = Callable[[Tensor, Tensor], Tensor]
"""``f(x̃ [B, ...], σ̃ [B]) -> x̂`` in EDM's scaled space."""

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


def karras_levels(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> Tensor:
    """The N = ``n`` levels σ_1 < … < σ_N of Song et al.'s discretization, float64.

    σ_i = (σ_min^{1/ρ} + (i − 1)/(N − 1) (σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ (Karras et al.'s Eq. 5
    in increasing order; Song et al. 2023, Sec. 3).
    """
    if n < 2:
        raise ValueError(f"a discretization needs N >= 2 levels, got {n}")
    return karras_sigmas(sigma_min, sigma_max, n - 1, rho).flip(0)


def ict_num_scales(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's exponential curriculum N(k) = min(s0 · 2^⌊k/K'⌋, s1) + 1, K' = ⌊K/(log₂⌊s1/s0⌋ + 1)⌋.

    Args:
        step: the training iteration k.
        total_steps: the total number of iterations K.
        s0: initial number of intervals (10).
        s1: final number of intervals (1280).

    Reference: Song & Dhariwal (2023), "Improved Techniques for Training Consistency Models",
    Sec. 3.4, Eq. 7 (s0 = 10, s1 = 1280).
    """
    if not 1 <= s0 <= s1 or total_steps < 1:
        raise ValueError(f"need 1 <= s0 <= s1 and total_steps >= 1, got {s0}, {s1}, {total_steps}")
    stage = max(total_steps // (int(math.log2(s1 // s0)) + 1), 1)
    return min(s0 * 2 ** (step // stage), s1) + 1


def lognormal_level_probs(sigmas: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """iCT's probabilities of the N − 1 intervals [σ_i, σ_{i+1}] of increasing levels ``sigmas``.

    p(σ_i) ∝ erf((ln σ_{i+1} − P_mean)/(√2 P_std)) − erf((ln σ_i − P_mean)/(√2 P_std)): the
    log-normal mass of each interval.

    Reference: Song & Dhariwal (2023), Sec. 3.5 (P_mean = −1.1, P_std = 2.0).
    """
    cdf = torch.erf((torch.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
    mass = cdf[1:] - cdf[:-1]
    return mass / mass.sum()


def ect_lower_level(
    sigma: Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0
) -> Tensor:
    """ECT's lower level r for the level t = ``sigma`` at curriculum stage s (≥ 0):

        r = max(t (1 − q^{−(s+1)} (1 + k · sigmoid(−b t))), 0).

    Early stages put r at 0 for most t, which is denoising (diffusion training); each stage
    divides t − r by q, so training moves towards the consistency condition between ever closer
    levels. The factor 1 + k sigmoid(−b t) widens the gap at small t.

    Reference: Geng et al. (2024), "Consistency Models Made Easy" (ECT), Sec. 3, the mapping
    function with q = 2, k = 8, b = 1.
    """
    if stage < 0:
        raise ValueError(f"the ECT stage must be >= 0, got {stage}")
    shrink = q ** -(stage + 1) * (1 + k * torch.sigmoid(-b * sigma))
    return (sigma * (1 - shrink)).clamp_min(0.0)


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """√(‖a − b‖² + c²) − c per example ``[B]`` (Song & Dhariwal 2023, Sec. 3.3, Eq. 6)."""
    return torch.sqrt((a - b).flatten(1).pow(2).sum(1) + c**2) - c


def ode_step(
    teacher: ScaledDenoiser,
    x: Tensor,
    sigma_from: Tensor,
    sigma_to: Tensor,
    solver: Literal["heun", "euler"] = "heun",
) -> Tensor:
    """One step of EDM's PF-ODE dx̃/dσ̃ = ε̂(x̃, σ̃) from σ̃ = ``sigma_from`` to ``sigma_to``.

    Euler: x̃' = x̃ + h ε̂(x̃, σ_from), h = σ_to − σ_from. Heun adds the trapezoidal correction
    x̃ + h (ε̂(x̃, σ_from) + ε̂(x̃', σ_to))/2. The levels are per example (``[B]``), which the
    samplers' fixed-grid steps (one time for the whole batch) do not allow.

    Reference: Karras et al. (2022), Algorithm 1 (the same step in σ̃); Song et al. (2023),
    Algorithm 2 (Φ = Heun or Euler).
    """
    h = append_dims(sigma_to - sigma_from, x.ndim).to(x.dtype)
    d = teacher(x, sigma_from).eps.to(x.dtype)
    x_euler = x + h * d
    if solver == "euler":
        return x_euler
    return x + 0.5 * h * (d + teacher(x_euler, sigma_to).eps.to(x.dtype))


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
    solver: Literal["heun", "euler"] = "heun",
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
        solver: the teacher's ODE step.
        distance: d(a, b) per example.

    The student and the target draw the same dropout masks (:func:`rewind_point`).

    Reference: Song et al. (2023), Eq. 7 (CD) and Eq. 10 (CT).
    """
    x_hi = x0 + append_dims(sigma_hi, x0.ndim).to(x0.dtype) * z
    with torch.no_grad():
        if teacher is None:
            x_lo = x0 + append_dims(sigma_lo, x0.ndim).to(x0.dtype) * z
        else:
            x_lo = ode_step(teacher, x_hi, sigma_hi, sigma_lo, solver)  # frozen: no dropout
        rewind = rewind_point(x0.device)
        aim = target(x_lo, sigma_lo)
    rewind()
    return distance(student(x_hi, sigma_hi), aim)


class ConsistencyModel(DiffusionModule):
    """Consistency distillation (``teacher_ckpt`` set) or consistency training (iCT).

    The net's denoiser is the consistency function (:class:`ConsistencyPreconditioning`), so
    every sampler and command treats the model like any other; its own sampler is multistep
    consistency sampling, 1 step by default.

    Each training example draws an interval n of the N levels σ_1 < … < σ_N
    (:func:`karras_levels`), z ~ N(0, I), and pays λ(σ_n) d(f_θ(x̃_{n+1}, σ_{n+1}),
    f_θ⁻(x̃_n, σ_n)) (:func:`consistency_loss`). The defaults are iCT's recipe (Song & Dhariwal
    2023): the curriculum N(k) of :func:`ict_num_scales`, log-normal interval probabilities
    (:func:`lognormal_level_probs`), λ = 1/(σ_{n+1} − σ_n), the pseudo-Huber distance with
    c = 0.00054 √d, and θ⁻ = θ without gradient. Song et al. (2023)'s distillation uses N = 18
    (``num_scales``), uniform intervals, λ = 1, Heun, and an EMA target (``target_ema`` μ = 0.95).

    ECT (``level_sampling: ect``; Geng et al. 2024) is consistency training without levels: the
    upper level t is log-normal (P_mean, P_std), the lower r = :func:`ect_lower_level` of the
    current stage, which advances every ``ect_stage_steps``; with ``init_ckpt`` naming a diffusion
    model on EDM's preconditioning (configs/*/edm.yaml) the student starts from it and training
    is a tuning run.

    Distillation reads the teacher, any checkpoint ``diffusion-pl fit`` wrote, through its own
    denoiser on its own path, with the weights its checkpoint stores as ``state_dict`` (the EMA
    when it trained with one), frozen and in eval mode. It is loaded when fitting (or validating)
    starts, is not part of this module's weights, optimizer or checkpoint, and its noise range
    σ̃ ∈ [σ̃(t_min), σ̃(t_max)] must cover [sigma_min, sigma_max].

    Args:
        net: the network F (sees c_in x̃ and c_noise = ¼ ln σ̃).
        data_shape: one example's shape (linked from the data module).
        path: the student's noise path (default EDM's ``VEPath(0.002, 80)``).
        parameterization: what the net predicts inside the consistency function
            (:class:`ConsistencyPreconditioning`'s ``base``); None: EDM's F (Song et al.). A
            student started from a diffusion model (``init_from_teacher``, ``init_ckpt``) takes
            that model's path and parameterization, e.g. ``LinearPath`` and
            ``VelocityPrediction`` for a rectified flow, so it starts as its denoiser.
        sigma_data: σ_d of the preconditioning (0.5 for images in [−1, 1]).
        sigma_min: σ_min, where f_θ is the identity, and the lowest level.
        sigma_max: the highest level.
        rho: ρ of the levels (7).
        teacher_ckpt: checkpoint of the teacher (distillation); None: consistency training.
        solver: the teacher's ODE step between adjacent levels, ``heun`` or ``euler``.
        init_from_teacher: start the student's net from the teacher's net weights (Song et al.
            do; needs the same net, path and parameterization), instead of from the
            initialisation.
        num_scales: a fixed number of levels N (CD: 18); None: iCT's curriculum.
        curriculum_s0: s0 of the curriculum (10).
        curriculum_s1: s1 of the curriculum (1280).
        curriculum_steps: K of the curriculum; None: the trainer's ``max_steps``.
        init_ckpt: a checkpoint (any ``fit`` run, its stored weights) whose net starts the
            student's, with no distillation (ECT tunes a diffusion model); it needs the same
            net, path and parameterization.
        level_sampling: ``lognormal`` (iCT) or ``uniform`` (CD) over the N − 1 intervals, or
            ``ect``: continuous log-normal t and r from ECT's mapping (no levels).
        p_mean: P_mean of the log-normal (−1.1).
        p_std: P_std of the log-normal (2.0).
        ect_q: ECT's q, the factor t − r shrinks by per stage (2).
        ect_k: ECT's k (8).
        ect_b: ECT's b (1).
        ect_stage_steps: training steps per ECT stage; None: an eighth of K (as the curriculum:
            ``curriculum_steps`` or the trainer's ``max_steps``).
        loss_weighting: ``ict`` λ = 1/(σ_{n+1} − σ_n), or ``uniform`` λ = 1.
        distance: ``pseudo_huber`` (iCT) or ``l2`` (squared Euclidean ‖a − b‖²).
        huber_c: c of the pseudo-Huber distance; None: 0.00054 √d (d = numel of an example).
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
        teacher_ckpt: str | None = None,
        solver: Literal["heun", "euler"] = "heun",
        init_from_teacher: bool = False,
        init_ckpt: str | None = None,
        num_scales: int | None = None,
        curriculum_s0: int = 10,
        curriculum_s1: int = 1280,
        curriculum_steps: int | None = None,
        level_sampling: Literal["lognormal", "uniform", "ect"] = "lognormal",
        p_mean: float = -1.1,
        p_std: float = 2.0,
        ect_q: float = 2.0,
        ect_k: float = 8.0,
        ect_b: float = 1.0,
        ect_stage_steps: int | None = None,
        loss_weighting: Literal["ict", "uniform"] = "ict",
        distance: Literal["pseudo_huber", "l2"] = "pseudo_huber",
        huber_c: float | None = None,
        target_ema: float = 0.0,
        sampler: Sampler = lazy_instance(ConsistencySampler, steps=1),
        **kwargs,
    ) -> None:
        if num_scales is not None and num_scales < 2:
            raise ValueError(f"num_scales must be >= 2 or null (the curriculum), got {num_scales}")
        if not 1 <= curriculum_s0 <= curriculum_s1:
            raise ValueError(
                f"need 1 <= curriculum_s0 <= curriculum_s1, got {curriculum_s0}, {curriculum_s1}"
            )
        if curriculum_steps is not None and curriculum_steps < 1:
            raise ValueError(f"curriculum_steps must be >= 1 or null, got {curriculum_steps}")
        if not 0 <= target_ema < 1:
            raise ValueError(f"target_ema must be in [0, 1), got {target_ema}")
        if huber_c is not None and huber_c <= 0:
            raise ValueError(f"huber_c must be > 0 or null (0.00054 sqrt(d)), got {huber_c}")
        if p_std <= 0:
            raise ValueError(f"p_std must be > 0, got {p_std}")
        if init_from_teacher and teacher_ckpt is None:
            raise ValueError("init_from_teacher needs a teacher_ckpt to copy the weights from")
        if init_from_teacher and init_ckpt is not None:
            raise ValueError(
                f"init_from_teacher and init_ckpt ({init_ckpt}) both name the student's start: "
                "keep one"
            )
        if ect_q <= 1:
            raise ValueError(f"ect_q must be > 1 (t - r shrinks by it each stage), got {ect_q}")
        if ect_stage_steps is not None and ect_stage_steps < 1:
            raise ValueError(f"ect_stage_steps must be >= 1 or null, got {ect_stage_steps}")
        for key, mine in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            theirs = sampler.arguments().get(key, mine)  # (a lazy default too)
            if isinstance(sampler, ConsistencySampler) and theirs != mine:
                raise ValueError(
                    f"the consistency sampler's {key}={theirs} differs from the model's "
                    f"{key}={mine}: set the sampler's {key}: {mine}"
                )
        precond = ConsistencyPreconditioning(sigma_data, sigma_min, sigma_max, parameterization)
        super().__init__(net, data_shape, path, precond, None, None, sampler, **kwargs)
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.teacher_ckpt, self.solver = teacher_ckpt, solver
        self.init_from_teacher, self.init_ckpt = init_from_teacher, init_ckpt
        self.num_scales = num_scales
        self.curriculum = (curriculum_s0, curriculum_s1, curriculum_steps)
        self.level_sampling, self.p_mean, self.p_std = level_sampling, p_mean, p_std
        self.ect = (ect_q, ect_k, ect_b, ect_stage_steps)
        self.loss_weighting, self.distance, self.target_ema = loss_weighting, distance, target_ema
        self.huber_c = 0.00054 * math.sqrt(math.prod(data_shape)) if huber_c is None else huber_c
        self.target_net: nn.Module | None = copy_frozen(net) if target_ema > 0 else None
        self.__dict__["teacher"] = None  # not a submodule: not saved, not optimized
        self._target_step = 0
        save_config(self)

    # --- the teacher ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Load the teacher (distillation) before fitting or validating; check that it fits.

        When fitting starts, copy ``init_ckpt``'s net into the student (a resumed run then
        restores its own weights over it)."""
        if self.init_ckpt is not None and stage == "fit":
            self.start_from(self.load_diffusion_model(self.init_ckpt, "init_ckpt"), "init_ckpt")
        if self.teacher_ckpt is None or self.teacher is not None:
            return
        teacher = self.load_diffusion_model(self.teacher_ckpt, "teacher_ckpt")
        check_teacher_range(teacher.path, self.sigma_min, self.sigma_max)
        teacher.eval().requires_grad_(False)
        if self.init_from_teacher:
            self.start_from(teacher, "init_from_teacher")
        self.__dict__["teacher"] = teacher

    def load_diffusion_model(self, ckpt: str, key: str) -> DiffusionModule:
        """The diffusion model ``fit`` wrote to ``ckpt`` (named by the argument ``key``), on
        this model's data shape."""
        from diffusion_pl.checkpoints import load_module  # checkpoints imports formulations

        model = load_module(ckpt)
        if not isinstance(model, DiffusionModule):
            raise ValueError(
                f"{key} {ckpt} holds a {type(model).__name__}, not a diffusion model: pass a "
                "checkpoint that `diffusion-pl fit` wrote for one"
            )
        if tuple(model.data_shape) != self.data_shape:
            raise ValueError(
                f"{key} {ckpt} was trained on data of shape {tuple(model.data_shape)} but this "
                f"model's data have shape {self.data_shape}: use a model of the same data"
            )
        return model

    def start_from(self, model: DiffusionModule, key: str) -> None:
        """Start the student (and its target network) from ``model``'s net, after checking
        that the student reads that net as ``model`` does (:func:`check_same_reading`)."""
        self.copy_net_from(model.net)
        check_same_reading(self, model, key)

    def copy_net_from(self, other: nn.Module) -> None:
        """Load another net's weights (the teacher's, or ``init_ckpt``'s) into the student and
        its target network."""
        mine, theirs = self.net.state_dict(), other.state_dict()
        shapes = {k: tuple(v.shape) for k, v in mine.items()}
        if shapes != {k: tuple(v.shape) for k, v in theirs.items()}:
            raise ValueError(
                f"init_from_teacher / init_ckpt: that net ({type(other).__name__}) differs "
                f"from the student's ({type(self.net).__name__}) in its layers or their shapes: "
                "give the student the same net config, or start it from its initialisation"
            )
        self.net.load_state_dict(theirs)
        if self.target_net is not None:
            self.target_net.load_state_dict(theirs)

    def teacher_denoiser(self, y: Tensor | None, device: torch.device) -> ScaledDenoiser:
        """The teacher's denoiser in scaled space, on ``device`` (labels if it is conditional)."""
        teacher = self.teacher
        if teacher.device != device:
            teacher.to(device)
        labels = y if teacher.num_classes is not None else None
        return scaled_denoiser(teacher.denoiser(labels), teacher.path)

    # --- levels, distance, weights ----------------------------------------------------------
    def curriculum_length(self) -> int:
        """K: ``curriculum_steps``, else the trainer's ``max_steps``."""
        total = self.curriculum[2]
        if total is None:
            trainer = self._trainer
            if trainer is None or trainer.max_steps is None or trainer.max_steps < 1:
                raise ValueError(
                    "the iCT curriculum and ECT's stages need the training length K: set "
                    "curriculum_steps, or trainer.max_steps (or a fixed num_scales, or "
                    "ect_stage_steps)"
                )
            total = trainer.max_steps
        return total

    def current_num_scales(self) -> int:
        """N: ``num_scales``, or the curriculum's N(k) at the current step."""
        if self.num_scales is not None:
            return self.num_scales
        s0, s1, _ = self.curriculum
        return ict_num_scales(self.global_step, self.curriculum_length(), s0, s1)

    def ect_stage(self) -> int:
        """ECT's stage at the current step: ⌊k / ect_stage_steps⌋ (default K/8 steps each)."""
        per_stage = self.ect[3] or max(self.curriculum_length() // 8, 1)
        return self.global_step // per_stage

    def draw_levels(
        self, n: int, generator: Generators, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """``n`` pairs of levels σ_lo < σ_hi (float64, on ``device``): an interval of the N
        levels, or ECT's log-normal t (at least 2 σ_min, so the pair is apart) and r(t).
        Each example's pair depends on its own draw alone."""
        if self.level_sampling != "ect":
            sigmas = self.levels()
            i = self.draw_intervals(sigmas, n, generator, device)
            return sigmas[i].to(device), sigmas[i + 1].to(device)
        z = randn((n,), generator, device=device, dtype=torch.float64)
        hi = (self.p_mean + self.p_std * z).exp().clamp(2 * self.sigma_min, self.sigma_max)
        q, k, b, _ = self.ect
        lo = ect_lower_level(hi, self.ect_stage(), q, k, b).clamp_min(self.sigma_min)
        return lo.to(device), hi.to(device)

    def levels(self) -> Tensor:
        """The current N levels σ_1 < … < σ_N, float64 on the CPU."""
        return karras_levels(self.sigma_min, self.sigma_max, self.current_num_scales(), self.rho)

    def draw_intervals(
        self, sigmas: Tensor, n: int, generator: Generators, device: torch.device | str
    ) -> Tensor:
        """``n`` interval indices in [0, N − 2], log-normal or uniform, on the CPU.

        Inverse-CDF sampling: index i for u ~ U[0, 1) in [F_{i−1}, F_i), F the cumulative
        probabilities, so each example's index depends on its own uniform draw alone.
        """
        if self.level_sampling == "uniform":
            probs = torch.full((len(sigmas) - 1,), 1.0 / (len(sigmas) - 1), dtype=torch.float64)
        else:
            probs = lognormal_level_probs(sigmas, self.p_mean, self.p_std)
        u = rand((n,), generator, device=device, dtype=torch.float64).cpu()
        return torch.searchsorted(probs.cumsum(0), u, right=True).clamp(max=len(probs) - 1)

    def distance_fn(self, a: Tensor, b: Tensor) -> Tensor:
        """d(a, b) per example: pseudo-Huber with c = ``huber_c``, or ‖a − b‖²."""
        if self.distance == "l2":
            return (a - b).flatten(1).pow(2).sum(1)
        return pseudo_huber(a, b, self.huber_c)

    def consistency_fn(self, net: nn.Module, y: Tensor | None) -> ConsistencyFn:
        """f(x̃, σ̃ [B]) of ``net`` on this model's path: the denoiser's x̂_0 (float32+)."""
        denoiser = scaled_denoiser(Denoiser(net, self.path, self.parameterization, y), self.path)
        return lambda x, sigma: denoiser(x, sigma).x0

    # --- the loss ---------------------------------------------------------------------------
    def loss(
        self,
        x0: Tensor,
        y: Tensor | None = None,
        generator: Generators = None,
        eps: Tensor | None = None,
    ) -> Tensor:
        """Per-example loss ``[B]``: λ(σ_n) d(f_θ(x̃_{n+1}, σ_{n+1}), f_θ⁻(x̃_n, σ_n)).

        Args:
            x0: data ``[B, ...]``.
            y: labels ``[B]`` (class-conditional nets; dropped with ``p_uncond``).
            generator: source of the label dropout, the levels and z, in that order.
            eps: the noise z; drawn when None.
        """
        y = self.class_labels(self.drop_labels(y, generator))
        dtype = torch.promote_types(x0.dtype, torch.float32)
        x0 = x0.to(dtype)
        sigma_lo, sigma_hi = self.draw_levels(x0.shape[0], generator, x0.device)
        if eps is None:
            eps = randn(x0.shape, generator, device=x0.device, dtype=dtype)
        if self.teacher_ckpt is not None and self.teacher is None:
            raise ValueError("the teacher is loaded by setup(): call it before the loss")
        target_net = self.net if self.target_net is None else self.target_net
        teacher = None if self.teacher_ckpt is None else self.teacher_denoiser(y, x0.device)
        loss = consistency_loss(
            self.consistency_fn(self.net, y), self.consistency_fn(target_net, y), x0, eps,
            sigma_lo, sigma_hi, teacher=teacher, solver=self.solver, distance=self.distance_fn,
        )  # fmt: skip
        if self.loss_weighting == "ict":
            loss = loss / (sigma_hi - sigma_lo).to(dtype)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.level_sampling == "ect":
            self.log("train/ect_stage", float(self.ect_stage()))
        else:
            self.log("train/num_scales", float(self.current_num_scales()))
        return loss

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


@torch.no_grad()
def check_same_reading(student: ConsistencyModel, model: DiffusionModule, key: str) -> None:
    """Fail unless ``student``'s path and base parameterization read ``model``'s net as
    ``model`` does: x̂_0 at five levels σ̃ from σ_min to σ_max, on the same random x̃ (for a
    consistency model, the D under its consistency function).

    A student copied from a net it reads differently (a velocity net read as EDM's F) starts
    from noise-like outputs, not from the model's denoiser (benchmarks/RESULTS.md).
    """
    levels = torch.logspace(
        math.log10(student.sigma_min), math.log10(student.sigma_max), 5, dtype=torch.float64
    )
    net = model.net
    weight = next(net.parameters())
    scale = torch.sqrt(levels**2 + student.parameterization.sigma_data**2)
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
        base = Denoiser(net, student.path, student.parameterization.base, labels)
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
            f"{key}: the student reads that {name(model)}'s net differently (x̂_0 differs by "
            f"up to {worst:.3g}): the student's path {name(student.path)} and parameterization "
            f"{name(student.parameterization.base)} must be the model's, {name(model.path)} and "
            f"{name(reading)} (set the model's path: and parameterization: to them; for an EDM "
            "model: the defaults, its sigma_data), or start the student from its initialisation"
        )


def name(obj: object) -> str:
    """The class name of ``obj``, a jsonargparse lazy default's too."""
    return type(obj).__name__.removeprefix("LazyInstance_")


def check_teacher_range(path: NoisePath, sigma_min: float, sigma_max: float) -> None:
    """Fail unless the teacher's path reaches every level in [σ_min, σ_max] (σ̃ = σ/α)."""
    ends = torch.tensor([path.t_min, path.t_max], dtype=torch.float64)
    with torch.no_grad():
        lo, hi = torch.exp(-0.5 * path.log_snr(ends)).tolist()
    if lo > sigma_min * (1 + 1e-9) or hi < sigma_max * (1 - 1e-9):
        raise ValueError(
            f"the teacher's {type(path).__name__} covers sigma/alpha in [{lo:.4g}, {hi:.4g}], "
            f"but the student's levels span [{sigma_min:g}, {sigma_max:g}]: set the model's "
            f"sigma_min >= {lo:.4g} and sigma_max <= {hi:.4g} (and the sampler's sigma_min)"
        )
