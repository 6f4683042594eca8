"""The README's sampler table, generated from :data:`~diffusion_pl.samplers.SAMPLERS`.

``python -m diffusion_pl.samplers`` prints the README's sampler table (the rows between
``<!-- samplers:begin -->`` and ``<!-- samplers:end -->``).
"""

from __future__ import annotations

from collections.abc import Mapping

from diffusion_pl.markdown import markdown_table, summary_line
from diffusion_pl.samplers.base import Sampler

__all__ = ["sampler_table"]


def sampler_table(samplers: Mapping[str, type[Sampler]]) -> str:
    """The README's sampler table of ``samplers`` (:data:`~diffusion_pl.samplers.SAMPLERS`) in
    markdown: name | config class | what it is (the class docstring's summary line) |
    deterministic or stochastic | network evaluations per step."""
    rows = [
        (f"`{name}`", f"`{cls.__name__}`", summary_line(cls), cls.randomness, cls.nfe_per_step)
        for name, cls in samplers.items()
    ]
    headers = ["name", "config class", "what it is", "noise", "NFE per step"]
    return markdown_table(headers, rows) + "\n"
