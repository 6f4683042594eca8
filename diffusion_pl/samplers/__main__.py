"""``python -m diffusion_pl.samplers``: print the README's sampler table (markdown rows)."""

from diffusion_pl.samplers import SAMPLERS
from diffusion_pl.samplers.table import sampler_table

print(sampler_table(SAMPLERS), end="")
