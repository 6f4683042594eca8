"""Sample-quality measures: mode coverage for 2-D toys, FID / KID for images."""

from diffusion_pl.metrics.features import DigitsClassifier, DigitsFeatures, InceptionFeatures
from diffusion_pl.metrics.fid import FIDEvaluator
from diffusion_pl.metrics.modes import ModeStats, mode_stats

__all__ = [
    "DigitsClassifier",
    "DigitsFeatures",
    "FIDEvaluator",
    "InceptionFeatures",
    "ModeStats",
    "mode_stats",
]
