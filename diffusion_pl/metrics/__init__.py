"""Sample-quality measures: mode coverage for Gaussian-mixture toys (FID arrives with issue 4)."""

from diffusion_pl.metrics.modes import ModeStats, mode_stats

__all__ = ["ModeStats", "mode_stats"]
