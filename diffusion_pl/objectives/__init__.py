"""What a training step minimises, and the models it is handed (teachers)."""

from diffusion_pl.objectives.teacher import Teacher

__all__ = ["Teacher"]
