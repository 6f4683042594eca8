"""The README's sampler table, generated from :data:`~diffusion_pl.samplers.SAMPLERS`.

``python -m diffusion_pl.samplers`` prints the README's sampler table (the rows between
``<!-- samplers:begin -->`` and ``<!-- samplers:end -->``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from diffusion_pl.samplers.base import Sampler

__all__ = ["sampler_table"]


def _summary(cls: type[Sampler]) -> str:
    """The summary line of ``cls``'s docstring, in markdown (``code`` → `code`, | escaped)."""
    line = inspect.cleandoc(cls.__doc__ or "").splitlines()[0]
    return line.replace("``", "`").replace("|", "\\|")


def sampler_table(samplers: Mapping[str, type[Sampler]]) -> str:
    """The README's sampler table of ``samplers`` (:data:`~diffusion_pl.samplers.SAMPLERS`) in
    markdown: name | config class | what it is (the class docstring's summary line) |
    deterministic or stochastic | network evaluations per step."""
    rows = [
        "| name | config class | what it is | noise | NFE per step |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, cls in samplers.items():
        cells = (f"`{name}`", f"`{cls.__name__}`", _summary(cls), cls.randomness, cls.nfe_per_step)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
