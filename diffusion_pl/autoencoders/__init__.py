"""The first stage of latent diffusion, trained here: a ``diffusers`` ``AutoencoderKL`` with
LDM's loss (reconstruction, β·KL, a perceptual term, a patch discriminator), its pictures and
rFID, and its export with the measured latent scaling for ``diffusion-pl encode``."""

from diffusion_pl.autoencoders.callbacks import (
    ReconstructionFID,
    ReconstructionGrid,
    paired_rows,
    reconstruction_fid,
)
from diffusion_pl.autoencoders.discriminator import PatchDiscriminator
from diffusion_pl.autoencoders.export import latent_statistics, save_autoencoder
from diffusion_pl.autoencoders.losses import L1, L2, Adversarial, Perceptual
from diffusion_pl.autoencoders.module import AutoencoderKLModule

__all__ = [
    "L1",
    "L2",
    "Adversarial",
    "AutoencoderKLModule",
    "PatchDiscriminator",
    "Perceptual",
    "ReconstructionFID",
    "ReconstructionGrid",
    "latent_statistics",
    "paired_rows",
    "reconstruction_fid",
    "save_autoencoder",
]
