"""``python -m diffusion_pl.formulations [CONFIGS]``: print the README's formulation table."""

import sys
from pathlib import Path

from diffusion_pl.formulations import FORMULATIONS
from diffusion_pl.formulations.table import formulation_table

print(formulation_table(FORMULATIONS, Path(sys.argv[1] if len(sys.argv) > 1 else "configs")), end="")
