"""The noisy classifier p_φ(y | x_t) that classifier guidance adds to a diffusion model's score."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from diffusion_pl.formulations.optim import optimizer_config
from diffusion_pl.hparams import save_config
from diffusion_pl.nets.protocol import ClassifierNet
from diffusion_pl.paths import NoisePath
from diffusion_pl.randomness import ExampleNoise, Generators, randn
from diffusion_pl.tensors import as_batch
from diffusion_pl.time_sampling import Uniform

__all__ = ["NoisyClassifier"]


class NoisyClassifier(LightningModule):
    """Cross-entropy training of p_φ(y | x_t) on x_t = α_t x_0 + σ_t ε, t ~ U(t_min, t_max).

    Trained on the same path as the model it will guide, it estimates p_t(y | x) at every
    noise level; ``DiffusionModule.sample(..., classifier=...)`` adds λ ∇_x log p_φ(y | x_t) to
    the model's score (see :mod:`diffusion_pl.guidance`). Validation logs ``val/loss``,
    ``val/acc`` at the drawn t, and ``val/acc_clean`` at t_min.

    Args:
        net: a :class:`~diffusion_pl.nets.protocol.ClassifierNet`, ``net(x, noise_labels [B])
            -> logits [B, K]`` with ``num_classes`` (``MLPClassifier``,
            ``UNetEncoderClassifier``); it sees t as its noise label.
        data_shape: one example's shape (linked from the data module).
        path: the noise path of the diffusion model to guide.
        optimizer: optimizer factory.
        lr_scheduler: optional LR scheduler factory, stepped per optimizer step.

    Reference: Dhariwal & Nichol (2021), "Diffusion Models Beat GANs on Image Synthesis",
    Sec. 4.1 (classifiers trained on noisy images x_t); Song et al. (2021), "Score-Based
    Generative Modeling through SDEs", Sec. 5 (a time-dependent classifier for any SDE).
    """

    def __init__(
        self,
        net: nn.Module,
        data_shape: tuple[int, ...],
        path: NoisePath,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if not isinstance(net, ClassifierNet) or net.num_classes is None:
            raise ValueError(
                f"{type(net).__name__} has no num_classes: a classifier net needs one "
                "(e.g. MLPClassifier, UNetEncoderClassifier; see diffusion_pl.nets.protocol)"
            )
        super().__init__()
        self.net, self.data_shape, self.path = net, tuple(data_shape), path
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.training_noise: ExampleNoise | None = None  # set by StepSeed, as DiffusionModule's
        save_config(self)

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return self.net.num_classes

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Logits ``[B, K]`` of p_φ(y | x_t) at times t (``[B]`` or one value), in float32."""
        t = as_batch(t, x.shape[0], x)
        dtype = next(self.net.parameters()).dtype
        return self.net(x.to(dtype), t.to(dtype)).float()

    def noisy(
        self, x0: Tensor, generator: Generators, t: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x_t = α_t x_0 + σ_t ε and t ``[B]``, t ~ U(t_min, t_max) unless given."""
        if t is None:
            t = Uniform()(x0.shape[0], self.path, generator=generator, device=x0.device)
        eps = randn(x0.shape, generator, device=x0.device)
        return self.path.marginal(x0, t, eps), t

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, y = batch
        x_t, t = self.noisy(x0, self.training_noise)
        loss = F.cross_entropy(self(x_t, t), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.held_out_loss("val", batch, batch_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """``diffusion-pl test``: loss and accuracies on the data module's test batches (its
        val split), logged under ``test/``."""
        return self.held_out_loss("test", batch, batch_idx)

    def held_out_loss(self, stage: str, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Loss, accuracy and accuracy on clean inputs of a held-out batch, logged as
        ``{stage}/loss``, ``{stage}/acc`` and ``{stage}/acc_clean``."""
        x0, y = batch
        generator = torch.Generator(device=x0.device).manual_seed(batch_idx)
        x_t, t = self.noisy(x0, generator)
        logits = self(x_t, t)
        loss = F.cross_entropy(logits, y)
        t_min = torch.full_like(t, self.path.t_min)
        clean = self(self.noisy(x0, generator, t_min)[0], t_min)
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/acc", (logits.argmax(1) == y).float().mean(), sync_dist=True)
        self.log(f"{stage}/acc_clean", (clean.argmax(1) == y).float().mean(), sync_dist=True)
        return loss

    def configure_optimizers(self):
        return optimizer_config(
            self.parameters(), self.optimizer_factory, self.lr_scheduler_factory
        )
