"""Guided sampling as denoisers: classifier-free guidance, classifier guidance, autoguidance.

All three wrap the ``denoiser(x, t) -> Prediction`` seam, so every sampler (ODE, SDE, ancestral,
Langevin, multistep, consistency) is guided without knowing it: each reads its score or velocity
from the guided pair. (The mean-flow sampler reads an average velocity u(x, r, t) besides the
pair; no guided denoiser gives one, so it refuses them.)

Classifier-free guidance (Ho & Salimans, 2022, Eq. 6) evaluates one class-conditional network
with the label y and with the null label ∅ and extrapolates:

    ε̃ = ε̂(x, ∅) + w (ε̂(x, y) − ε̂(x, ∅)),    x̃_0 = x̂_0(x, ∅) + w (x̂_0(x, y) − x̂_0(x, ∅)).

Here w = 1 is the conditional model and w = 0 the unconditional one; Ho & Salimans write
(1 + w′) ε̂(x, y) − w′ ε̂(x, ∅), so w = 1 + w′. The two weights sum to one, so the pair still
explains x (x = α x̃_0 + σ ε̃), and the guided score is
−ε̃ / σ = ∇ log p_t(x) + w ∇ log p_t(y | x): the sampler follows p_t(x) p_t(y | x)^w. Every
parameterization is affine in the network output at fixed (x, t), so mixing the pair is the
same as mixing raw outputs; both passes run as one forward call on the batch [x; x].

Classifier guidance (Dhariwal & Nichol, 2021, Sec. 4, Eq. 12–14) adds the gradient of a noisy
classifier p_t(y | x) to the score of any model, at scale λ:

    s̃ = s + λ ∇_x log p_t(y | x),   i.e.  ε̃ = ε̂ − λ σ_t ∇_x log p_t(y | x),
    x̃_0 = (x − σ_t ε̃) / α_t = x̂_0 + λ (σ_t² / α_t) ∇_x log p_t(y | x).

λ = 1 with the exact classifier turns the unconditional score into the conditional one (Bayes:
∇ log p_t(x | y) = ∇ log p_t(x) + ∇ log p_t(y | x)); λ = 0 leaves the model unchanged. Where
α_t = 0, x_t carries no information about y, so the gradient and its x̂_0 term are zero.

Autoguidance (Karras et al., 2024, "Guiding a Diffusion Model with a Bad Version of Itself",
Sec. 3) extrapolates from a weaker model of the same task, the guide D_0 (a smaller net, or one
trained for less), towards the main model D_1:

    D_w(x; t) = D_0(x; t) + w (D_1(x; t) − D_0(x; t)),   the same for ε̂,

with both evaluated on the same (x, t) and, for class-conditional models, the same label. w = 1
is the main model, w = 0 the guide, w > 1 moves away from the guide's errors. As for CFG the
weights sum to one, so the pair still explains x, and the guided score is
w ∇ log p_1,t(x) + (1 − w) ∇ log p_0,t(x). Along the probability-flow ODE this sends a Gaussian
N(μ, s² I) guided by N(μ, g² I) to N(μ, (s^w g^{1−w})² I) (docs/math.md, Sec. 8); the
per-mode spread of a mixture shrinks the same way when w > 1 and g > s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion_pl.compat import class_name
from diffusion_pl.denoiser import Denoiser, batch_times
from diffusion_pl.nets.protocol import DenoiserNet
from diffusion_pl.parameterization import Parameterization, Prediction
from diffusion_pl.paths import NoisePath

__all__ = [
    "Autoguidance",
    "ClassifierFn",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "check_class_labels",
    "check_same_path",
    "classifier_gradient",
]

ClassifierFn = Callable[[Tensor, Tensor], Tensor]
"""``classifier(x [B, ...], t [B]) -> logits [B, K]`` of p_t(y | x) (up to a per-row constant)."""


def check_class_labels(class_labels: Tensor, n: int, num_classes: int) -> Tensor:
    """Return ``class_labels`` as int64 ``[n]``, refusing a wrong count or a label ∉ [0, K).

    Args:
        class_labels: one label per sample.
        n: number of samples.
        num_classes: K, the number of classes of the model (or classifier) that conditions.
    """
    labels = torch.as_tensor(class_labels).reshape(-1)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"class labels must be integers, got dtype {labels.dtype}")
    if labels.numel() != n:
        raise ValueError(f"need one class label per sample: {n} samples, {labels.numel()} labels")
    bad = labels[(labels < 0) | (labels >= num_classes)].unique().tolist()
    if bad:
        raise ValueError(
            f"class labels {bad} are out of range: the model has {num_classes} classes, "
            f"labels 0 … {num_classes - 1}"
        )
    return labels.long()


def check_same_path(
    model_path: NoisePath,
    other_path: NoisePath,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    model: str = "the model",
    other: str = "the classifier",
) -> None:
    """Refuse a classifier (or guide) trained on a path with other α_t, σ_t than the model's.

    The classifier models p_t(y | x_t) for x_t = α_t x_0 + σ_t ε, and a guide's denoiser
    E[x_0 | x_t] too; guiding a model on another path would query it at noise levels it has not
    seen. Compared on 65 times in [0, 1], made on the model's ``device`` in its ``dtype`` (a
    learned path's parameters live there).

    Args:
        model_path: the path the model samples on.
        other_path: the path of the classifier or guide.
        device: where to evaluate both paths.
        dtype: in which dtype.
        model: how the error names the model, e.g. ``"the model RUN.ckpt"``.
        other: how it names the other, e.g. ``"the guide EARLY.ckpt"``.
    """
    t = torch.linspace(0, 1, 65, dtype=dtype, device=device)
    for name in ("alpha", "sigma"):
        a, b = getattr(model_path, name)(t), getattr(other_path, name)(t)
        if not torch.allclose(a, b, rtol=1e-5, atol=1e-6):
            raise ValueError(
                f"{other} was trained on {class_name(other_path)} but {model} "
                f"samples on {class_name(model_path)} ({name}_t differs); train {other} "
                "with the model's path"
            )


def classifier_gradient(classifier: ClassifierFn, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """∇_x log p_t(y | x) ``[B, ...]`` by autograd through log_softmax(classifier(x, t))[y].

    Runs with gradients enabled even inside the samplers' ``no_grad``; rows are independent, so
    the gradient of the batch sum is each row's own gradient.
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
        selected = log_probs.gather(-1, y.to(log_probs.device)[:, None]).sum()
        (grad,) = torch.autograd.grad(selected, x_in)
    return grad.to(x.dtype)


