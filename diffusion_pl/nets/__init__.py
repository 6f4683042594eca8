"""Denoising networks sharing one interface: ``net(x, noise_labels, class_labels=None)``."""

from diffusion_pl.nets.embeddings import (
    EmbeddingKind,
    FourierEmbedding,
    NoiseEmbedding,
    PositionalEmbedding,
)
from diffusion_pl.nets.mlp import MLP
from diffusion_pl.nets.unet import UNet

__all__ = [
    "MLP",
    "EmbeddingKind",
    "FourierEmbedding",
    "NoiseEmbedding",
    "PositionalEmbedding",
    "UNet",
]
