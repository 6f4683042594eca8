"""Data for diffusion training: one DataModule and the sources it can serve."""

from diffusion_pl.data.datamodule import DiffusionDataModule
from diffusion_pl.data.digits import Digits
from diffusion_pl.data.images import HFImages
from diffusion_pl.data.latents import Latents
from diffusion_pl.data.pairs import ReflowPairs
from diffusion_pl.data.sources import Example, Source, Split
from diffusion_pl.data.toy2d import GaussianMixture, Toy2D
from diffusion_pl.data.transformed import Gamma, ImageTransform, Invert, Transformed, Transpose
from diffusion_pl.mixture import GaussianMixtureSpec

__all__ = [
    "DiffusionDataModule",
    "Digits",
    "Example",
    "Gamma",
    "GaussianMixture",
    "GaussianMixtureSpec",
    "HFImages",
    "ImageTransform",
    "Invert",
    "Latents",
    "ReflowPairs",
    "Source",
    "Split",
    "Toy2D",
    "Transformed",
    "Transpose",
]
