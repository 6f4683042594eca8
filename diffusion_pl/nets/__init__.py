"""Denoising networks ``net(x, noise_labels, class_labels=None)`` and noisy classifiers."""

from diffusion_pl.nets.classifier import MLPClassifier, UNetEncoderClassifier
from diffusion_pl.nets.embeddings import (
    FourierEmbedding,
    NoiseEmbedding,
    NoiseFeatures,
    PositionalEmbedding,
)
from diffusion_pl.nets.mlp import MLP
from diffusion_pl.nets.unet import UNet

__all__ = [
    "MLP",
    "FourierEmbedding",
    "MLPClassifier",
    "NoiseEmbedding",
    "NoiseFeatures",
    "PositionalEmbedding",
    "UNet",
    "UNetEncoderClassifier",
]
