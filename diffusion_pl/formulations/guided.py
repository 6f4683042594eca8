"""How a diffusion module picks the denoiser it samples with: labels, CFG, classifier, guide."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion_pl.compat import class_name
from diffusion_pl.consistency_function import ConsistencyPreconditioning
from diffusion_pl.formulations.classifier import NoisyClassifier
from diffusion_pl.guidance import (
    Autoguidance,
    ClassifierGuidance,
    check_class_labels,
    check_same_path,
)
from diffusion_pl.lcm import LCMPreconditioning
from diffusion_pl.samplers import DenoiserFn

__all__ = ["GuidedSampling", "check_guide"]


class GuidedSampling:
    """The guidance checks and denoisers of :meth:`DiffusionModule.sample`, a mixin of it.

    It reads the module's ``denoiser``, ``class_labels``, ``num_classes``, ``guidance_scale``,
    ``path``, ``device`` and ``dtype``.

    Reference: Ho & Salimans (2022), "Classifier-Free Diffusion Guidance"; Dhariwal & Nichol
    (2021), Sec. 4 (classifier guidance); Karras et al. (2024), "Guiding a Diffusion Model
    with a Bad Version of Itself" (autoguidance).
    """

    def guided_denoiser(
        self,
        n: int,
        class_labels: Tensor | None,
        guidance_scale: float | None,
        classifier: NoisyClassifier | None,
        classifier_scale: float,
        guide: GuidedSampling | None = None,
    ) -> DenoiserFn:
        """The denoiser :meth:`sample` uses for ``n`` samples; arguments as there."""
        if guide is not None:
            return self.autoguided_denoiser(n, class_labels, guidance_scale, classifier, guide)
        if class_labels is None:
            if guidance_scale is not None or classifier is not None:
                raise ValueError(
                    "guidance_scale and classifier steer samples towards class labels: pass "
                    "class_labels too, or neither for unconditional samples (autoguidance, "
                    "with a guide, needs no labels)"
                )
            return self.denoiser()
        if guidance_scale is not None and self.num_classes is None:
            raise ValueError(
                f"guidance_scale={guidance_scale} is classifier-free guidance, which needs a "
                "class-conditional net; this one is unconditional (use classifier_scale, or "
                "pass a guide for autoguidance)"
            )
        labels = self.checked_labels(n, class_labels, classifier)
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        denoiser = self.denoiser(self.class_labels(labels), scale)
        if classifier is None:
            return denoiser
        dtype = torch.promote_types(self.dtype, torch.float32)
        check_same_path(self.path, classifier.path, device=self.device, dtype=dtype)
        return ClassifierGuidance(denoiser, classifier, self.path, labels, classifier_scale)

    def checked_labels(
        self, n: int, class_labels: Tensor, classifier: NoisyClassifier | None = None
    ) -> Tensor:
        """``class_labels`` as int64 ``[n]`` on the model's device, checked against the classes
        of the net (or of the classifier, for classifier guidance)."""
        classes = self.num_classes if classifier is None else classifier.num_classes
        if classes is None:
            raise ValueError(
                f"this {type(self).__name__} is unconditional (its net has num_classes=None): "
                "class labels need a class-conditional net (set num_classes and train on labelled "
                "data) or a noisy classifier for classifier guidance"
            )
        if classifier is not None and self.num_classes not in (None, classes):
            raise ValueError(
                f"the classifier has {classes} classes but the model's net {self.num_classes}"
            )
        return check_class_labels(class_labels, n, classes).to(self.device)

    def autoguided_denoiser(
        self,
        n: int,
        class_labels: Tensor | None,
        guidance_scale: float | None,
        classifier: NoisyClassifier | None,
        guide: GuidedSampling,
    ) -> Autoguidance:
        """This model's denoiser guided by ``guide``'s at scale w = ``guidance_scale``.

        Both models see the same labels: the given ones (both class-conditional), or none (a
        class-conditional pair then sees ∅). Refuses a guide that does not fit
        (:func:`check_guide`), a missing w, and classifier guidance on
        top: one guidance at a time.
        """
        if classifier is not None:
            raise ValueError(
                "autoguidance (a guide) and classifier guidance (a classifier) cannot be "
                "combined: pass one of them"
            )
        if guidance_scale is None:
            raise ValueError(
                "autoguidance needs its scale w: pass guidance_scale (1 is this model alone, 0 "
                "the guide alone, > 1 guided; Karras et al. 2024 use about 2)"
            )
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale}")
        check_guide(self, guide)
        labels = None if class_labels is None else self.checked_labels(n, class_labels)
        return Autoguidance(self.denoiser(labels), guide.denoiser(labels), guidance_scale)


def check_guide(
    main: GuidedSampling,
    guide: GuidedSampling,
    *,
    model: str = "the model",
    other: str = "the guide",
) -> None:
    """Refuse a guide that cannot guide ``main`` by autoguidance, naming both.

    The guide must model the same thing as the main model, only worse (Karras et al., 2024,
    Sec. 3): the same data shape, the same noise path
    (:func:`~diffusion_pl.guidance.check_same_path`), the same
    conditioning (both unconditional, or both with the same number of classes: each sees the
    same label), and the same kind of x̂_0 (a consistency model's is the ODE's endpoint, not the
    posterior mean E[x_0 | x_t] of every other formulation, so the two do not mix).

    Args:
        main: the model to sample.
        guide: the weaker model of the same task.
        model: how errors name the main model (e.g. its checkpoint).
        other: how errors name the guide.
    """
    if tuple(guide.data_shape) != tuple(main.data_shape):
        raise ValueError(
            f"{other} was trained on data of shape {tuple(guide.data_shape)} but {model} on "
            f"{tuple(main.data_shape)}: a guide must model the same data (an earlier checkpoint "
            "of the same run, or a smaller net trained on the same data)"
        )
    dtype = torch.promote_types(main.dtype, torch.float32)
    check_same_path(
        main.path, guide.path, device=main.device, dtype=dtype, model=model, other=other
    )
    if guide.num_classes != main.num_classes:

        def conditioning(k: int | None) -> str:
            return "unconditional" if k is None else f"conditional on {k} classes"

        raise ValueError(
            f"{other} is {conditioning(guide.num_classes)} but {model} is "
            f"{conditioning(main.num_classes)}: autoguidance evaluates both with the same label, "
            "so the guide needs the main model's conditioning"
        )
    consistency = (ConsistencyPreconditioning, LCMPreconditioning)
    kinds = [isinstance(m.parameterization, consistency) for m in (main, guide)]
    if kinds[0] != kinds[1]:
        names = [f"{n} ({class_name(m)})" for n, m in ((model, main), (other, guide))]
        consistency, diffusion = names if kinds[0] else names[::-1]
        raise ValueError(
            f"{consistency} is a consistency model, whose x0 is the end of the ODE, but "
            f"{diffusion} predicts the posterior mean E[x0 | x_t]: autoguidance mixes two "
            "models of the same kind; guide a consistency model with another one"
        )
