"""Train the first stage of latent diffusion: a ``diffusers`` ``AutoencoderKL`` (Rombach et al.
2022, Sec. 3), with the loss of :mod:`diffusion_pl.autoencoders.losses`."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from diffusion_pl.autoencoders.export import FOLDER, save_autoencoder
from diffusion_pl.autoencoders.losses import (
    L1,
    Adversarial,
    Perceptual,
    Reconstruction,
    adaptive_weight,
    kl_divergence,
)
from diffusion_pl.callbacks.ema import weights_in_use
from diffusion_pl.callbacks.run_paths import run_dir
from diffusion_pl.data.autoencoder_kl import autoencoder_class
from diffusion_pl.formulations.optim import optimizer_config
from diffusion_pl.hparams import save_config
from diffusion_pl.randomness import ExampleNoise, Generators, randn

__all__ = ["AutoencoderKLModule"]


class AutoencoderKLModule(LightningModule):
    """A KL-regularised autoencoder x → z ~ N(μ(x), σ²(x)) → x̂ = D(z), trained on images.

    The net is ``diffusers.AutoencoderKL`` (``pip install 'diffusion-pl[latent]'``) with
    ``len(block_out_channels)`` resolutions, so codes are f = 2^(len − 1) times smaller per
    side; its in/out channels and sample size come from the data (``data_shape``, linked by
    ``diffusion-pl fit``). The loss is reconstruction + β·KL + an optional perceptual term + an
    optional patch discriminator (:mod:`~diffusion_pl.autoencoders.losses`). With the
    discriminator on, the autoencoder and the discriminator are two parameter groups of one
    optimizer, each receiving only its own loss's gradient (D's weights are detached in L_G, x̂
    is detached in D's loss): Adam's statistics are per parameter, so this is two optimizers
    stepped together (simultaneous updates; LDM alternates), and Lightning's clipping,
    accumulation, EMA and exact resume apply unchanged. Posterior draws come from the
    ``StepSeed`` callback's per-example noise, so a resumed run draws what an uninterrupted one
    drew. ``fit`` ends by writing the autoencoder with ``save_pretrained``
    (:class:`~diffusion_pl.autoencoders.export.ExportAutoencoder`).

    Args:
        data_shape: the images' shape ``(C, H, W)`` (linked from the data).
        block_out_channels: the encoder's channels per resolution (the decoder mirrors them).
        latent_channels: the code's channels.
        layers_per_block: ResNet blocks per resolution.
        norm_num_groups: GroupNorm groups (must divide every entry of block_out_channels).
        reconstruction: the pixel error, :class:`~.losses.L1` (LDM; the default) or
            :class:`~.losses.L2` (YAML ``diffusion_pl.autoencoders.L2``).
        kl_weight: β (LDM: 1e-6).
        perceptual: the perceptual term (:class:`~.losses.Perceptual`), or None.
        adversarial: the patch discriminator (:class:`~.losses.Adversarial`), or None.
        sample_posterior: train on draws z ~ q(z | x) (LDM) rather than on the mean μ.
        optimizer: optimizer factory ``params -> Optimizer`` (YAML ``class_path``).
        lr_scheduler: optional scheduler factory, stepped every optimizer step.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        block_out_channels: list[int] | tuple[int, ...] = (32, 64, 64),
        latent_channels: int = 4,
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        reconstruction: Reconstruction | None = None,
        kl_weight: float = 1e-6,
        perceptual: Perceptual | None = None,
        adversarial: Adversarial | None = None,
        sample_posterior: bool = True,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        data_shape = tuple(data_shape)
        channels = list(block_out_channels)
        _check_settings(data_shape, channels, latent_channels, norm_num_groups, kl_weight)
        super().__init__()
        n = len(channels)
        self.vae = autoencoder_class("AutoencoderKLModule")(
            in_channels=data_shape[0], out_channels=data_shape[0],
            down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
            block_out_channels=channels, latent_channels=latent_channels,
            layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
            sample_size=data_shape[1],
        )  # fmt: skip
        self.data_shape = data_shape
        self.reconstruction = reconstruction if reconstruction is not None else L1()
        self.kl_weight = kl_weight
        self.perceptual, self.adversarial = perceptual, adversarial
        self.sample_posterior = sample_posterior
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.training_noise: ExampleNoise | None = None
        """Source of the next training batch's draws, set by the ``StepSeed`` callback."""
        self.exported: Path | None = None
        """The folder the end of ``fit`` wrote the autoencoder to."""
        save_config(self)

    @property
    def downsampling(self) -> int:
        """f: the image side over the code side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """The code's shape ``(C_z, H / f, W / f)``."""
        _, h, w = self.data_shape
        f = self.downsampling
        return int(self.vae.config.latent_channels), h // f, w // f

    # --- the autoencoder ------------------------------------------------------------------
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's (μ, log σ²) of images ``x`` ``[B, C, H, W]`` (log σ² clamped to
        [−30, 20] by diffusers)."""
        dist = self.vae.encode(x).latent_dist
        return dist.mean, dist.logvar

    def reconstruct(self, x: Tensor) -> Tensor:
        """x̂ = D(μ(x)), the decoded posterior mean (unclamped)."""
        return self.vae.decode(self.posterior(x)[0]).sample

    def losses(self, x: Tensor, generator: Generators, adversarial: bool) -> dict[str, Tensor]:
        """The loss terms of a batch of images (module docstring of ``losses``).

        Returns ``loss`` (what the optimizer minimises: the autoencoder's loss, plus the
        discriminator's when ``adversarial``) and each term for logging. With a discriminator
        that is not on yet its parameters enter ``loss`` with weight 0.
        """
        mean, logvar = self.posterior(x)
        z = mean
        if self.sample_posterior:
            z = mean + (0.5 * logvar).exp() * randn(mean.shape, generator, device=mean.device)
        x_hat = self.vae.decode(z).sample
        terms = {"rec": self.reconstruction(x, x_hat)}
        nll = terms["rec"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(x, x_hat)
            nll = nll + self.perceptual.weight * terms["perceptual"]
        terms["kl"] = kl_divergence(mean, logvar)
        loss = nll + self.kl_weight * terms["kl"]
        if adversarial:
            g_loss = self.adversarial.generator_loss(x_hat)
            last = self.vae.decoder.conv_out.weight
            weight = adaptive_weight(nll, g_loss, last, self.adversarial.max_weight)
            d_loss = self.adversarial.discriminator_loss(x, x_hat)
            loss = loss + self.adversarial.weight * weight * g_loss + d_loss
            terms |= {"g": g_loss, "d": d_loss, "adaptive_weight": weight}
        elif self.adversarial is not None:  # off until start_step: D gets zero gradients, so
            # DDP (which needs every parameter in the graph) runs, and Adam leaves D unchanged
            params = self.adversarial.discriminator.parameters()
            loss = loss + 0.0 * sum(p.sum() for p in params)
        return {"loss": loss, **terms}

    # --- Lightning ------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        adversarial = self.adversarial is not None and self.adversarial.on(self.global_step)
        terms = self.losses(batch[0], self.training_noise, adversarial)
        self.log("train/loss", terms["loss"], prog_bar=True)
        for name, value in terms.items():
            if name != "loss":
                self.log(f"train/{name}", value)
        return terms["loss"]

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.held_out_loss("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.held_out_loss("test", batch)

    def held_out_loss(self, stage: str, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The reconstruction error of the posterior mean, logged as ``{stage}/loss``."""
        x = batch[0]
        error = self.reconstruction(x, self.reconstruct(x))
        self.log(f"{stage}/loss", error, prog_bar=True, sync_dist=True)
        return error

    def on_train_end(self) -> None:
        """Write the autoencoder (the moving average, with an EMA callback) to
        ``<log dir>/autoencoder`` with its measured scaling factor
        (:func:`~.export.save_autoencoder`)."""
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not trainer.is_global_zero:
            return
        with weights_in_use(trainer, self, "ema"):
            self.exported = save_autoencoder(
                self.vae, datamodule.dataset("train"), run_dir(trainer) / FOLDER
            )

    def configure_optimizers(self):
        """One optimizer: the autoencoder's parameters, and the discriminator's as a second
        group (with its own ``lr`` when set)."""
        groups: list[dict] = [{"params": list(self.vae.parameters())}]
        if self.adversarial is not None:
            group = {"params": list(self.adversarial.discriminator.parameters())}
            if self.adversarial.lr is not None:
                group["lr"] = self.adversarial.lr
            groups.append(group)
        return optimizer_config(groups, self.optimizer_factory, self.lr_scheduler_factory)


def _check_settings(
    data_shape: tuple[int, ...],
    channels: list[int],
    latent_channels: int,
    groups: int,
    kl_weight: float,
) -> None:
    """Refuse settings the autoencoder cannot be built or trained with, naming them."""
    if len(data_shape) != 3:
        raise ValueError(
            f"the autoencoder takes images (C, H, W), but the data have examples of shape "
            f"{data_shape}: use an image source (e.g. diffusion_pl.data.Digits with size: 32)"
        )
    if not channels or min(channels) <= 0 or latent_channels <= 0:
        raise ValueError(
            f"block_out_channels ({channels}) must list positive channels, one per resolution, "
            f"and latent_channels ({latent_channels}) be > 0"
        )
    if any(c % groups for c in channels):
        raise ValueError(
            f"norm_num_groups={groups} must divide every block_out_channels entry {channels}"
        )
    f = 2 ** (len(channels) - 1)
    if data_shape[1] % f or data_shape[2] % f:
        raise ValueError(
            f"images of {data_shape[1]}x{data_shape[2]} do not halve {len(channels) - 1} times "
            f"({len(channels)} entries of block_out_channels): give fewer entries or resize "
            "the data"
        )
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