def _mix(base: Tensor, target: Tensor, scale: float | Tensor) -> Tensor:
    """base + w (target − base): CFG's ∅ → y, autoguidance's guide → main model."""
    return base + scale * (target - base)


class ClassifierFreeGuidance(Denoiser):
    """A :class:`Denoiser` that mixes the conditional and unconditional pair with scale w.

    One network call per evaluation, on the batch [x; x] with labels [y; ∅] (∅ = the net's
    ``num_classes``, its null row); ``nfe`` counts those calls. See the module docstring.

    Args:
        net: a class-conditional net ``net(x, noise_labels, class_labels)`` with ``num_classes``.
        path: the noise path the net was trained on.
        parameterization: how to read the net's output.
        class_labels: ``[B]`` int64 in [0, num_classes).
        scale: w; 1 conditional, 0 unconditional, > 1 sharper; or one w per example, shaped to
            broadcast against x (``[B, 1, …]``: LCM's teacher draws ω per example).

    Reference: Ho & Salimans (2022), "Classifier-Free Diffusion Guidance", Eq. 6, Algorithm 2.
    """

    def __init__(
        self,
        net: DenoiserNet,
        path: NoisePath,
        parameterization: Parameterization,
        class_labels: Tensor,
        scale: float | Tensor,
    ) -> None:
        null = net.num_classes
        if null is None:
            raise ValueError(
                "classifier-free guidance needs a class-conditional net (num_classes set, "
                "trained with p_uncond > 0); this one is unconditional"
            )
        labels = torch.cat([class_labels, torch.full_like(class_labels, null)])
        super().__init__(net, path, parameterization, labels)
        self.scale = scale

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        t = batch_times(t, x)
        both = super().__call__(torch.cat([x, x]), torch.cat([t, t]))
        (x0_cond, x0_uncond), (eps_cond, eps_uncond) = both.x0.chunk(2), both.eps.chunk(2)
        return Prediction(
            x0=_mix(x0_uncond, x0_cond, self.scale), eps=_mix(eps_uncond, eps_cond, self.scale)
        )


