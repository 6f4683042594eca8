"""``python -m diffusion_pl.formulations [CONFIGS]``: print the README's formulation table."""

import sys
from pathlib import Path

from diffusion_pl.formulations import FORMULATIONS
from diffusion_pl.formulations.table import formulation_table

configs = Path(sys.argv[1] if len(sys.argv) > 1 else "configs")
print(formulation_table(FORMULATIONS, configs), end="")
