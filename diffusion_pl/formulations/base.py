"""The one LightningModule every formulation is: an objective run on a net, and sampling.

A formulation is a noise path + a parameterization + a training objective
(:mod:`diffusion_pl.objectives`) + a default sampler, each a small class chosen by
``class_path``. The named formulations are presets of those choices; the training loop,
logging, optimizers and (guided) sampling live here and in :class:`GuidedSampling`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from diffusion_pl.compat import attached_trainer
from diffusion_pl.denoiser import Denoiser
from diffusion_pl.formulations.classifier import NoisyClassifier
from diffusion_pl.formulations.guided import GuidedSampling
from diffusion_pl.formulations.lora import LoRATraining
from diffusion_pl.formulations.optim import optimizer_config
from diffusion_pl.guidance import ClassifierFreeGuidance
from diffusion_pl.lora import LoRA
from diffusion_pl.nets.protocol import DenoiserNet
from diffusion_pl.objectives import Objective, Teacher, mean_flat
from diffusion_pl.parameterization import Parameterization
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import ExampleNoise, Generators, rand
from diffusion_pl.samplers import Sampler
from diffusion_pl.teleport import DataMoments

__all__ = ["DiffusionModule", "mean_flat"]


class DiffusionModule(GuidedSampling, LoRATraining, LightningModule):
    """Trains a net with an objective and samples it with a sampler.

    The named formulations are presets: they take ``net``, ``data_shape``, their own choices
    and ``sampler``, build the objective, and pass every other argument below
    (``optimizer``, ``lr_scheduler``, ``p_uncond``, ``guidance_scale``, ``clip_samples``,
    ``lora``, ``base_ckpt``) on to this class, where alone they are documented.

    Args:
        net: a :class:`~diffusion_pl.nets.protocol.DenoiserNet`, ``net(x, noise_labels [B],
            class_labels [B] | None) -> Tensor`` shaped as x, with ``num_classes`` and
            ``check_data_shape`` (``MLP``, ``UNet``).
        data_shape: one example's shape, e.g. ``(2,)`` or ``(1, 8, 8)`` (linked from the data).
        path: the noise path.
        parameterization: what the net predicts and sees (its noise label).
        objective: what training minimises, ``objective(self, x0, labels, generator, step,
            eps) -> [B]`` (:mod:`diffusion_pl.objectives`).
        sampler: the default sampler of :meth:`sample` (checked against ``path`` here).
        optimizer: optimizer factory ``params -> Optimizer`` (YAML ``class_path``).
        lr_scheduler: optional scheduler factory, stepped every optimizer step.
        p_uncond: probability of replacing a training label by the null label ∅ (the net's
            ``num_classes``), which trains the unconditional model for classifier-free
            guidance alongside the conditional one (Ho & Salimans, 2022: 0.1 or 0.2); needs a
            class-conditional net.
        guidance_scale: default classifier-free guidance scale w of :meth:`sample` when class
            labels are given: 1 conditional, 0 unconditional, > 1 sharper. (Autoguidance's w
            is given with its guide, to :meth:`sample` or to the FID and sample-grid
            callbacks, never read from here.)
        clip_samples: clip samples of images (``data_shape`` (C, H, W)) to [−1, 1]; False for
            autoencoder codes, which are not confined to it (linked from the data).
        lora: train LoRA adapters (rank, alpha, target modules, dropout) instead of the net,
            whose weights come from ``base_ckpt`` and stay frozen; the adapters alone are
            also written to ``adapters.pt`` at the end of the fit
            (:class:`~diffusion_pl.formulations.lora.LoRATraining`). Needs peft.
        base_ckpt: the base of ``lora``: a checkpoint whose net has the same layers, e.g.
            ``{class_path: diffusion_pl.checkpoints.Checkpoint, init_args: {path: BASE.ckpt}}``.
    """

    denoiser_type: ClassVar[type[Denoiser]] = Denoiser
    """The view of the net that :meth:`denoiser` returns when no guidance mixes two passes."""

    net_noise_labels: ClassVar[int] = 1
    """How many noise labels the formulation's net takes per example (MeanFlow's: 2)."""

    data_moments: DataMoments | None = None
    """The training data's mean and covariance, for samplers that start by the Gaussian
    teleport; measured where a command or callback samples with one
    (:func:`~diffusion_pl.teleport.attach_data_moments`), not saved with the weights."""

    likelihood_t_eps: ClassVar[float | None] = None
    """Where the formulation's paper starts the PF-ODE likelihood (``diffusion-pl likelihood``'s
    default ``--t_eps``); None where the paper reports none: the path's ``t_min`` is used."""

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        path: NoisePath,
        parameterization: Parameterization,
        objective: Objective,
        sampler: Sampler,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        p_uncond: float = 0.0,
        guidance_scale: float = 1.0,
        clip_samples: bool = True,
        lora: LoRA | None = None,
        base_ckpt: Teacher | None = None,
    ) -> None:
        if not isinstance(net, DenoiserNet):
            raise ValueError(
                f"{type(net).__name__} is not a DenoiserNet: a formulation's net needs "
                "num_classes (None if unconditional) and check_data_shape(shape), as MLP and "
                "UNet have (diffusion_pl.nets.protocol)"
            )
        if not 0 <= p_uncond <= 1:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
        if p_uncond > 0 and net.num_classes is None:
            raise ValueError(
                f"p_uncond={p_uncond} drops class labels, but the net is unconditional "
                "(num_classes=None): set the net's num_classes, or p_uncond: 0"
            )
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale}")
        net.check_data_shape(tuple(data_shape))  # fail before fit
        sampler.check(path)
        super().__init__()
        self.net: DenoiserNet = net
        self.data_shape = tuple(data_shape)
        self.path, self.parameterization = path, parameterization
        self.objective = objective
        self.sampler = sampler
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.p_uncond, self.guidance_scale = p_uncond, guidance_scale
        self.training_noise: ExampleNoise | None = None
        """Source of the next training batch's draws, set by the ``StepSeed`` callback before
        each batch (None: torch's global generator)."""
        self.clip_samples = clip_samples
        self.init_lora(lora, base_ckpt)

    @property
    def num_classes(self) -> int | None:
        """Number of classes K of a class-conditional net, None for an unconditional one."""
        return self.net.num_classes

    # --- the shared loss ------------------------------------------------------------------
    def class_labels(self, y: Tensor | None) -> Tensor | None:
        """Labels passed to the net: ``y`` for class-conditional nets, else None."""
        return y if self.num_classes is not None else None

    def drop_labels(self, y: Tensor | None, generator: Generators) -> Tensor | None:
        """``y`` with each label replaced by ∅ = ``num_classes`` with probability ``p_uncond``.

        Reference: Ho & Salimans (2022), "Classifier-Free Diffusion Guidance", Algorithm 1.
        """
        if y is None or self.p_uncond == 0:
            return y
        drop = rand(y.shape, generator, device=y.device) < self.p_uncond
        return torch.where(drop, self.num_classes, y)

    def loss(
        self,
        x0: Tensor,
        y: Tensor | None = None,
        generator: Generators = None,
        eps: Tensor | None = None,
    ) -> Tensor:
        """Per-example loss ``[B]`` of the objective at the current optimizer step.

        Args:
            x0: data ``[B, ...]``.
            y: labels ``[B]`` (used by class-conditional nets, dropped with ``p_uncond``).
            generator: source of every random draw of the loss (the objective says which).
            eps: noise coupled to ``x0`` (reflow); drawn independently when None.
        """
        return self.objective(self, x0, y, generator, self.global_step, eps)

    def batch_loss(self, batch: tuple[Tensor, Tensor], generator: Generators) -> Tensor:
        """Per-example loss ``[B]`` of a batch ``(x, y)``."""
        x0, y = batch
        return self.loss(x0, y, generator)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        # The mean over this micro-batch; Lightning divides it by the accumulated micro-batches
        # and DDP averages over the ranks, so with equal micro-batches (the DataModule's global
        # batch) the gradient is that of the mean over the global batch.
        loss = self.batch_loss(batch, self.training_noise).mean()
        self.log("train/loss", loss, prog_bar=True)
        for key, value in self.objective.metrics(self.global_step).items():
            self.log(key, value)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.held_out_loss("val", batch, batch_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """``diffusion-pl test``: the loss on the data module's test batches (its val split:
        the data sources have no other held-out split), logged as ``test/loss``."""
        return self.held_out_loss("test", batch, batch_idx)

    def held_out_loss(self, stage: str, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """The mean training loss of a held-out batch, logged as ``{stage}/loss``.

        A fixed generator per batch makes the loss comparable from one evaluation to the next.
        """
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self.batch_loss(batch, generator).mean()
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def setup(self, stage: str) -> None:
        """Tell the objective the run's length (the trainer's ``max_steps``; None without one);
        load the base of LoRA adapters (a resumed run restores its own weights over it)."""
        self.load_lora_base()
        trainer = attached_trainer(self)
        max_steps = None if trainer is None else trainer.max_steps
        self.objective.set_training_length(max_steps if max_steps and max_steps >= 1 else None)

    def configure_optimizers(self):
        return optimizer_config(
            self.trainable_parameters(), self.optimizer_factory, self.lr_scheduler_factory
        )

    # --- sampling -------------------------------------------------------------------------
    def denoiser(self, class_labels: Tensor | None = None, guidance_scale: float = 1.0) -> Denoiser:
        """The ``(x, t) -> Prediction`` view of the network that samplers consume.

        With class labels and w ∉ {0, 1}, classifier-free guidance at scale w (one forward call
        on the doubled batch); w = 1 is the conditional net alone, w = 0 the unconditional
        (null-label) net alone, each at half the cost of the doubled batch.
        """
        parts = (self.net, self.path, self.parameterization)
        if class_labels is None or guidance_scale == 1:
            return self.denoiser_type(*parts, class_labels)
        if guidance_scale == 0 and self.num_classes is not None:
            return self.denoiser_type(*parts, torch.full_like(class_labels, self.num_classes))
        return ClassifierFreeGuidance(*parts, class_labels, guidance_scale)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        sampler: Sampler | None = None,
        generator: Generators = None,
        progress: bool = False,
        class_labels: Tensor | None = None,
        guidance_scale: float | None = None,
        classifier: NoisyClassifier | None = None,
        classifier_scale: float = 1.0,
        guide: DiffusionModule | None = None,
    ) -> Tensor:
        """Draw ``n`` samples in data space ``[n, *data_shape]`` (images clipped to [−1, 1]
        unless ``clip_samples`` is off).

        Without class labels the samples are unconditional (a conditional net gets ∅).
        With a ``guide``, ``guidance_scale`` is autoguidance's w, not classifier-free guidance's.

        Args:
            n: number of samples (> 0).
            sampler: overrides the formulation's default sampler.
            generator: source of all randomness (prior and stochastic steps).
            progress: show a progress bar.
            class_labels: ``[n]`` labels in [0, K) to sample each class from.
            guidance_scale: classifier-free guidance scale w (default: the module's); needs a
                class-conditional net. With a ``guide``: autoguidance's w, required.
            classifier: a :class:`NoisyClassifier` (in eval mode) on this model's path, for
                classifier guidance.
            classifier_scale: λ, the scale of the classifier's gradient.
            guide: a weaker model of the same path, data and conditioning for autoguidance,
                D_guide + w (D_self − D_guide) (:class:`~diffusion_pl.guidance.Autoguidance`);
                moved to this model's device and dtype, sampled in eval mode.
        """
        if n <= 0:
            raise ValueError(f"number of samples must be > 0, got {n}")
        sampler = self.sampler if sampler is None else sampler
        if guide is not None:
            guide.to(device=self.device, dtype=self.dtype)
        denoiser = self.guided_denoiser(
            n, class_labels, guidance_scale, classifier, classifier_scale, guide
        )
        modes = [(m, m.training) for m in (self, guide) if m is not None]
        try:
            for module, _ in modes:
                module.eval()
            x = sampler(
                denoiser,
                self.path,
                (n, *self.data_shape),
                generator=generator,
                device=self.device,
                dtype=self.dtype,
                progress=progress,
                data_moments=self.data_moments,
            )
        finally:
            for module, training in modes:
                module.train(training)
        return x.clamp(-1, 1) if len(self.data_shape) == 3 and self.clip_samples else x