class ClassifierGuidance:
    """Any denoiser plus λ ∇ log p_t(y | x) of a noisy classifier on its score.

    Args:
        denoiser: ``(x, t) -> Prediction`` of the model to guide.
        classifier: ``(x, t) -> logits [B, K]`` on the same path.
        path: the noise path of both.
        class_labels: ``[B]`` int64 in [0, K).
        scale: λ; 1 with the exact classifier gives p_t(x | y), 0 leaves the model as is.

    Reference: Dhariwal & Nichol (2021), "Diffusion Models Beat GANs on Image Synthesis",
    Sec. 4.1–4.2, Algorithms 1–2.
    """

    def __init__(
        self,
        denoiser: Callable[[Tensor, Tensor | float], Prediction],
        classifier: ClassifierFn,
        path: NoisePath,
        class_labels: Tensor,
        scale: float,
    ) -> None:
        self.denoiser, self.classifier, self.path = denoiser, classifier, path
        self.class_labels, self.scale = class_labels, scale

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        t = batch_times(t, x)
        pred = self.denoiser(x, t)
        grad = classifier_gradient(self.classifier, x, t, self.class_labels).to(pred.eps.dtype)
        c = self.path.coefficients(t.to(pred.eps.dtype), x.ndim)
        x0_coef = torch.where(c.alpha > 0, c.sigma**2 / c.alpha, torch.zeros_like(c.alpha))
        return Prediction(
            x0=pred.x0 + self.scale * x0_coef * grad, eps=pred.eps - self.scale * c.sigma * grad
        )


class Autoguidance:
    """The main model's denoiser guided by a weaker one's: D_0 + w (D_1 − D_0) on x̂_0 and ε̂.

    Two evaluations per call, one of each model, on the same (x, t) (and each model's own
    labels, the same for both when they are class-conditional). Check the pair with
    :func:`~diffusion_pl.formulations.guided.check_guide` first.

    Args:
        main: ``(x, t) -> Prediction`` of the main model D_1.
        guide: ``(x, t) -> Prediction`` of the guide D_0, on the same path.
        scale: w; 1 the main model, 0 the guide, > 1 guided (Karras et al.'s ImageNet-512
            results use w ≈ 2).

    Reference: Karras, Aittala, Kynkäänniemi, Lehtinen, Aila & Laine (2024), "Guiding a Diffusion
    Model with a Bad Version of Itself", Sec. 3 (the guided denoiser and the choice of guide).
    """

    def __init__(
        self,
        main: Callable[[Tensor, Tensor | float], Prediction],
        guide: Callable[[Tensor, Tensor | float], Prediction],
        scale: float,
    ) -> None:
        self.main, self.guide, self.scale = main, guide, scale

    def __call__(self, x: Tensor, t: Tensor | float) -> Prediction:
        t = batch_times(t, x)
        main, guide = self.main(x, t), self.guide(x, t)
        return Prediction(
            x0=_mix(guide.x0, main.x0, self.scale), eps=_mix(guide.eps, main.eps, self.scale)
        )
