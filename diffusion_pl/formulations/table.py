"""The README's formulation table, generated from :data:`~diffusion_pl.formulations.FORMULATIONS`.

``python -m diffusion_pl.formulations [CONFIGS]`` prints it (the rows between
``<!-- formulations:begin -->`` and ``<!-- formulations:end -->``); CONFIGS, the folder of
shipped YAML files (default ``configs``), fills the configs column.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from diffusion_pl.compat import class_name
from diffusion_pl.formulations.base import DiffusionModule
from diffusion_pl.markdown import markdown_table, summary_line
from diffusion_pl.nets import MLP

__all__ = ["formulation_table"]


def _configs_of(cls: type[DiffusionModule], configs: Path) -> str:
    """The YAML files under ``configs`` whose model is ``cls``, comma-separated."""
    target = f"{cls.__module__.rsplit('.', 1)[0]}.{cls.__name__}"
    found = []
    for path in sorted(configs.glob("**/*.yaml")):
        model = (yaml.safe_load(path.read_text()) or {}).get("model", {})
        if isinstance(model, dict) and model.get("class_path") == target:
            found.append(f"`{path.relative_to(configs).as_posix()}`")
    return ", ".join(found) or "—"


def formulation_table(formulations: Mapping[str, type[DiffusionModule]], configs: Path) -> str:
    """The README's formulation table in markdown: name | YAML class | what it is (the class
    docstring's summary line) | default path | reads the net as | default sampler | configs.

    The defaults are read from each preset built on a small 2-D MLP, so the table shows what
    the code does, not what a list says.
    """
    rows = []
    for name, cls in formulations.items():
        net = MLP(dim=2, hidden=8, depth=1, num_noise_labels=cls.net_noise_labels)
        model = cls(net, (2,))
        steps = model.sampler.arguments().get("steps")
        plural = "" if steps == 1 else "s"
        sampler = f"`{model.sampler.name}`" + (f", {steps} step{plural}" if steps else "")
        rows.append((
            f"`{name}`", f"`{cls.__name__}`", summary_line(cls), class_name(model.path),
            class_name(model.parameterization), sampler, _configs_of(cls, configs),
        ))  # fmt: skip
    headers = ["name", "class", "what it is", "path", "reads the net as", "sampler", "configs"]
    return markdown_table(headers, rows) + "\n"
