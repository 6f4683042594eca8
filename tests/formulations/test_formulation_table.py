"""The README's formulation table is generated from FORMULATIONS and the shipped configs."""

from __future__ import annotations

import re
from pathlib import Path

from diffusion_pl.formulations import FORMULATIONS
from diffusion_pl.formulations.table import formulation_table

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_table_is_the_registrys() -> None:
    """Regenerate it with ``python -m diffusion_pl.formulations configs``."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- formulations:begin -->\n(.*?)<!-- formulations:end -->", readme, re.S)
    assert found, "README.md lacks the formulations:begin/end markers"
    assert found.group(1) == formulation_table(FORMULATIONS, ROOT / "configs")


def test_every_formulation_has_a_shipped_config_and_its_own_sampler() -> None:
    table = formulation_table(FORMULATIONS, ROOT / "configs")
    rows = [line for line in table.splitlines()[2:]]
    assert len(rows) == len(FORMULATIONS)
    assert not [row for row in rows if row.endswith("| — |")], "a formulation without a config"
