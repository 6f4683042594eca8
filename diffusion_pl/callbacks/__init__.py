"""Cross-cutting training work: sample pictures (EMA and FID arrive with their issue)."""

from diffusion_pl.callbacks.sample_grid import SampleGrid, run_dir

__all__ = ["SampleGrid", "run_dir"]
